import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from carid.images import ImageError, decode_rgb, load_rgb, probe_image, to_rgb
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


# --- decoding big uploads cheaply (issue 23, defect 1) ------------------------------------------------


def _reference_rgb(image: Image.Image) -> Image.Image:
    """What carid always meant by an RGB image: EXIF orientation, alpha composited on white, RGB
    (written the slow, full-size way, as the decoder did before it worked in strips)."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def _textured(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Random pixels in `mode`, with alpha spanning 0..255 when the mode has alpha."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "P":
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L").convert("P")
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        image.info["transparency"] = bytes(rng.integers(0, 256, 256, dtype=np.uint8))
        return image
    bands = len(mode)
    pixels = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
    return Image.fromarray(pixels if bands > 1 else pixels[:, :, 0], mode)


def _png(image: Image.Image, orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buffer, format="PNG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB", "L", "I;16"])
def test_rgb_conversion_means_what_it_always_meant(mode: str) -> None:
    image = _textured(mode, (203, 157), seed=5) if mode != "I;16" else Image.new("I;16", (203, 157), 300)
    data = _png(image)
    expected = _reference_rgb(Image.open(io.BytesIO(data)))
    assert np.array_equal(np.asarray(load_rgb(data)), np.asarray(expected))
    assert np.array_equal(np.asarray(to_rgb(Image.open(io.BytesIO(data)))), np.asarray(expected))
    # reduced: exactly the full-size result averaged over 2x2 blocks (the last ones partial)
    reduced = load_rgb(data, min_side=60)
    assert reduced.size == (102, 79)
    assert np.array_equal(np.asarray(reduced), np.asarray(expected.reduce(2)))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_decode_is_exact_under_every_exif_orientation(orientation: int) -> None:
    # sides that are no multiple of the factor: the partial blocks must end up right and bottom of the
    # photo as shown, the convention `carid.preprocess.decode_scale` maps boxes with
    data = _png(_textured("RGBA", (203, 157), seed=orientation), orientation)
    expected = _reference_rgb(Image.open(io.BytesIO(data))).reduce(4)
    decoded, original_size = decode_rgb(data, min_side=36)
    swapped = orientation in (5, 6, 7, 8)
    assert original_size == ((157, 203) if swapped else (203, 157))
    assert decoded.size == expected.size == (math.ceil(original_size[0] / 4), math.ceil(original_size[1] / 4))
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


def test_a_big_rgba_png_is_reduced_before_any_full_size_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 23: a 49 MP RGBA PNG cost ~1 GB because alpha was composited at full size. Only the decoded
    # image itself may be full size; every image made from it must be a small strip or the reduced result.
    side = 2000
    image = Image.new("RGBA", (side, side), (200, 30, 30, 255))
    image.paste((0, 0, 0, 0), (0, 0, side // 2, side))
    data = _png(image)
    sizes: list[tuple[str, int]] = []

    def recording(name: str, function):
        def call(*args, **kwargs):
            result = function(*args, **kwargs)
            if isinstance(result, Image.Image):
                sizes.append((name, result.width * result.height))
            return result

        return call

    for name in ("convert", "copy", "crop", "transpose", "reduce", "resize"):
        monkeypatch.setattr(Image.Image, name, recording(name, getattr(Image.Image, name)))
    monkeypatch.setattr(Image, "new", recording("new", Image.new))
    monkeypatch.setattr(Image, "alpha_composite", recording("alpha_composite", Image.alpha_composite))
    decoded = load_rgb(data, min_side=224)
    assert decoded.size == (250, 250) and decoded.mode == "RGB"  # 1/8: the shorter side stays >= 224
    assert decoded.getpixel((0, 0)) == (255, 255, 255) and decoded.getpixel((249, 0)) == (200, 30, 30)
    biggest = max(sizes, key=lambda item: item[1])
    assert biggest[1] <= side * side // 3, f"a full-size copy was made: {biggest}"  # strips of ~1 MP


_RSS_SCRIPT = """
import gc, sys
from pathlib import Path
from carid.images import load_rgb

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

data = Path(sys.argv[1]).read_bytes()
load_rgb(Path(sys.argv[2]), min_side=224)  # import the PNG plugin, warm the allocator
gc.collect()
idle = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
image = load_rgb(data, min_side=224)
print(status("VmHWM") - idle, image.size)
"""


def test_decoding_a_big_rgba_png_peaks_near_one_decoded_copy(tmp_path: Path) -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("peak RSS cannot be reset here (needs Linux /proc/self/clear_refs)")
    side = 4000  # 16 MP: 64 MB decoded as RGBA
    image = Image.new("RGBA", (side, side), (30, 90, 200, 255))
    image.paste((0, 0, 0, 0), (side // 4, side // 4, side // 2, side))
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    image.save(big)
    image.resize((300, 300)).save(small)
    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(big), str(small)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    peak = int(result.stdout.split()[0])
    decoded_rgba = side * side * 4
    # before issue 23 the peak was ~4 full-size copies (RGBA, its copy, the white RGBA, the composite)
    assert peak < 1.4 * decoded_rgba, f"peak {peak / 2**20:.0f} MB above idle"
