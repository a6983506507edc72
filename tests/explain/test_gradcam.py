"""Grad-CAM: class and box heads, targets, layers, and heat maps that line up with the original photo."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from carid import boxes as box_math
from carid.explain import (
    FEATURE_MAP_LAYER,
    ClassifierInfo,
    ExplainedModel,
    ExplainError,
    compute_gradcam,
    gradcam_overlay,
    png_bytes,
    prepare_photo,
    render_gradcam,
)
from carid.models.imagenet import IMAGENET_CAR_CLASSES
from carid.preprocess import PreprocessSpec
from tests.conftest import shared_dataset
from tests.explain.helpers import (
    CLASS_NAMES,
    TINY_VGG,
    brightness_model,
    random_photo,
    square_photo,
    tiny_metadata,
    tiny_model,
    tiny_network,
)


def _check_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> None:
    assert heatmap.shape == (size[1], size[0])
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert heatmap.max() > 0.0  # some positive evidence somewhere


@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_class_gradcam_on_carid_vgg(tmp_path, resize_mode):
    model = tiny_model(resize_mode=resize_mode)
    photo = random_photo(50, 30)
    result = compute_gradcam(model, photo)
    _check_heatmap(result.heatmap, (50, 30))
    assert result.network_heatmap.shape == (32, 32)
    assert result.head == "class" and result.layer == FEATURE_MAP_LAYER
    with torch.no_grad():
        logits = model.network(prepare_photo(photo, model.spec).inputs).logits[0]
    assert result.predicted_index == int(logits.argmax()) == result.target_index
    assert result.probability == pytest.approx(float(torch.softmax(logits, -1).max()), abs=1e-5)
    assert result.to_dict()["heatmap_shape"] == [30, 50]
    path = tmp_path / "overlay.png"
    render_gradcam(result, prepare_photo(photo, model.spec)).save(path)
    assert path.stat().st_size > 0


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_resnet", "test_convnext"])
def test_class_gradcam_on_tiny_timm_backbones(backbone):
    config = replace(TINY_VGG, backbone=backbone, backbone_args={}, image_size=64)
    model = ExplainedModel.of(tiny_network(config, with_box=False), tiny_metadata(config, with_box=False))
    result = compute_gradcam(model, random_photo(80, 60))
    _check_heatmap(result.heatmap, (80, 60))
    assert result.network_heatmap.shape == (64, 64)
    assert result.box is None


def test_plain_timm_classifier_is_explained_through_its_feature_map():
    import timm

    classifier = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    model = ExplainedModel.of(classifier, ClassifierInfo(CLASS_NAMES, PreprocessSpec(image_size=(64, 64))))
    result = compute_gradcam(model, random_photo(64, 64), target=1)
    _check_heatmap(result.heatmap, (64, 64))
    assert result.layer == FEATURE_MAP_LAYER and result.target_index == 1


def test_box_gradcam_and_predicted_box_in_original_pixels():
    model = tiny_model(resize_mode="letterbox")
    photo = random_photo(50, 30)
    result = compute_gradcam(model, photo, head="box")
    _check_heatmap(result.heatmap, (50, 30))
    assert result.head == "box" and result.target_index is None
    prepared = prepare_photo(photo, model.spec)
    with torch.no_grad():
        box = model.network(prepared.inputs).box[0].numpy()
    expected = box_math.clip(prepared.geometry.boxes_to_original(box), 50, 30)[0]
    assert np.allclose(result.box, expected, atol=1e-4)
    assert "box" in result.caption()


def test_box_gradcam_differs_from_class_gradcam():
    model = tiny_model()
    photo = random_photo(32, 32, seed=4)
    class_map = compute_gradcam(model, photo).network_heatmap
    box_map = compute_gradcam(model, photo, head="box").network_heatmap
    assert not np.allclose(class_map, box_map, atol=1e-3)


def test_box_gradcam_without_box_head_is_a_clear_error():
    model = tiny_model(with_box=False)
    with pytest.raises(ExplainError, match="no box head"):
        compute_gradcam(model, random_photo(), head="box")
    with pytest.raises(ExplainError, match="unknown head"):
        compute_gradcam(model, random_photo(), head="wheels")  # type: ignore[arg-type]


def test_target_by_name_and_by_index_explain_that_class():
    model = tiny_model()
    photo = random_photo(seed=2)
    by_name = compute_gradcam(model, photo, target="Volvo 240 Sedan 1993")
    by_index = compute_gradcam(model, photo, target=2)
    by_digits = compute_gradcam(model, photo, target="2")
    assert by_name.target_index == by_index.target_index == by_digits.target_index == 2
    assert by_name.target_label == "Volvo 240 Sedan 1993"
    assert np.allclose(by_name.heatmap, by_index.heatmap)
    other = 1 if by_name.predicted_index != 1 else 0
    assert compute_gradcam(model, photo, target=other).target_index == other
    with pytest.raises(ExplainError, match="unknown class"):
        compute_gradcam(model, photo, target="Tesla Model S 2012")
    with pytest.raises(ExplainError, match="out of range"):
        compute_gradcam(model, photo, target=7)


def test_named_layer_and_unknown_layer_lists_candidates():
    model = tiny_model()
    photo = random_photo()
    early = compute_gradcam(model, photo, layer="stages.0")
    assert early.layer == "stages.0"
    _check_heatmap(early.heatmap, (50, 30))
    assert compute_gradcam(model, photo, layer="backbone.model.stages.0").layer == "backbone.model.stages.0"
    with pytest.raises(ExplainError, match=r"no layer 'stages\.7'.*Candidates: forward_features, stages"):
        compute_gradcam(model, photo, layer="stages.7")
    with pytest.raises(ExplainError, match=r"not a feature map \[B, C, h, w\]"):
        compute_gradcam(model, photo, layer="class_head.fc")
    with pytest.raises(ExplainError, match="does not influence the class output"):
        compute_gradcam(model, photo, layer="box_head")  # the class score never depends on it


def test_vision_transformer_is_refused_clearly():
    import timm

    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    spec = PreprocessSpec(image_size=(vit.default_cfg["input_size"][-1],) * 2)
    model = ExplainedModel.of(vit, ClassifierInfo(CLASS_NAMES, spec))
    with pytest.raises(ExplainError, match="not a feature map"):
        compute_gradcam(model, random_photo())


def test_frozen_network_still_gets_gradients_and_is_left_as_found():
    network = tiny_network()
    network.freeze_backbone()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    network.train()
    model = ExplainedModel(network=network, class_names=CLASS_NAMES, spec=PreprocessSpec(image_size=(32, 32)))
    result = compute_gradcam(model, random_photo())
    assert result.heatmap.max() > 0
    assert compute_gradcam(model, random_photo(), layer="stages.1").heatmap.max() > 0
    assert network.training  # the train/eval mode is restored
    assert all(parameter.grad is None for parameter in network.parameters())
    assert not any(module._forward_hooks for module in network.modules())  # hooks removed


def test_gradcam_overlay_for_the_web_page():
    network = tiny_network()
    image, info = gradcam_overlay(network, tiny_metadata(), random_photo(50, 30), target=1, max_side=200)
    assert image.mode == "RGB" and image.width == 200 and image.height > 120  # 200 x 120 + caption band
    assert info["target_index"] == 1 and info["method"] == "gradcam"
    assert png_bytes(image).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("resize_mode", "size", "square"),
    [
        ("letterbox", (120, 60), (10, 5, 40, 25)),  # wide photo: border above and below
        ("letterbox", (60, 120), (30, 80, 55, 110)),  # tall photo: border left and right
        ("stretch", (120, 60), (70, 30, 110, 55)),
    ],
)
def test_heat_lines_up_with_the_original_photo(resize_mode, size, square):
    """The hand-built net lights up white pixels only: the heat must sit on the white square of the
    original photo, whatever the letterbox border did to its position in the network input."""
    model = brightness_model(resize_mode)
    result = compute_gradcam(model, square_photo(size, square), target="bright")
    heat = result.heatmap
    assert heat.shape == (size[1], size[0])
    x1, y1, x2, y2 = square
    margin = 4  # the 2x-pooled map and bilinear upsampling blur the edges by a few pixels
    near = heat[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin].sum()
    assert near / heat.sum() > 0.97
    rows, cols = np.indices(heat.shape)
    centre_y = (rows * heat).sum() / heat.sum() + 0.5
    centre_x = (cols * heat).sum() / heat.sum() + 0.5
    assert centre_x == pytest.approx((x1 + x2) / 2, abs=1.5)
    assert centre_y == pytest.approx((y1 + y2) / 2, abs=1.5)
    assert heat[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].mean() > 0.8
    far = np.ones(heat.shape, dtype=bool)
    far[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = False
    assert heat[far].max() < 0.05


def _heat_inside(heat: np.ndarray, box: np.ndarray) -> tuple[float, float]:
    """(share of the heat inside the box, mean heat inside / mean heat outside)."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    inside = heat[y1:y2, x1:x2]
    outside_sum = heat.sum() - inside.sum()
    outside_mean = outside_sum / (heat.size - inside.size)
    return float(inside.sum() / heat.sum()), float(inside.mean() / outside_mean)


@pytest.fixture(scope="module")
def imagenet_classifier():
    """EfficientNet-Lite0 with its offline ImageNet weights and 1000-class head (skips without them)."""
    timm = pytest.importorskip("timm")
    from carid.models.weights import WeightsError, load_offline_weights

    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    try:
        load_offline_weights(classifier, "tf_efficientnet_lite0")
    except WeightsError as exc:
        pytest.skip(str(exc))
    config = timm.data.resolve_data_config({}, model=classifier)
    names = tuple(timm.data.ImageNetInfo().label_descriptions())
    return classifier, config, names


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_imagenet_gradcam_heat_is_on_the_car(shared_datasets, imagenet_classifier, resize_mode):
    """EfficientNet-Lite0's ImageNet head on a real Stanford photo: the heat is on the official car box.

    The network is passed as a plain classifier returning logits, through the same Grad-CAM code.
    04530.jpg is 400 x 300 with the devkit box (4, 23, 393, 268) (1-based inclusive), 80% of the
    photo; so besides most of the heat being inside, the heat must be denser inside than outside.
    """
    photo_path = shared_dataset(shared_datasets, "stanford-cars-devkit") / "cars_train" / "04530.jpg"
    classifier, config, names = imagenet_classifier
    spec = PreprocessSpec(
        image_size=(224, 224),
        mean=config["mean"],
        std=config["std"],
        resize_mode=resize_mode,
        interpolation=config["interpolation"],
    )
    model = ExplainedModel.of(classifier, ClassifierInfo(names, spec))
    result = compute_gradcam(model, photo_path)
    assert result.heatmap.shape == (300, 400)
    assert result.predicted_index in IMAGENET_CAR_CLASSES
    box = box_math.from_inclusive_1based([4, 23, 393, 268])[0]
    share, density_ratio = _heat_inside(result.heatmap, box)
    assert share > 0.6
    assert density_ratio > 2.0
