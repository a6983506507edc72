"""Tests for carid.training.transforms: eval == preprocess, boxes follow the pixels through augmentation."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from PIL import Image

from carid import preprocess as prep
from carid.config import AugmentConfig
from carid.preprocess import PreprocessSpec
from carid.training.transforms import (
    BoxSafeRandomCrop,
    EvalTransform,
    TrainTransform,
    build_eval_transform,
    build_train_transform,
)

RECT = (41, 23, 131, 87)  # xyxy pixels of the white rectangle in the 203 x 117 synthetic image
# Only geometric augmentation, so the white rectangle stays white and can be found in the output.
GEOMETRY_ONLY = AugmentConfig(
    hflip=0.5, scale=(0.3, 1.0), rotate=0.0, color_jitter=0.0, blur=0.0, grayscale=0.0
)
SPECS = [
    PreprocessSpec(image_size=(64, 80), resize_mode="stretch"),
    PreprocessSpec(image_size=(64, 64), resize_mode="letterbox"),
]


def rectangle_pixels(size: tuple[int, int] = (203, 117), rect: tuple[int, ...] = RECT) -> np.ndarray:
    width, height = size
    pixels = np.random.default_rng(0).integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = rect
    pixels[y1:y2, x1:x2] = 255
    return pixels


def bright_box(network: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The xyxy network-pixel box [4] of the pixels brighter than mid-grey in every channel."""
    mask = (prep.denormalize(network, spec) > 127).all(axis=2)
    ys, xs = np.nonzero(mask)
    assert len(xs), "no bright pixels found"
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def in_network_pixels(boxes: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    return np.asarray(boxes) * [spec.width, spec.height, spec.width, spec.height]


@pytest.mark.parametrize("spec", SPECS, ids=["stretch", "letterbox"])
def test_eval_transform_is_exactly_preprocess(spec: PreprocessSpec) -> None:
    pixels = rectangle_pixels()
    network, boxes = build_eval_transform(spec)(pixels, [RECT])
    expected, geometry = prep.preprocess(Image.fromarray(pixels), spec)
    assert network.dtype == np.float32 and network.shape == (3, spec.height, spec.width)
    assert np.array_equal(network, expected)
    np.testing.assert_array_equal(boxes, geometry.boxes_to_network([RECT]))
    # the same from a Pillow image
    network_from_pil, _ = build_eval_transform(spec)(Image.fromarray(pixels), [RECT])
    assert np.array_equal(network_from_pil, expected)


def assert_is_eval_of(
    network: np.ndarray, boxes: np.ndarray, pixels: np.ndarray, box: tuple, spec: PreprocessSpec
) -> None:
    """`network`/`boxes` are exactly the eval transform of `pixels` with `box`, and the box sits on
    the bright rectangle."""
    expected, expected_boxes = build_eval_transform(spec)(pixels, [box])
    np.testing.assert_allclose(boxes, expected_boxes, atol=1e-9)
    assert np.array_equal(network, expected)
    np.testing.assert_allclose(bright_box(network, spec), in_network_pixels(boxes[0], spec), atol=1.0)


@pytest.mark.parametrize("spec", SPECS, ids=["stretch", "letterbox"])
def test_horizontal_flip_flips_the_box(spec: PreprocessSpec) -> None:
    flip_only = AugmentConfig(hflip=1.0, scale=(1.0, 1.0), color_jitter=0.0, blur=0.0, grayscale=0.0)
    pixels = rectangle_pixels()
    network, boxes = build_train_transform(flip_only, spec, seed=0)(pixels, [RECT])
    width = pixels.shape[1]
    mirrored = (width - RECT[2], RECT[1], width - RECT[0], RECT[3])
    _, unflipped = build_eval_transform(spec)(pixels, [RECT])
    assert boxes[0, 0] > unflipped[0, 0]  # the rectangle is left of centre, so it moves right
    assert_is_eval_of(network, boxes, pixels[:, ::-1], mirrored, spec)


@pytest.mark.parametrize("spec", SPECS, ids=["stretch", "letterbox"])
def test_vertical_flip_flips_the_box(spec: PreprocessSpec) -> None:
    flip_only = AugmentConfig(
        hflip=0.0, vflip=1.0, scale=(1.0, 1.0), color_jitter=0.0, blur=0.0, grayscale=0.0
    )
    pixels = rectangle_pixels()
    network, boxes = build_train_transform(flip_only, spec, seed=0)(pixels, [RECT])
    height = pixels.shape[0]
    mirrored = (RECT[0], height - RECT[3], RECT[2], height - RECT[1])
    assert_is_eval_of(network, boxes, pixels[::-1], mirrored, spec)


@pytest.mark.parametrize("spec", SPECS, ids=["stretch", "letterbox"])
def test_quarter_turns_keep_the_box_exact(spec: PreprocessSpec) -> None:
    turns_only = AugmentConfig(
        hflip=0.0, rotate90=1.0, scale=(1.0, 1.0), color_jitter=0.0, blur=0.0, grayscale=0.0
    )
    transform = build_train_transform(turns_only, spec, seed=4)
    pixels = rectangle_pixels()
    turned = {k: build_eval_transform(spec)(np.rot90(pixels, k), [])[0] for k in range(4)}
    seen = set()
    for _ in range(24):
        network, boxes = transform(pixels, [RECT])
        turn = next(k for k, image in turned.items() if np.array_equal(network, image))
        assert_is_eval_of(
            network, boxes, np.rot90(pixels, turn), quarter_turned(RECT, pixels.shape, turn), spec
        )
        seen.add(turn)
    assert seen == {0, 1, 2, 3}


def quarter_turned(box: tuple[int, ...], shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    """`box` (xyxy pixels) after `np.rot90(image, k)` (counter-clockwise quarter turns)."""
    x1, y1, x2, y2 = box
    height, width = shape[:2]
    for _ in range(k % 4):
        x1, y1, x2, y2 = y1, width - x2, y2, width - x1
        height, width = width, height
    return (x1, y1, x2, y2)


@pytest.mark.parametrize("spec", SPECS, ids=["stretch", "letterbox"])
def test_box_safe_crop_keeps_the_box_and_the_pixels_agree(spec: PreprocessSpec) -> None:
    transform = build_train_transform(GEOMETRY_ONLY, spec, seed=3)
    pixels = rectangle_pixels()
    _, full = build_eval_transform(spec)(pixels, [RECT])
    zoomed = 0
    for _ in range(50):
        network, boxes = transform(pixels, [RECT])
        assert network.shape == (3, spec.height, spec.width) and network.dtype == np.float32
        assert boxes.shape == (1, 4)
        box = boxes[0]
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        np.testing.assert_allclose(bright_box(network, spec), in_network_pixels(box, spec), atol=1.5)
        zoomed += int((box[2] - box[0]) > (full[0, 2] - full[0, 0]) + 0.02)
    assert zoomed > 10  # crops really happened


def test_crop_contains_a_box_larger_than_the_requested_area() -> None:
    spec = PreprocessSpec(image_size=(48, 48))
    transform = build_train_transform(
        AugmentConfig(hflip=0.0, scale=(0.1, 0.1), color_jitter=0.0, blur=0.0, grayscale=0.0), spec, seed=1
    )
    big = (10, 5, 190, 110)  # most of the image: the crop must grow to hold it
    pixels = rectangle_pixels(rect=big)
    for _ in range(20):
        network, boxes = transform(pixels, [big])
        box = boxes[0]
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        assert (box[2] - box[0]) > 0.85 and (box[3] - box[1]) > 0.85
        np.testing.assert_allclose(bright_box(network, spec), in_network_pixels(box, spec), atol=1.5)


def test_crop_area_follows_scale_without_boxes() -> None:
    crop = A.Compose([BoxSafeRandomCrop(scale=(0.5, 0.5))], seed=0)
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    for _ in range(20):
        height, width = crop(image=image)["image"].shape[:2]
        assert 0.45 <= height * width / (100 * 120) <= 0.55


def test_several_boxes_all_survive_in_order() -> None:
    spec = PreprocessSpec(image_size=(64, 64))
    transform = build_train_transform(GEOMETRY_ONLY, spec, seed=5)
    boxes_in = np.array([[5, 5, 30, 40], [100, 50, 180, 110], [60, 10, 70, 20]], dtype=np.float64)
    pixels = rectangle_pixels()
    for _ in range(20):
        _, boxes = transform(pixels, boxes_in)
        assert boxes.shape == (3, 4)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all((boxes >= 0) & (boxes <= 1))
        widths = boxes[:, 2] - boxes[:, 0]
        assert widths[1] > widths[0] > widths[2]  # still in the order given


@pytest.mark.parametrize("augment", [GEOMETRY_ONLY, AugmentConfig(rotate=15.0), AugmentConfig()])
def test_images_without_boxes_work(augment: AugmentConfig) -> None:
    spec = PreprocessSpec(image_size=(40, 56), resize_mode="letterbox")
    transform = build_train_transform(augment, spec, seed=0)
    for _ in range(5):
        network, boxes = transform(rectangle_pixels(), np.zeros((0, 4)))
        assert network.shape == (3, 40, 56) and network.dtype == np.float32
        assert boxes.shape == (0, 4)


def test_full_augmentation_keeps_boxes_valid() -> None:
    spec = PreprocessSpec(image_size=(64, 64))
    transform = build_train_transform(
        AugmentConfig(rotate=20.0, color_jitter=0.4, blur=0.5, grayscale=0.5), spec, seed=7
    )
    for _ in range(30):
        network, boxes = transform(rectangle_pixels(), [RECT])
        assert np.isfinite(network).all()
        assert boxes.shape == (1, 4)
        assert 0 <= boxes[0, 0] < boxes[0, 2] <= 1 and 0 <= boxes[0, 1] < boxes[0, 3] <= 1


def test_boxes_reaching_outside_are_clipped_and_degenerate_ones_refused() -> None:
    spec = PreprocessSpec(image_size=(32, 32))
    _, boxes = build_eval_transform(spec)(rectangle_pixels(), [[-10, 0, 250, 50]])
    np.testing.assert_allclose(boxes[0, [0, 2]], [0, 1])
    with pytest.raises(ValueError, match="degenerate"):
        build_eval_transform(spec)(rectangle_pixels(), [[300, 0, 400, 50]])


def test_same_seed_same_augmentation() -> None:
    spec = PreprocessSpec(image_size=(32, 32))
    first = build_train_transform(AugmentConfig(rotate=10.0), spec, seed=11)
    second = build_train_transform(AugmentConfig(rotate=10.0), spec, seed=11)
    draws_first = [first(rectangle_pixels(), [RECT]) for _ in range(5)]
    draws_second = [second(rectangle_pixels(), [RECT]) for _ in range(5)]
    for (image_a, boxes_a), (image_b, boxes_b) in zip(draws_first, draws_second, strict=True):
        assert np.array_equal(image_a, image_b) and np.array_equal(boxes_a, boxes_b)
    second.set_seed(12)
    assert not np.array_equal(first(rectangle_pixels(), [RECT])[0], second(rectangle_pixels(), [RECT])[0])


def test_disabled_augmentation_is_the_eval_transform() -> None:
    spec = PreprocessSpec(image_size=(32, 32))
    assert isinstance(build_train_transform(AugmentConfig(enabled=False), spec), EvalTransform)
    assert isinstance(build_train_transform(AugmentConfig(), spec), TrainTransform)
    assert (
        build_eval_transform(spec).deterministic
        and not build_train_transform(AugmentConfig(), spec).deterministic
    )


def test_rejects_a_non_rgb_array() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        build_train_transform(AugmentConfig(), PreprocessSpec(image_size=(16, 16)))(
            np.zeros((10, 10), dtype=np.uint8), []
        )


@pytest.mark.parametrize("spec", SPECS, ids=["stretch", "letterbox"])
def test_train_transform_with_nothing_to_do_equals_preprocess(spec: PreprocessSpec) -> None:
    nothing = AugmentConfig(hflip=0.0, scale=(1.0, 1.0), color_jitter=0.0, blur=0.0, grayscale=0.0)
    transform = build_train_transform(nothing, spec, seed=0)
    assert isinstance(transform, TrainTransform)  # the augmentation path, with every step off
    pixels = rectangle_pixels()
    network, boxes = transform(pixels, [RECT])
    expected, expected_boxes = build_eval_transform(spec)(pixels, [RECT])
    assert np.array_equal(network, expected)
    np.testing.assert_allclose(boxes, expected_boxes, atol=1e-12)


def test_colour_augmentation_leaves_the_letterbox_border_alone() -> None:
    spec = PreprocessSpec(image_size=(64, 64), resize_mode="letterbox", pad_value=(10, 200, 30))
    colour_only = AugmentConfig(hflip=0.0, scale=(1.0, 1.0), color_jitter=0.5, blur=1.0, grayscale=0.5)
    transform = build_train_transform(colour_only, spec, seed=0)
    expected, geometry = prep.preprocess(Image.fromarray(rectangle_pixels(size=(200, 51))), spec)
    top = int(geometry.pad_top)
    changed = 0
    for _ in range(10):
        network, _ = transform(rectangle_pixels(size=(200, 51)), [RECT])
        assert np.array_equal(network[:, :top], expected[:, :top])  # the border is exactly pad_value
        changed += int(not np.array_equal(network[:, top + 2 : -top - 2], expected[:, top + 2 : -top - 2]))
    assert changed >= 5  # the photo itself was augmented


def test_reduced_decode_boxes_given_in_original_pixels() -> None:
    spec = PreprocessSpec(image_size=(32, 48))
    full = rectangle_pixels(size=(400, 234), rect=(82, 46, 262, 174))
    half = np.asarray(Image.fromarray(full).resize((200, 117), Image.Resampling.BOX))
    nothing = AugmentConfig(hflip=0.0, scale=(1.0, 1.0), color_jitter=0.0, blur=0.0, grayscale=0.0)
    for transform in (build_eval_transform(spec), build_train_transform(nothing, spec)):
        _, from_half = transform(half, [(82, 46, 262, 174)], original_size=(400, 234))
        _, from_full = transform(full, [(82, 46, 262, 174)])
        np.testing.assert_allclose(from_half, from_full, atol=1e-9)
