"""CarNet: outputs with and without a box head, embeddings, freezing, parameter groups, ONNX export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from carid.config import ModelConfig
from carid.models.backbones import Backbone, BackboneError
from carid.models.heads import BoxHead, ClassHead, RefinedBoxHead, SpatialBoxHead
from carid.models.network import CarNet, CarNetOutput, build_network, wants_box_head

TINY = ModelConfig(
    backbone="test_efficientnet", pretrained="none", image_size=32, hidden=8, dropout=0.1, box_hidden=8
)


def tiny_net(with_box: bool, num_classes: int = 5, box_input: str = "map", box_refine: int = 0) -> CarNet:
    torch.manual_seed(0)
    config = replace(TINY, box_input=box_input, box_refine=box_refine)
    return build_network(config, num_classes=num_classes, with_box=with_box)


@pytest.mark.parametrize("with_box", [True, False])
def test_output_shapes(with_box):
    net = tiny_net(with_box).eval()
    with torch.no_grad():
        output = net(torch.randn(3, 3, 32, 32))
    assert isinstance(output, CarNetOutput)
    assert output.logits.shape == (3, 5)
    if with_box:
        assert output.box is not None and output.box.shape == (3, 4)
        assert net.output_names == ("logits", "box")
    else:
        assert output.box is None
        assert net.output_names == ("logits",)
    assert net.has_box_head is with_box and net.num_classes == 5


def test_box_output_is_valid_normalized_xyxy():
    net = tiny_net(True).eval()
    with torch.no_grad():
        box = net(torch.randn(16, 3, 32, 32) * 5).box
    assert box is not None
    assert (box >= 0).all() and (box <= 1).all()
    assert (box[:, 2:] >= box[:, :2]).all()


def test_build_network_follows_the_config():
    net = tiny_net(True, num_classes=7)
    assert isinstance(net.backbone, Backbone) and isinstance(net.class_head, ClassHead)
    assert net.class_head.fc.in_features == 8 and net.class_head.dropout.p == 0.1
    assert net.class_head.hidden[0].in_features == net.backbone.num_features
    assert net.input_spec == net.backbone.input_spec
    # box_input "map" (the default): the box head reads the 32 px input's feature map (stride 32: 1x1)
    assert isinstance(net.box_head, SpatialBoxHead) and net.box_reads_feature_map
    assert net.box_head.grid == net.backbone.feature_map_size(32) == (1, 1)
    assert net.box_head.reduce[0].in_channels == net.backbone.feature_channels
    assert net.box_head.reduce[0].out_channels == TINY.box_channels
    assert net.box_head.hidden[0].out_features == 8
    pooled = tiny_net(True, box_input="pooled")
    assert type(pooled.box_head) is BoxHead and not pooled.box_reads_feature_map
    assert pooled.box_head.hidden[0].in_features == pooled.backbone.num_features
    assert not tiny_net(False).box_reads_feature_map


def test_spatial_box_head_grid_follows_the_image_size():
    net = build_network(replace(TINY, image_size=96), num_classes=3, with_box=True)
    assert net.box_head.grid == (3, 3)
    assert net.box_head.fc.in_features == 8 and net.box_head.hidden[0].in_features == TINY.box_channels * 9
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, 96, 96)).box.shape == (2, 4)
    with pytest.raises(ValueError, match=r"built for feature maps \[B, C, 3, 3\]"):
        net(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("box_input", ["map", "pooled", "cells"])
def test_encode_and_heads_compose_to_forward(box_input):
    net = tiny_net(True, box_input=box_input).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = net.forward_features(images)
        embeddings, feature_map, _ = net.encode(images)
        output = net(images)
        from_cache = net.forward_heads(embeddings, feature_map)
    assert features.ndim == 4 and features.shape[1] == net.backbone.feature_channels
    assert torch.equal(feature_map, features) and torch.equal(net.embed(images), embeddings)
    assert embeddings.shape == (2, net.backbone.num_features)
    assert torch.equal(from_cache.logits, output.logits) and torch.equal(from_cache.box, output.box)


@pytest.mark.parametrize("box_input", ["map", "cells"])
def test_box_refine_wraps_the_map_heads(box_input):
    net = tiny_net(True, box_input=box_input, box_refine=2)
    assert isinstance(net.box_head, RefinedBoxHead) and net.box_head.steps == 2
    assert net.box_reads_feature_map
    box = net(torch.randn(2, 3, 32, 32)).box
    assert box.shape == (2, 4)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"box_input": "pooled", "box_refine": 1}, "pooled"), ({"box_refine": -1}, ">= 0")],
)
def test_box_refine_rejects_bad_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        build_network(replace(TINY, **changes), num_classes=3, with_box=True)


def test_heads_without_the_feature_map_name_what_is_missing():
    net = tiny_net(True).eval()
    with torch.no_grad():
        embeddings = net.embed(torch.randn(2, 3, 32, 32))
        with pytest.raises(ValueError, match="pass feature_map"):
            net.forward_heads(embeddings)
        pooled = tiny_net(True, box_input="pooled").eval()
        assert pooled.forward_heads(pooled.embed(torch.randn(2, 3, 32, 32))).box.shape == (2, 4)


def test_box_gradient_reaches_the_backbone_through_the_feature_map():
    net = tiny_net(True).train()
    net.box_head(net.forward_features(torch.randn(4, 3, 32, 32))).sum().backward()
    assert net.box_head.reduce[0].weight.grad.abs().sum() > 0
    assert net.backbone.model.conv_stem.weight.grad.abs().sum() > 0


def _trainable(params) -> int:
    return sum(p.numel() for p in params if p.requires_grad)


def test_apply_freeze_settings():
    net = tiny_net(True)
    heads = sum(p.numel() for p in net.head_parameters())
    backbone = sum(p.numel() for p in net.backbone_parameters())
    assert heads + backbone == sum(p.numel() for p in net.parameters())
    net.apply_freeze("backbone")
    assert _trainable(net.parameters()) == heads
    net.apply_freeze("none")
    assert _trainable(net.parameters()) == heads + backbone
    net.apply_freeze("blocks.3")
    blocks_on = sum(
        p.numel()
        for n, p in net.backbone.model.named_parameters()
        if not n.startswith(("conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"))
    )
    assert _trainable(net.parameters()) == heads + blocks_on
    net.train()  # CarNet.train reaches Backbone.train: frozen BatchNorm stays in eval mode
    assert not net.backbone.model.bn1.training and net.backbone.model.bn2.training
    net.apply_freeze(0)
    assert _trainable(net.parameters()) == heads + backbone
    assert net.backbone.model.bn1.training


def test_parameter_groups_cover_every_parameter_once_with_discriminative_lr():
    net = tiny_net(True)
    net.freeze_backbone()
    groups = net.parameter_groups(lr=1e-3, backbone_lr_scale=0.1, weight_decay=0.05)
    by_name = {group["name"]: group for group in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "heads", "heads_no_decay"}
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4) and by_name["heads"]["lr"] == pytest.approx(1e-3)
    assert by_name["heads"]["weight_decay"] == 0.05 and by_name["heads_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim < 2 for p in by_name["backbone_no_decay"]["params"])
    ids = [id(p) for group in groups for p in group["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    torch.optim.AdamW(groups)  # accepted as is


def test_wants_box_head():
    assert wants_box_head("auto", True) and not wants_box_head("auto", False)
    assert not wants_box_head("off", True)
    assert wants_box_head("on", True)
    with pytest.raises(ValueError, match="has no boxes"):
        wants_box_head("on", False)


@pytest.mark.slow  # the dynamo exporter takes 4-7 s
@pytest.mark.parametrize(
    ("with_box", "box_input", "box_refine"),
    [
        (True, "map", 0),
        (True, "pooled", 0),
        (True, "cells", 0),
        (True, "map", 2),
        (True, "map", -16),
        (False, "map", 0),
    ],
)
def test_onnx_export_matches_pytorch(with_box, box_input, box_refine, tmp_path: Path):
    """Exported with torch.onnx.export's default (dynamo) exporter, dynamic batch size; the refined
    box head's window sampling (grid_sample) exports as GridSample. box_refine -16: one look at the
    stride-16 map."""
    if box_refine < 0:
        torch.manual_seed(0)
        config = replace(TINY, box_input=box_input, box_refine=1, box_refine_stride=-box_refine)
        net = build_network(config, num_classes=5, with_box=with_box).eval()
    else:
        net = tiny_net(with_box, box_input=box_input, box_refine=box_refine).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(
        net,
        (torch.randn(2, 3, 32, 32),),
        str(path),
        input_names=["images"],
        output_names=list(net.output_names),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == list(net.output_names)
    images = torch.randn(3, 3, 32, 32)
    onnx_outputs = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = [t for t in net(images) if t is not None]
    assert len(onnx_outputs) == len(expected)
    for actual, reference in zip(onnx_outputs, expected, strict=True):
        np.testing.assert_allclose(actual, reference.numpy(), atol=1e-4)


def test_box_refine_stride_samples_a_finer_backbone_map():
    net = build_network(replace(TINY, image_size=64, box_refine=1), num_classes=5, with_box=True).eval()
    torch.manual_seed(0)
    config = replace(TINY, image_size=64, box_refine=1, box_refine_stride=16)
    finer = build_network(config, num_classes=5, with_box=True).eval()
    images = torch.randn(2, 3, 64, 64)
    encoded = finer.encode(images)
    assert net.encode(images).detail is None and finer.box_reads_detail and not net.box_reads_detail
    assert encoded.detail is not None and encoded.detail.shape[-2:] == (4, 4)  # 64 px / 16
    assert encoded.feature_map.shape[-2:] == (2, 2)  # the last map stays at stride 32
    with torch.no_grad():
        assert torch.equal(finer(images).box, finer.forward_heads(*encoded).box)
    with pytest.raises(ValueError, match="finer backbone map"):
        finer.forward_heads(encoded.embeddings, encoded.feature_map)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (replace(TINY, box_refine=1, box_refine_stride=12), "no stage at stride 12"),
        (
            ModelConfig(
                backbone="carid_vgg",
                pretrained="none",
                image_size=32,
                box_refine=1,
                box_refine_stride=16,
                backbone_args={"widths": [8, 16], "blocks_per_stage": 1},
            ),
            "intermediate feature maps",
        ),
    ],
)
def test_box_refine_stride_errors_name_the_problem(config, message):
    with pytest.raises(BackboneError, match=message):
        build_network(config, num_classes=3, with_box=True)
