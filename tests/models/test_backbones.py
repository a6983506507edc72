"""Backbones by name, pretrained-source errors, input specs, and layer-wise freezing."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from carid.config import ModelConfig
from carid.models.backbones import Backbone, BackboneError, LayerInfo, create_backbone


def tiny(name: str = "test_efficientnet", **kwargs) -> Backbone:
    return create_backbone(ModelConfig(backbone=name, pretrained="none", **kwargs))


@pytest.mark.parametrize(
    "name", ["test_efficientnet", "test_resnet", "test_convnext", "mobilenetv3_small_050"]
)
def test_timm_backbones_by_name_give_embeddings_and_feature_maps(name):
    backbone = tiny(name).eval()
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        features = backbone.forward_features(images)
        embeddings = backbone(images)
    assert features.ndim == 4 and features.shape[:2] == (2, backbone.feature_channels)
    assert embeddings.shape == (2, backbone.num_features)
    assert backbone.weights == "none"
    assert backbone.name == name


def test_mobilenetv3_embedding_includes_timm_pre_logits_layers():
    backbone = tiny("mobilenetv3_small_050")
    # MobileNetV3 pools, then applies a 1x1 conv: the embedding is wider than the feature map.
    assert backbone.num_features == backbone.model.head_hidden_size != backbone.feature_channels


def test_unknown_backbone_fails_with_suggestions_and_known_names():
    with pytest.raises(BackboneError) as info:
        tiny("resnet5O")
    message = str(info.value)
    assert "unknown backbone 'resnet5O'" in message
    assert "resnet50" in message
    assert "tf_efficientnet_lite0" in message and "carid_vgg" in message
    assert "timm.list_models" in message


def test_offline_weights_for_other_backbones_are_a_clear_error():
    with pytest.raises(BackboneError) as info:
        create_backbone(ModelConfig(backbone="test_resnet", pretrained="offline"))
    message = str(info.value)
    assert "test_resnet" in message and "tf_efficientnet_lite0" in message
    assert "pretrained: hub" in message and "pretrained: none" in message


def test_scratch_backbone_refuses_pretrained_weights():
    with pytest.raises(BackboneError, match="pretrained: none"):
        create_backbone(ModelConfig(backbone="carid_vgg", pretrained="offline"))


def test_hub_download_failure_says_internet_and_offline_alternative(monkeypatch):
    calls = []

    def offline_create_model(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    with pytest.raises(BackboneError) as info:
        create_backbone(ModelConfig(backbone="test_resnet", pretrained="hub"))
    assert calls == [True]
    message = str(info.value)
    assert "needs internet" in message and "Name or service not known" in message
    assert "pretrained: offline" in message and "pretrained: none" in message


def test_bad_and_reserved_backbone_args_are_errors():
    with pytest.raises(BackboneError, match="bad backbone_args"):
        tiny("carid_vgg", backbone_args={"no_such_switch": 1})
    with pytest.raises(BackboneError, match="must not set num_classes"):
        tiny("test_resnet", backbone_args={"num_classes": 3})


def test_drop_path_rate_reaches_the_timm_model():
    backbone = tiny("test_convnext", drop_path_rate=0.1)
    rates = [m.drop_prob for m in backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)


def test_input_spec_follows_the_weights():
    lite = create_backbone(ModelConfig(backbone="tf_efficientnet_lite0", pretrained="none"))
    assert lite.input_spec.mean == (0.5, 0.5, 0.5) and lite.input_spec.std == (0.5, 0.5, 0.5)
    assert lite.input_spec.to_dict()["default_size"] == 224
    resnet = tiny("resnet18")
    assert resnet.input_spec.mean == pytest.approx(timm.data.IMAGENET_DEFAULT_MEAN)


# ----- freezing -------------------------------------------------------------------------------------


def _owners_in_order(model: nn.Module) -> list[str]:
    """Modules owning parameters, derived from parameter names (independently of Backbone.layers)."""
    owners: list[str] = []
    for name, _ in model.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner not in owners:
            owners.append(owner)
    return owners


def _trainable(backbone: Backbone) -> int:
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)


def test_layers_are_the_parameter_owning_modules_in_order():
    backbone = tiny()
    assert [name for name, _ in backbone.layers()] == _owners_in_order(backbone.model)
    summary = backbone.layer_summary()
    assert all(isinstance(info, LayerInfo) for info in summary)
    assert [info.index for info in summary] == list(range(len(summary)))
    assert sum(info.parameters for info in summary) == sum(p.numel() for p in backbone.parameters())
    assert summary[0].to_dict()["name"] == "conv_stem"


def test_freeze_and_unfreeze_all():
    backbone = tiny()
    total = sum(p.numel() for p in backbone.parameters())
    backbone.freeze()
    assert _trainable(backbone) == 0
    backbone.unfreeze()
    assert _trainable(backbone) == total


@pytest.mark.parametrize(("name", "stage"), [("test_efficientnet", "blocks.2"), ("test_resnet", "layer3")])
def test_unfreeze_from_a_stage_name(name, stage):
    backbone = tiny(name)
    backbone.unfreeze_from(stage)
    names = [n for n, _ in backbone.model.named_parameters()]
    first = next(i for i, n in enumerate(names) if n.startswith(stage + "."))
    expected = sum(p.numel() for i, (_, p) in enumerate(backbone.model.named_parameters()) if i >= first)
    assert 0 < _trainable(backbone) == expected
    trainable_names = [n for n, p in backbone.model.named_parameters() if p.requires_grad]
    assert trainable_names == names[first:]


@pytest.mark.parametrize("start", [5, -3, "5"])
def test_unfreeze_from_a_layer_index(start):
    backbone = tiny()
    owners = _owners_in_order(backbone.model)
    first = int(start) % len(owners)
    frozen_owners = set(owners[:first])
    expected = sum(
        p.numel()
        for n, p in backbone.model.named_parameters()
        if (n.rsplit(".", 1)[0] if "." in n else "") not in frozen_owners
    )
    backbone.unfreeze_from(start)
    assert _trainable(backbone) == expected
    assert [info.trainable for info in backbone.layer_summary()] == [i >= first for i in range(len(owners))]


def test_bad_freeze_starts_are_clear_errors():
    backbone = tiny()
    count = len(backbone.layers())
    with pytest.raises(BackboneError, match=f"has {count} layers"):
        backbone.unfreeze_from(count)
    with pytest.raises(BackboneError, match=r"no module 'blocks\.9'.*Did you mean"):
        backbone.unfreeze_from("blocks.9")
    with pytest.raises(BackboneError, match="module name or a layer index"):
        backbone.unfreeze_from(2.5)  # type: ignore[arg-type]


def test_frozen_batch_norm_stays_in_eval_mode_and_keeps_its_statistics():
    backbone = tiny()
    backbone.unfreeze_from("blocks.3")
    backbone.train()
    norms = {n: m for n, m in backbone.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for name, module in norms.items():
        frozen = not name.startswith(("blocks.3", "blocks.4", "bn2"))
        assert module.training is not frozen, name
    before = {n: m.running_mean.clone() for n, m in norms.items()}
    backbone(torch.randn(4, 3, 32, 32))
    assert torch.equal(norms["bn1"].running_mean, before["bn1"])
    assert not torch.equal(norms["bn2"].running_mean, before["bn2"])
    backbone.unfreeze()
    assert all(module.training for module in norms.values())
    backbone.eval()
    assert not any(module.training for module in norms.values())
