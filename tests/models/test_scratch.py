"""carid_vgg: the from-scratch VGG-style CNN and its switches, at the study's 75 px and 100 px."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

import carid.models.scratch  # noqa: F401  (registers carid_vgg with timm)
from carid.config import ModelConfig
from carid.models.backbones import create_backbone
from carid.models.scratch import CaridVGG

SWITCHES = {
    "base": {},
    "batch_norm": {"batch_norm": True},
    "dropout": {"dropout": 0.3},
    "depth": {"blocks_per_stage": [1, 3]},
    "widths": {"widths": [4, 8, 8, 16]},
    "gray_input": {"in_chans": 1},
}


def build(**switches) -> CaridVGG:
    defaults = {"widths": [4, 8], "blocks_per_stage": 1}
    return timm.create_model("carid_vgg", num_classes=0, **{**defaults, **switches})


@pytest.mark.parametrize("size", [75, 100])
@pytest.mark.parametrize("switch", list(SWITCHES))
def test_every_switch_works_at_study_sizes(switch, size):
    switches = SWITCHES[switch]
    model = build(**switches).eval()
    widths = switches.get("widths", [4, 8])
    images = torch.randn(2, switches.get("in_chans", 3), size, size)
    with torch.no_grad():
        features = model.forward_features(images)
        embeddings = model(images)
    side = math.ceil(size / 2 ** len(widths))
    assert features.shape == (2, widths[-1], side, side)
    assert embeddings.shape == (2, model.num_features) == (2, widths[-1])


def test_switches_change_the_structure():
    def count(model: nn.Module, kind: type) -> int:
        return sum(isinstance(m, kind) for m in model.modules())

    base = build(blocks_per_stage=[1, 3])
    assert count(base, nn.Conv2d) == 4 and count(base, nn.BatchNorm2d) == 0 and count(base, nn.Dropout) == 0
    assert all(conv.bias is not None for conv in base.modules() if isinstance(conv, nn.Conv2d))
    with_bn = build(blocks_per_stage=[1, 3], batch_norm=True)
    assert count(with_bn, nn.BatchNorm2d) == 4
    assert all(conv.bias is None for conv in with_bn.modules() if isinstance(conv, nn.Conv2d))
    with_dropout = build(dropout=0.25)
    rates = [m.p for m in with_dropout.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.25, 0.25]  # one per stage


def test_classifier_head_when_num_classes_is_given():
    model = timm.create_model("carid_vgg", num_classes=7, widths=[4], blocks_per_stage=1).eval()
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 7)
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 3)


def test_deep_net_survives_tiny_inputs():
    model = build(widths=[4, 4, 4, 4, 4, 4]).eval()  # 6 halvings of a 16 px input
    assert model.forward_features(torch.randn(1, 3, 16, 16)).shape == (1, 4, 1, 1)


def test_timm_name_and_carid_factory_build_the_same_net():
    switches = {"widths": [4, 8], "blocks_per_stage": 2, "batch_norm": True, "dropout": 0.1}
    direct = timm.create_model("carid_vgg", num_classes=0, **switches)
    backbone = create_backbone(ModelConfig(backbone="carid_vgg", pretrained="none", backbone_args=switches))
    assert isinstance(backbone.model, CaridVGG)
    shapes = {k: v.shape for k, v in direct.state_dict().items()}
    assert {k: v.shape for k, v in backbone.model.state_dict().items()} == shapes
    assert backbone.input_spec.default_size == 100


@pytest.mark.parametrize(
    "backbone_args",
    [
        {"batch_norm": False, "dropout": 0.0},  # 1. base CNN (2. + augmentation: the same model)
        {"batch_norm": True},  # 3. + batch norm
        {"batch_norm": True, "dropout": 0.25},  # 4. + dropout
    ],
)
def test_study_progression_is_expressible_as_configs(backbone_args):
    config = ModelConfig(backbone="carid_vgg", pretrained="none", image_size=75, backbone_args=backbone_args)
    backbone = create_backbone(config).eval()
    assert backbone(torch.randn(1, 3, 75, 75)).shape == (1, 128)


@pytest.mark.parametrize(
    ("switches", "message"),
    [
        ({"widths": [4, 8], "blocks_per_stage": [1]}, "blocks_per_stage has 1 entries"),
        ({"widths": []}, "widths must be a non-empty list"),
        ({"dropout": 1.5}, "dropout and drop_rate"),
        ({"drop_path_rate": 0.1}, "drop_path_rate must be 0"),
    ],
)
def test_bad_switches_are_clear_errors(switches, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("carid_vgg", **switches)


def test_no_pretrained_weights():
    with pytest.raises(ValueError, match="trained from scratch"):
        timm.create_model("carid_vgg", pretrained=True)
