"""Test-time augmentation (TTA): score each photo and its mirror image, and average the two.

    FlipBackend(backend).run(batch) = mean(backend.run(batch), unflip(backend.run(mirror(batch))))

`with_tta(backend, "hflip")` wraps any `InferenceBackend` (ONNX Runtime, torch, an ensemble's
member), so `carid predict`, `carid evaluate`, `carid serve` and the Python `Predictor` all apply
the same TTA to the same network input. What is averaged, per output:

* "logits": the raw class scores (the bundle's temperature is applied after, as without TTA);
* "box": normalized xyxy in the network input; the mirror's box is mirrored back first
  (x0, x1 -> 1 - x1, 1 - x0), so the mean is of two guesses at the same box. Because it is mirrored
  in the network input (after the resize or letterbox), this is exact for any resize mode;
* "embedding": the pooled features (used for enrolled classes).

A mirror image costs a second forward pass: TTA halves throughput. It helps when the model was
trained with horizontal flips (carid's default augmentation), so both views are in its training
distribution; whether it helps a given model is measured with `carid evaluate --tta hflip` on val.

Written by hand (about 40 lines) because the backends here are NumPy in, NumPy out (ONNX Runtime),
and the TTA libraries (ttach; timm has none) wrap torch modules and do not transform boxes.
"""

from __future__ import annotations

import numpy as np

from carid.artifacts.bundle import BOX
from carid.errors import CaridError

TTA_MODES: tuple[str, ...] = ("none", "hflip")


class TtaError(CaridError, ValueError):
    """An unknown TTA mode (the message names it and the known ones)."""


def check_mode(mode: str | None) -> str:
    """The mode, "none" for None; TtaError for anything not in TTA_MODES."""
    mode = "none" if mode is None else str(mode)
    if mode not in TTA_MODES:
        raise TtaError(f"test-time augmentation {mode!r} is not one of {', '.join(TTA_MODES)}")
    return mode


def mirror_boxes(boxes: np.ndarray) -> np.ndarray:
    """Normalized xyxy boxes [..., 4] of an image -> the same boxes in its left-right mirror."""
    boxes = np.asarray(boxes)
    mirrored = boxes.copy()
    mirrored[..., 0] = 1.0 - boxes[..., 2]
    mirrored[..., 2] = 1.0 - boxes[..., 0]
    return mirrored


class FlipBackend:
    """An `InferenceBackend` that runs its inner backend on the batch and on the batch mirrored
    left-right, and returns the mean of each output (boxes mirrored back first)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name: str = inner.name  # type: ignore[attr-defined]
        self.output_names: tuple[str, ...] = inner.output_names  # type: ignore[attr-defined]
        self.tta = "hflip"

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.asarray(batch, dtype=np.float32)
        plain = self.inner.run(batch)  # type: ignore[attr-defined]
        mirrored = self.inner.run(np.ascontiguousarray(batch[..., ::-1]))  # type: ignore[attr-defined]
        merged: dict[str, np.ndarray] = {}
        for name, value in plain.items():
            other = mirror_boxes(mirrored[name]) if name == BOX else mirrored[name]
            merged[name] = ((np.asarray(value, dtype=np.float64) + other) / 2.0).astype(np.float32)
        return merged

    def __getattr__(self, attribute: str) -> object:
        # Everything else (the torch backend's network, ONNX Runtime's session) is the inner one's.
        return getattr(self.inner, attribute)


def with_tta(backend: object, mode: str | None) -> object:
    """`backend` itself for "none" (or None), else wrapped for the mode; TtaError when unknown."""
    if check_mode(mode) == "none":
        return backend
    return FlipBackend(backend)


def tta_of(backend: object) -> str:
    """The TTA mode a backend applies ("none" when it is not wrapped)."""
    return str(getattr(backend, "tta", "none"))
