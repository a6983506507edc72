"""Applying a fitted calibration to a model's outputs: the temperature and the "unknown" threshold.

`apply_temperature` turns logits into calibrated probabilities; `apply_unknown` answers "unknown"
(`UNKNOWN_INDEX`) where the top-1 probability is below the threshold. Both are plain NumPy, used by
the predictor on the slim install; fitting them on validation predictions is
`carid.evaluation.calibration`'s job. `export_calibration` reads the calibration a run's export
holds, for predicting from that run's checkpoint with the same answers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from carid.artifacts.bundle import METADATA_FILE, Bundle, BundleError
from carid.runtime.backends import file_sha256

log = logging.getLogger(__name__)

UNKNOWN_INDEX = -1  # the class index `apply_unknown` gives an image answered "unknown"


def as_threshold(threshold: object, name: str = "threshold") -> float:
    """A confidence threshold as a plain float in [0, 1]."""
    try:
        value = float(threshold)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def as_temperature(temperature: object) -> float:
    try:
        value = float(temperature)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be a positive finite number, got {value}")
    return value


def apply_temperature(logits: object, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, computed stably (max subtracted first).

    logits: [..., C], e.g. [N, C] or [C]. Returns probabilities of the same shape: float32 for
    float32 input, float64 otherwise. temperature 1 is the plain softmax.
    """
    value = as_temperature(temperature)
    array = np.asarray(logits)
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(f"logits must have a class axis last, got shape {list(array.shape)}")
    scaled = array.astype(np.float64) / value
    scaled -= scaled.max(axis=-1, keepdims=True)
    exponentials = np.exp(scaled)
    probabilities = exponentials / exponentials.sum(axis=-1, keepdims=True)
    return probabilities.astype(np.float32) if array.dtype == np.float32 else probabilities


def apply_unknown(probabilities: object, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, top-1 probabilities): argmax over the last axis, `UNKNOWN_INDEX` (-1) where
    the top-1 probability is below `threshold`.

    probabilities: [..., C], e.g. [N, C] -> (int64 [N], [N]). threshold: in [0, 1]; 0 never rejects.
    """
    value = as_threshold(threshold)
    array = np.asarray(probabilities)
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(f"probabilities must have a class axis last, got shape {list(array.shape)}")
    top_probability = array.max(axis=-1)
    indices = np.where(top_probability >= value, array.argmax(axis=-1), UNKNOWN_INDEX).astype(np.int64)
    return indices, top_probability


def export_calibration(export: Path, checkpoint: Path) -> dict[str, Any]:
    """Temperature and unknown threshold of the run's export, when it was made from this checkpoint."""
    if not (export / METADATA_FILE).is_file():
        return {}
    try:
        metadata = Bundle.load(export).metadata
    except BundleError as exc:
        log.warning("ignoring the run's export for calibration: %s", exc)
        return {}
    if metadata.source_sha256 != file_sha256(checkpoint):
        return {}
    return {"temperature": metadata.temperature, "unknown_threshold": metadata.unknown_threshold}
