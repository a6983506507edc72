"""Opening images: the one place that decodes files, for checks, EDA, training and prediction.

Pillow does the decoding. Two things are added on top: errors become `ImageError` naming the file
and the problem (not a JPEG, truncated, too many pixels, ...), and `load_rgb` can ask the JPEG
decoder for a reduced size (``Image.draft``), which makes decoding several times faster when the
network input is much smaller than the photo.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from carid.errors import CaridError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# Decompression-bomb guard: anything above this many pixels is refused (about 16k x 16k).
MAX_PIXELS = 268_435_456


class ImageError(CaridError, ValueError):
    """An image that cannot be used, with the file and the reason in the message."""

    def __init__(self, path: Path | str, kind: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What opening an image told us. Size is after EXIF orientation is applied."""

    width: int
    height: int
    format: str  # Pillow format name, e.g. "JPEG", "PNG"
    mode: str  # Pillow mode of the file, e.g. "RGB", "CMYK", "RGBA"
    suffix_mismatch: bool  # the file extension promises another format than the bytes hold


_FORMAT_SUFFIXES = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "PNG": {".png"},
    "BMP": {".bmp"},
    "WEBP": {".webp"},
    "GIF": {".gif"},
    "TIFF": {".tif", ".tiff"},
    "MPO": {".jpg", ".jpeg"},
}


def is_image_file(path: Path) -> bool:
    """True when the file name has an image extension (the bytes are not looked at)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _orientation_swaps_axes(image: Image.Image) -> bool:
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make a good image unreadable
        return False
    return orientation in (5, 6, 7, 8)


def _display_name(source: Path | bytes, name: str | None) -> str:
    """How messages name the image: `name`, else the path, else "<upload>" for bytes."""
    return name or str(source if not isinstance(source, bytes) else "<upload>")


def _failure_kind(exc: Exception) -> str:
    """The ImageError kind of a Pillow failure: OSError saying "truncated" -> truncated_image; any
    other OSError, and the SyntaxError / ValueError Pillow raises for some corrupt files ->
    unreadable_image."""
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return "truncated_image"
    return "unreadable_image"


def _decode_error(name: str, exc: Exception) -> ImageError:
    """The ImageError for pixels that fail to decode (`image.load()`)."""
    return ImageError(name, _failure_kind(exc), f"cannot decode ({exc})")


def _open(source: Path | bytes, name: str) -> Image.Image:
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
    except FileNotFoundError as exc:
        raise ImageError(name, "missing_file", "file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(name, "not_an_image", "not an image file Pillow can read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(name, "too_many_pixels", f"too many pixels ({exc})") from exc
    except OSError as exc:
        raise ImageError(name, _failure_kind(exc), f"cannot open: {exc}") from exc
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(
            name, "too_many_pixels", f"{image.width}x{image.height} exceeds the {MAX_PIXELS:,}-pixel limit"
        )
    return image


def probe_image(source: Path | bytes, name: str | None = None, decode: bool = True) -> ImageInfo:
    """Open an image and, with `decode`, decode every pixel so truncation is caught.

    Raises ImageError (kind: missing_file, not_an_image, truncated_image, unreadable_image,
    too_many_pixels).
    """
    label = _display_name(source, name)
    image = _open(source, label)
    with image:
        fmt = image.format or "unknown"
        mode = image.mode
        swaps = _orientation_swaps_axes(image)
        width, height = (image.height, image.width) if swaps else (image.width, image.height)
        if decode:
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as exc:
                raise _decode_error(label, exc) from exc
    suffix = Path(label).suffix.lower()
    expected = _FORMAT_SUFFIXES.get(fmt)
    mismatch = bool(suffix) and expected is not None and suffix not in expected
    return ImageInfo(width=width, height=height, format=fmt, mode=mode, suffix_mismatch=mismatch)


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as carid uses it: EXIF orientation applied, alpha composited on white, RGB."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_rgb(source: Path | bytes, name: str | None = None, min_side: int | None = None) -> Image.Image:
    """Decode to an RGB image with EXIF orientation applied.

    min_side: when given, JPEG decoding may use a reduced scale (1/2, 1/4, 1/8) as long as the
    shorter side stays >= min_side; callers that need original-pixel coordinates map them with
    `carid.preprocess.decode_scale(original_size, decoded_size)`.
    Alpha is composited on white; CMYK, palette and grey images are converted.
    """
    label = _display_name(source, name)
    image = _open(source, label)
    try:
        if min_side and image.format == "JPEG":
            width, height = image.size
            scale = min(width, height) / float(min_side)
            if scale >= 2:
                image.draft("RGB", (int(width / scale) + 1, int(height / scale) + 1))
        image.load()
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise _decode_error(label, exc) from exc
