from pathlib import Path

import pytest
from PIL import Image

from carid.images import ImageError, load_rgb, probe_image
from tests.conftest import write_image


def test_probe_good_jpeg(tmp_path: Path):
    path = write_image(tmp_path / "a.jpg", size=(40, 30), seed=1)
    info = probe_image(path)
    assert (info.width, info.height, info.format) == (40, 30, "JPEG")
    assert not info.suffix_mismatch


def test_truncated_jpeg_is_named(tmp_path: Path):
    path = write_image(tmp_path / "t.jpg", size=(200, 150), seed=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        probe_image(path)
    assert info.value.kind == "truncated_image"
    assert "t.jpg" in str(info.value)


def test_text_file_is_not_an_image(tmp_path: Path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.jpg") as info:
        probe_image(path)
    assert info.value.kind == "not_an_image"


def test_png_named_jpg_is_a_mismatch(tmp_path: Path):
    path = write_image(tmp_path / "p.jpg", fmt="PNG")
    assert probe_image(path).suffix_mismatch


def test_missing_file(tmp_path: Path):
    with pytest.raises(ImageError) as info:
        probe_image(tmp_path / "gone.jpg")
    assert info.value.kind == "missing_file"


def test_load_rgb_converts_alpha_cmyk_and_exif(tmp_path: Path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.save(tmp_path / "a.png")
    assert load_rgb(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    Image.new("CMYK", (10, 10), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    assert load_rgb(tmp_path / "c.jpg").mode == "RGB"
    rotated = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90: displayed as 20 x 40
    rotated.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (20, 40)
    assert (probe_image(tmp_path / "r.jpg").width, probe_image(tmp_path / "r.jpg").height) == (20, 40)


def test_draft_decode_keeps_min_side(tmp_path: Path):
    path = write_image(tmp_path / "big.jpg", size=(800, 600), seed=3)
    image = load_rgb(path, min_side=100)
    assert min(image.size) >= 100
    assert image.size[0] < 800
    assert load_rgb(path).size == (800, 600)


def test_bytes_input(tmp_path: Path):
    path = write_image(tmp_path / "b.png", fmt="PNG")
    assert probe_image(path.read_bytes(), name="upload.png").format == "PNG"
