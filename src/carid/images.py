"""Opening images: the one place that decodes files, for checks, EDA, training and prediction.

Pillow does the decoding. Two things are added on top: errors become `ImageError` naming the file
and the problem (not a JPEG, truncated, too many pixels, ...), and `load_rgb` / `decode_rgb` can
decode at a reduced size when the network input is much smaller than the photo: JPEG asks the
decoder itself for 1/2, 1/4 or 1/8 (``Image.draft``); the other formats are decoded whole and then
averaged over blocks of 2^k x 2^k pixels. Either way decoded pixel i covers original pixels
[i*s, (i+1)*s) along each axis of the photo as shown (EXIF orientation applied), the last one partly
(`carid.preprocess.decode_scale`).

Memory: a decoded file is held once, in its own mode (a 49 MP RGBA PNG: 196 MB). Everything made
from it (alpha composited on white with one paste using the alpha band as mask, the conversion to
RGB, the reduction) is done a strip of rows at a time, so no second full-size copy is made (issue
23: a 186 KB PNG of 7000 x 7000 RGBA pixels used to cost ~1 GB in four full-size copies).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from carid.errors import CaridError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# What Pillow raises on a corrupt or hostile file besides OSError: its parsers throw SyntaxError,
# ValueError, struct.error (short headers), zlib.error, EOFError, IndexError, KeyError, TypeError,
# OverflowError (even ZeroDivisionError, RecursionError) on malformed chunks. Each of them means
# "this file cannot be used".
PILLOW_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    OverflowError,
    ZeroDivisionError,
    RecursionError,
    struct.error,
    zlib.error,
)

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


def _orientation(image: Image.Image, header_only: bool = False) -> int:
    """The EXIF orientation (1 = upright, 2-8 = flipped and/or turned; 1 when unreadable).

    header_only: only EXIF read with the header counts. Pillow's PNG reader decodes every pixel to
    look for an eXIf chunk after the pixel data (rare: writers put it before); a header probe must
    not pay a whole decode for that.
    """
    try:
        exif = Image.Image.getexif(image) if header_only else image.getexif()
        return int(exif.get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make a good image unreadable
        return 1


def _orientation_swaps_axes(image: Image.Image, header_only: bool = False) -> bool:
    return _orientation(image, header_only) in (5, 6, 7, 8)


def _display_name(source: Path | bytes, name: str | None) -> str:
    """How messages name the image: `name`, else the path, else "<upload>" for bytes."""
    return name or str(source if not isinstance(source, bytes) else "<upload>")


def _failure_kind(exc: Exception) -> str:
    """The ImageError kind of a Pillow failure: OSError saying "truncated" -> truncated_image; any
    other error of `PILLOW_ERRORS` -> unreadable_image."""
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
    except PILLOW_ERRORS as exc:
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
        size = image.size
        if decode:
            try:
                image.load()
            except PILLOW_ERRORS as exc:
                raise _decode_error(label, exc) from exc
        swaps = _orientation_swaps_axes(image, header_only=not decode)
        width, height = (size[1], size[0]) if swaps else size
    suffix = Path(label).suffix.lower()
    expected = _FORMAT_SUFFIXES.get(fmt)
    mismatch = bool(suffix) and expected is not None and suffix not in expected
    return ImageInfo(width=width, height=height, format=fmt, mode=mode, suffix_mismatch=mismatch)


# Reduction factors of a reduced-size decode: decoded side = ceil(side / s). JPEG's draft gives the
# first four; other formats may go further, up to a 1-pixel-wide side of the largest image allowed.
REDUCE_FACTORS: tuple[int, ...] = tuple(2**k for k in range(15))
# Pixels converted per step (about 1 MP, a few MB): the strip copies stay small whatever the photo.
_STRIP_PIXELS = 1 << 20
_WHITE = (255, 255, 255)
# EXIF orientation -> the transposition that shows the photo upright, and which stored axes (x, y) run
# backwards once it is applied (their partial reduction block must come first in the file's order).
_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, (True, False)),
    3: (Image.Transpose.ROTATE_180, (True, True)),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, (False, True)),
    5: (Image.Transpose.TRANSPOSE, (False, False)),
    6: (Image.Transpose.ROTATE_270, (False, True)),
    7: (Image.Transpose.TRANSVERSE, (True, True)),
    8: (Image.Transpose.ROTATE_90, (True, False)),
}


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)


def _rgb_part(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """The pixels in `box` as RGB, alpha composited on white (the alpha band is the paste mask:
    the same values as `Image.alpha_composite` over opaque white)."""
    part = image.crop(box)
    if _has_alpha(image):
        rgba = part if part.mode == "RGBA" else part.convert("RGBA")
        white = Image.new("RGB", part.size, _WHITE)
        white.paste(rgba, (0, 0), rgba)
        return white
    return part if part.mode == "RGB" else part.convert("RGB")


def _pieces(length: int, factor: int, step: int, backwards: bool) -> list[tuple[int, int]]:
    """[start, end) spans of one axis, each whole blocks of `factor` pixels and at most `step` long
    (a multiple of factor). The partial block (length % factor) ends the axis, or starts it when the
    axis runs backwards once the photo is shown upright, so that there it ends up last too."""
    partial = length % factor if backwards else 0
    spans = [(0, partial)] if partial else []
    return spans + [(start, min(start + step, length)) for start in range(partial, length, step)]


def _upright_rgb(image: Image.Image, factor: int = 1) -> Image.Image:
    """A decoded image as carid uses it: EXIF orientation applied, alpha composited on white, RGB,
    each side reduced to ceil(side / factor) by averaging factor x factor blocks (`REDUCE_FACTORS`).

    Works a strip of rows at a time: apart from `image` (returned itself when it is upright RGB and
    not reduced) only the result and strips of about `_STRIP_PIXELS` pixels are held.
    """
    image.load()
    orientation = _orientation(image)
    transpose, (backwards_x, backwards_y) = _TRANSPOSE.get(orientation, (None, (False, False)))
    rgb = image
    if image.mode != "RGB" or factor > 1:
        width, height = image.size
        rows = max(factor, _STRIP_PIXELS // max(width, 1) // factor * factor)
        rgb = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
        top = 0
        for y0, y1 in _pieces(height, factor, rows, backwards_y):
            left = 0
            for x0, x1 in _pieces(width, factor, width, backwards_x):
                box = (x0, y0, x1, y1)
                if image.mode == "RGB":
                    piece = image.reduce(factor, box=box)
                else:
                    piece = _rgb_part(image, box)
                    piece = piece.reduce(factor) if factor > 1 else piece
                rgb.paste(piece, (left, top))
                left += piece.width
            top += piece.height
    return rgb if transpose is None else rgb.transpose(transpose)


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as carid uses it: EXIF orientation applied, alpha composited on white, RGB.

    `image` is not changed; it is returned itself when it is an upright RGB image already.
    """
    return _upright_rgb(image)


def _reduction(size: tuple[int, int], min_side: int | None) -> int:
    """The largest factor of `REDUCE_FACTORS` that keeps the shorter side >= min_side (1 without it)."""
    fitting = [s for s in REDUCE_FACTORS if min_side and min(size) / s >= min_side]
    return max(fitting, default=1)


def decode_rgb(
    source: Path | bytes, name: str | None = None, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """(RGB image with EXIF orientation applied, the file's (width, height) after EXIF orientation).

    min_side: when given, decode at a reduced size (JPEG: 1/2, 1/4 or 1/8 by the decoder; other
    formats: blocks of 2^k pixels averaged, see the module docstring) as long as the shorter side
    stays >= min_side; `carid.preprocess.decode_scale(original_size, image.size)` maps coordinates.
    Alpha is composited on white; CMYK, palette, grey and 16-bit images are converted.
    Raises ImageError (kinds as `probe_image`).
    """
    label = _display_name(source, name)
    image = _open(source, label)
    try:
        width, height = image.size  # the file's, before a draft shrinks it
        factor = 1
        if min_side and image.format in ("JPEG", "MPO"):
            scale = min(width, height) / float(min_side)
            if scale >= 2:
                image.draft("RGB", (int(width / scale) + 1, int(height / scale) + 1))
        else:
            factor = _reduction((width, height), min_side)
        image.load()  # before the EXIF is read: Pillow's PNG reader may decode to find it
        original = (height, width) if _orientation_swaps_axes(image) else (width, height)
        return _upright_rgb(image, factor), original
    except PILLOW_ERRORS as exc:
        raise _decode_error(label, exc) from exc


def swap_red_blue(image: Image.Image) -> Image.Image:
    """The RGB image with its red and blue channels exchanged: repairs a BGR array saved as RGB."""
    red, green, blue = image.convert("RGB").split()
    return Image.merge("RGB", (blue, green, red))


def load_rgb(source: Path | bytes, name: str | None = None, min_side: int | None = None) -> Image.Image:
    """Decode to an RGB image with EXIF orientation applied (`decode_rgb` without the original size).

    min_side: when given, the image may be decoded at a reduced size whose shorter side stays
    >= min_side; callers that need original-pixel coordinates use `decode_rgb`, which also gives the
    original size, and map them with `carid.preprocess.decode_scale(original_size, decoded_size)`.
    Alpha is composited on white; CMYK, palette and grey images are converted.
    """
    return decode_rgb(source, name, min_side)[0]
