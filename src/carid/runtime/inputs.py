"""A photo made ready for the network: decoded and preprocessed exactly as training evaluated
(`prepare_image` -> `PreparedImage`), never raising for one bad image: the error names it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from carid.images import ImageError, to_rgb
from carid.preprocess import Geometry, PreprocessSpec, load_image, preprocess

ImageInput = str | Path | bytes | Image.Image


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the network: array float32 [3, H, W] and its Geometry, or an error."""

    name: str
    array: np.ndarray | None = field(default=None, repr=False)
    geometry: Geometry | None = None
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    error: str | None = None


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
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors on odd in-memory images
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
