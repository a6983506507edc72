"""A photo made ready for the network: decoded and preprocessed exactly as training evaluated
(`prepare_image` -> `PreparedImage`), never raising for one bad image: the error names it.

`shape_problem(width, height)` says when a photo's shape is one the network input cannot show
faithfully (an aspect ratio beyond `MAX_ASPECT_RATIO` either way, a shorter side under `MIN_SIDE`
pixels): the predictor answers such a photo "unknown" with that sentence as the reason, however
sure the network is (issue 23: a 10 x 10000 sliver was called a Corvette at 0.98).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from carid.images import PILLOW_ERRORS, ImageError, to_rgb
from carid.preprocess import Geometry, PreprocessSpec, load_image, preprocess

ImageInput = str | Path | bytes | Image.Image

# The shapes of the photos the models learn from (long side / short side, measured on the files in
# shared/datasets): stanford-cars-crops (6,509 car crops) median 1.86, 99th percentile 3.27, widest
# 3.97:1, the tallest 1:1.79; car-frames 1.78:1; car-models-5 at most 2.76:1. Beyond 5:1 (a 25 %
# margin over the widest training crop) the letterboxed input is a thin band of a few pixels, and
# a stretched one squashes the photo more than training ever did: no car is named.
MAX_ASPECT_RATIO = 5.0
# The smallest training crop's shorter side is 35 px (1 % of them are under 69 px). Under 16 px,
# less than half that, a photo is blown up more than 14 times for a 224 px input: a blur, no car.
MIN_SIDE = 16


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the network: array float32 [3, H, W] and its Geometry, or an error."""

    name: str
    array: np.ndarray | None = field(default=None, repr=False)
    geometry: Geometry | None = None
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    error: str | None = None


def shape_problem(width: int, height: int) -> str | None:
    """Why a width x height photo (after EXIF orientation) cannot be shown to the network
    faithfully, in a sentence; None when it can (see MAX_ASPECT_RATIO and MIN_SIDE)."""
    short, long = sorted((int(width), int(height)))
    ratio = long / max(short, 1)
    if ratio > MAX_ASPECT_RATIO:
        shown = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2f}"
        return (
            f"the photo is {width}x{height} px, an aspect ratio of {shown}:1; beyond "
            f"{MAX_ASPECT_RATIO:g}:1 the network cannot see it faithfully, so no car is named"
        )
    if short < MIN_SIDE:
        return (
            f"the photo is {width}x{height} px: its shorter side, {short} px, is under {MIN_SIDE} px, "
            "too small for the network to see a car, so no car is named"
        )
    return None


def source_name(image: object, index: int) -> str:
    """How an input is named in results and errors: the path, a PIL image's file name, or "<image i>"."""
    if isinstance(image, str | Path):
        return str(image)
    filename = getattr(image, "filename", None)
    if isinstance(image, Image.Image) and isinstance(filename, str) and filename:
        return filename
    return f"<image {index}>"


def prepare_image(image: ImageInput, spec: PreprocessSpec, name: str) -> PreparedImage:
    """Decode and preprocess one input exactly as the network's training evaluation did.

    Never raises for a bad image: the returned `error` names the image and the problem.
    """
    started = time.perf_counter()
    try:
        if isinstance(image, Image.Image):
            rgb, original_size = to_rgb(image), None
        elif isinstance(image, str | Path | bytes | bytearray | memoryview):
            source = Path(image) if isinstance(image, str | Path) else bytes(image)
            decoded = load_image(source, spec, name=name)
            rgb, original_size = decoded.image, decoded.original_size
        else:
            return PreparedImage(
                name,
                error=f"{name}: unsupported input {type(image).__name__} (give a path, bytes or a PIL image)",
            )
        decoded_at = time.perf_counter()
        array, geometry = preprocess(rgb, spec, original_size=original_size)
    except ImageError as exc:
        return PreparedImage(name, error=str(exc), decode_ms=_ms_since(started))
    except PILLOW_ERRORS as exc:  # Pillow's errors on odd in-memory images
        return PreparedImage(
            name, error=f"{name}: cannot use this image ({exc})", decode_ms=_ms_since(started)
        )
    return PreparedImage(
        name=name,
        array=array,
        geometry=geometry,
        decode_ms=(decoded_at - started) * 1000.0,
        preprocess_ms=_ms_since(decoded_at),
    )


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
