"""Tests for carid.preprocess: the spec, the geometry round trip, pixels landing where boxes say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from carid import images
from carid import preprocess as prep
from carid.config import AugmentConfig, ModelConfig
from carid.images import ImageError
from carid.preprocess import Geometry, PreprocessSpec, decode_scale, preprocess, preprocess_batch

RECT = (37, 21, 150, 90)  # xyxy pixels of a white rectangle on the 203 x 117 synthetic image


def rectangle_image(
    size: tuple[int, int] = (203, 117), rect: tuple[int, int, int, int] = RECT
) -> Image.Image:
    """A dark noisy image with a white filled rectangle covering pixels [x1, x2) x [y1, y2)."""
    width, height = size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = rect
    pixels[y1:y2, x1:x2] = 255
    return Image.fromarray(pixels, "RGB")


def bright_box(network: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The xyxy network-pixel box [4] of the pixels brighter than mid-grey in every channel."""
    pixels = prep.denormalize(network, spec)
    mask = (pixels > 127).all(axis=2)
    ys, xs = np.nonzero(mask)
    assert len(xs), "no bright pixels found"
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


SPECS = [
    PreprocessSpec(image_size=(64, 80), resize_mode="stretch"),
    PreprocessSpec(image_size=(64, 80), resize_mode="letterbox"),
    PreprocessSpec(image_size=(77, 51), resize_mode="letterbox", interpolation="bicubic"),
    PreprocessSpec(image_size=(33, 33), resize_mode="stretch", interpolation="nearest"),
]
SPEC_IDS = [f"{s.resize_mode}-{s.height}x{s.width}-{s.interpolation}" for s in SPECS]


def test_spec_round_trips_through_dict() -> None:
    spec = PreprocessSpec(
        image_size=(96, 128), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="letterbox"
    )
    data = spec.to_dict()
    assert data["pad_value"] == [128, 128, 128]  # None -> the mean colour
    assert PreprocessSpec.from_dict(data) == spec
    assert PreprocessSpec.from_dict(spec.to_dict()).to_dict() == data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resize_mode": "crop"}, "resize_mode"),
        ({"interpolation": "fancy"}, "interpolation"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"image_size": (0, 10)}, "image_size"),
        ({"pad_value": (0, 0, 300)}, "pad_value"),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessSpec(**changes)


def test_spec_from_dict_names_source_and_key() -> None:
    data = PreprocessSpec().to_dict()
    with pytest.raises(ValueError, match=r"model\.json: unknown preprocessing key\(s\) \['crop'\]"):
        PreprocessSpec.from_dict({**data, "crop": 1}, source="model.json")
    del data["mean"]
    with pytest.raises(ValueError, match=r"missing preprocessing key.*mean"):
        PreprocessSpec.from_dict(data)


def test_spec_from_config() -> None:
    spec = PreprocessSpec.from_config(ModelConfig(image_size=96), AugmentConfig(resize_mode="letterbox"))
    assert spec.image_size == (96, 96)
    assert spec.resize_mode == "letterbox"
    assert spec.mean == prep.IMAGENET_MEAN


@pytest.mark.parametrize(
    "spec", SPECS, ids=lambda s: f"{s.resize_mode}-{s.height}x{s.width}-{s.interpolation}"
)
@pytest.mark.parametrize("original_size", [None, (406, 234), (405, 233)])
def test_geometry_round_trip_is_exact(spec: PreprocessSpec, original_size: tuple[int, int] | None) -> None:
    image = rectangle_image()
    _, geometry = preprocess(image, spec, original_size=original_size)
    rng = np.random.default_rng(1)
    corners = np.sort(rng.uniform(0, 1, size=(20, 2, 2)), axis=1)  # [box, min/max, x/y]
    normalized = corners.reshape(20, 4)
    np.testing.assert_allclose(
        geometry.boxes_to_network(geometry.boxes_to_original(normalized)), normalized, atol=1e-6
    )
    size = [geometry.original_width, geometry.original_height] * 2
    absolute = normalized * size
    np.testing.assert_allclose(
        geometry.boxes_to_original(geometry.boxes_to_network(absolute)), absolute, atol=1e-6
    )
    assert Geometry.from_array(geometry.to_array()) == geometry


@pytest.mark.parametrize(
    "spec", SPECS, ids=lambda s: f"{s.resize_mode}-{s.height}x{s.width}-{s.interpolation}"
)
def test_white_rectangle_lands_where_the_box_says(spec: PreprocessSpec) -> None:
    network, geometry = preprocess(rectangle_image(), spec)
    assert network.shape == (3, spec.height, spec.width)
    assert network.dtype == np.float32
    expected = geometry.boxes_to_network([RECT])[0] * [spec.width, spec.height, spec.width, spec.height]
    np.testing.assert_allclose(bright_box(network, spec), expected, atol=1.0)


def test_letterbox_centres_the_resized_image() -> None:
    spec = PreprocessSpec(image_size=(64, 64), resize_mode="letterbox")
    _, geometry = preprocess(rectangle_image(size=(101, 57)), spec)
    # 101 x 57 fits 64 wide: height round(57 * 64 / 101) = 36, padding (64 - 36) // 2 = 14 on top
    np.testing.assert_allclose(
        geometry.boxes_to_network([[0, 0, 101, 57]])[0] * 64, [0, 14, 64, 50], atol=1e-9
    )


@pytest.mark.parametrize("pad_value", [None, (10, 200, 30)])
def test_letterbox_pads_with_pad_value(pad_value: tuple[int, int, int] | None) -> None:
    spec = PreprocessSpec(image_size=(64, 64), resize_mode="letterbox", pad_value=pad_value)
    network, geometry = preprocess(rectangle_image(size=(200, 51)), spec)
    assert geometry.pad_left == 0 and geometry.pad_top > 0
    pad = np.asarray(spec.pad_value, dtype=np.float32)
    expected = (pad / 255 - np.asarray(spec.mean)) / np.asarray(spec.std)
    top = int(geometry.pad_top)
    bottom = round(64 - geometry.pad_top - 51 * geometry.scale_y)
    for rows in (network[:, :top, :], network[:, 64 - bottom :, :]):
        assert rows.size
        np.testing.assert_allclose(rows, np.broadcast_to(expected[:, None, None], rows.shape), atol=1e-5)
    if pad_value is None:
        assert np.abs(network[:, 0, 0]).max() < 0.02  # the mean colour normalizes to about 0


def test_stretch_fills_the_whole_input() -> None:
    spec = PreprocessSpec(image_size=(40, 30), resize_mode="stretch")
    _, geometry = preprocess(rectangle_image(size=(101, 57)), spec)
    assert (geometry.pad_left, geometry.pad_top) == (0, 0)
    np.testing.assert_allclose(geometry.boxes_to_network([[0, 0, 101, 57]]), [[0, 0, 1, 1]], atol=1e-12)


def test_preprocess_batch_stacks_single_results() -> None:
    spec = PreprocessSpec(image_size=(32, 48), resize_mode="letterbox")
    images = [rectangle_image(size=(203, 117)), rectangle_image(size=(50, 90)).convert("L").convert("RGB")]
    batch, geometries = preprocess_batch(images, spec)
    assert batch.shape == (2, 3, 32, 48) and batch.dtype == np.float32
    for array, geometry, image in zip(batch, geometries, images, strict=True):
        single, single_geometry = preprocess(image, spec)
        assert np.array_equal(array, single)
        assert geometry == single_geometry
    empty, none = preprocess_batch([], spec)
    assert empty.shape == (0, 3, 32, 48) and none == []


def test_non_rgb_input_is_converted() -> None:
    spec = PreprocessSpec(image_size=(16, 16))
    grey = rectangle_image().convert("L")
    network, _ = preprocess(grey, spec)
    assert network.shape == (3, 16, 16)


def test_normalize_matches_the_formula_channel_first() -> None:
    spec = PreprocessSpec(image_size=(5, 7), mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))
    pixels = np.random.default_rng(3).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    network = prep.normalize(pixels, spec)
    expected = (pixels.astype(np.float64) / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    assert network.dtype == np.float32 and network.flags["C_CONTIGUOUS"]
    assert network.shape == (3, 5, 7)
    np.testing.assert_allclose(network, expected.transpose(2, 0, 1), atol=1e-5)


def test_denormalize_inverts_normalize() -> None:
    spec = PreprocessSpec(image_size=(8, 8), mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))
    pixels = np.random.default_rng(2).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    assert np.array_equal(prep.denormalize(prep.normalize(pixels, spec), spec), pixels)


def test_decode_scale_uses_the_exact_draft_factor() -> None:
    assert decode_scale((1203, 905), (1203, 905)) == (1.0, 1.0)
    assert decode_scale((1203, 905), (602, 453)) == (0.5, 0.5)
    assert decode_scale((1203, 905), (151, 114)) == (0.125, 0.125)
    assert decode_scale((1000, 800), (300, 240)) == (0.3, 0.3)  # not a draft: the size ratio


def test_decode_scale_knows_reductions_beyond_the_jpeg_draft() -> None:
    # PNG and the other formats are reduced by powers of two past 1/8 (issue 23: a 7000 x 7000 upload)
    assert decode_scale((7000, 7000), (438, 438)) == (1 / 16, 1 / 16)
    assert decode_scale((7000, 4999), (219, 157)) == (1 / 32, 1 / 32)


def _write_rectangle_jpeg(path: Path, size: tuple[int, int], rect: tuple[int, int, int, int]) -> Path:
    image = Image.new("RGB", size, (20, 30, 40))
    ImageDraw.Draw(image).rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=(255, 255, 255))
    image.save(path, quality=95)
    return path


@pytest.mark.parametrize("rect", [(100, 80, 900, 700), (101, 83, 899, 703)])
def test_reduced_decode_boxes_match_the_full_decode(tmp_path: Path, rect: tuple[int, int, int, int]) -> None:
    path = _write_rectangle_jpeg(tmp_path / "big.jpg", (1203, 905), rect)
    spec = PreprocessSpec(image_size=(300, 300))
    reduced = prep.load_image(path, spec)
    full = prep.load_image(path, spec, min_side=0)
    assert full.image.size == (1203, 905) and full.original_size == (1203, 905)
    assert reduced.image.size == (602, 453) and reduced.original_size == (1203, 905)
    for decoded in (reduced, full):
        pixels = np.asarray(decoded.image)
        ys, xs = np.nonzero((pixels > 127).all(axis=2))
        found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float64)
        expected = decoded.boxes_to_decoded([rect])
        scale_x, _ = decoded.scale
        # within one decoded pixel, i.e. 2 original pixels for the half-size decode
        np.testing.assert_allclose(found, expected, atol=1.0)
        np.testing.assert_allclose(found / scale_x, [rect], atol=2.0)


def test_reduced_decode_network_input_matches_full_decode(tmp_path: Path) -> None:
    rect = (101, 83, 899, 703)
    path = _write_rectangle_jpeg(tmp_path / "big.jpg", (1203, 905), rect)
    spec = PreprocessSpec(image_size=(150, 200), resize_mode="letterbox")
    reduced, reduced_geometry = prep.load_and_preprocess(path, spec)
    full = prep.load_image(path, spec, min_side=0)
    full_network, full_geometry = preprocess(full.image, spec)
    size = [spec.width, spec.height, spec.width, spec.height]
    reduced_box = reduced_geometry.boxes_to_network([rect])[0] * size
    full_box = full_geometry.boxes_to_network([rect])[0] * size
    assert reduced_geometry == full_geometry
    np.testing.assert_array_equal(reduced_box, full_box)
    np.testing.assert_allclose(bright_box(reduced, spec), reduced_box, atol=1.0)
    np.testing.assert_allclose(bright_box(full_network, spec), full_box, atol=1.0)
    assert np.abs(reduced - full_network).mean() < 0.1


def _write_rectangle_png(path: Path, size: tuple[int, int], rect: tuple[int, int, int, int]) -> Path:
    """A PNG with alpha: a half-transparent dark background (white behind it after decoding) and an
    opaque black rectangle covering pixels [x1, x2) x [y1, y2)."""
    image = Image.new("RGBA", size, (20, 30, 40, 128))
    ImageDraw.Draw(image).rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=(0, 0, 0, 255))
    image.save(path)
    return path


@pytest.mark.parametrize("rect", [(100, 80, 900, 700), (101, 83, 899, 703)])
def test_reduced_png_decode_maps_boxes_exactly(tmp_path: Path, rect: tuple[int, int, int, int]) -> None:
    path = _write_rectangle_png(tmp_path / "big.png", (1203, 905), rect)
    spec = PreprocessSpec(image_size=(300, 300), resize_mode="letterbox")
    reduced = prep.load_image(path, spec)
    full = prep.load_image(path, spec, min_side=0)
    assert full.image.size == (1203, 905) and full.original_size == (1203, 905)
    assert reduced.image.size == (602, 453) and reduced.original_size == (1203, 905)
    assert reduced.scale == (0.5, 0.5)
    for decoded in (reduced, full):
        pixels = np.asarray(decoded.image)
        ys, xs = np.nonzero((pixels < 60).all(axis=2))
        found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float64)
        # a block partly inside the rectangle is darker than the background: within one decoded pixel
        np.testing.assert_allclose(found, decoded.boxes_to_decoded([rect]), atol=1.0)
    reduced_input, reduced_geometry = preprocess(reduced.image, spec, reduced.original_size)
    full_input, full_geometry = preprocess(full.image, spec)
    assert reduced_geometry == full_geometry
    difference = np.abs(
        prep.denormalize(reduced_input, spec).astype(int) - prep.denormalize(full_input, spec)
    )
    assert difference.mean() < 1.0


def test_load_image_trusts_a_consistent_known_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_rectangle_jpeg(tmp_path / "big.jpg", (1203, 905), (100, 80, 900, 700))
    spec = PreprocessSpec(image_size=(300, 300))

    def no_probe(*args: object, **kwargs: object) -> None:
        raise AssertionError("the header should not be read when the size is known")

    monkeypatch.setattr(images, "probe_image", no_probe)  # the decode reads the size with the pixels
    assert prep.load_image(path, spec, original_size=(1203, 905)).original_size == (1203, 905)


def test_load_image_reads_the_header_when_the_known_size_is_stale(tmp_path: Path) -> None:
    path = _write_rectangle_jpeg(tmp_path / "big.jpg", (1203, 905), (100, 80, 900, 700))
    spec = PreprocessSpec(image_size=(300, 300))
    assert prep.load_image(path, spec, original_size=(905, 1203)).original_size == (1203, 905)
    assert prep.load_image(path.read_bytes(), spec).original_size == (1203, 905)


def test_load_image_names_the_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match=r"broken\.jpg"):
        prep.load_image(bad, PreprocessSpec())


def test_imports_without_torch_or_albumentations() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'albumentations', 'cv2', 'lightning', 'timm'):\n"
        "    sys.modules[name] = None\n"
        "import carid.preprocess as p\n"
        "from PIL import Image\n"
        "array, geometry = p.preprocess(Image.new('RGB', (50, 30)), p.PreprocessSpec(image_size=(16, 16)))\n"
        "assert array.shape == (3, 16, 16)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.shared_data
def test_reduced_decode_of_real_photos_matches_the_full_decode(shared_datasets: Path) -> None:
    folder = shared_datasets / "stanford-cars-devkit" / "cars_train"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    spec = PreprocessSpec(image_size=(224, 224), resize_mode="letterbox")
    reduced_count = 0
    for path in sorted(folder.glob("*.jpg")):
        reduced = prep.load_image(path, spec)
        full = prep.load_image(path, spec, min_side=0)
        assert reduced.original_size == full.image.size
        reduced_count += int(reduced.image.size != full.image.size)
        reduced_input, reduced_geometry = preprocess(reduced.image, spec, reduced.original_size)
        full_input, full_geometry = preprocess(full.image, spec)
        assert reduced_geometry == full_geometry
        # same picture up to decoder rounding: under 1 grey level on average (measured 0.3-0.5)
        difference = np.abs(
            prep.denormalize(reduced_input, spec).astype(int) - prep.denormalize(full_input, spec)
        )
        assert difference.mean() < 1.0, path
    assert reduced_count > 0  # some of the photos are big enough for a reduced decode
