"""Fitting a model's temperature and "unknown" threshold on its validation images (`fit_val_calibration`),
as `carid evaluate` reports it and `carid calibrate` stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from carid.evaluation.calibration import ThresholdChoice, choose_unknown_threshold, fit_temperature
from carid.evaluation.metrics import calibration_stats, rejection_stats
from carid.evaluation.scoring import EvaluationError
from carid.runtime.calibration import apply_temperature

DEFAULT_TARGET_PRECISION = 0.95  # the precision the "unknown" threshold aims for by default


@dataclass(frozen=True)
class CalibrationFit:
    """A temperature and an "unknown" threshold fitted on the validation split.

    temperature: T of softmax(logits / T) minimising the validation NLL.
    threshold: `choose_unknown_threshold` on the temperature-scaled validation probabilities.
    num_val: labeled validation images used. val_*: NLL (nats) and ECE before and after scaling.
    evaluated: on the evaluated split: ECE/NLL before and after, and the rejection stats of the
        threshold (None when calibration was fitted alone).
    """

    temperature: float
    threshold: ThresholdChoice
    num_val: int
    val_nll_before: float
    val_nll_after: float
    val_ece_before: float
    val_ece_after: float
    evaluated: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "unknown_threshold": self.threshold.threshold,
            "threshold": self.threshold.to_dict(),
            "num_val": self.num_val,
            "val_nll_before": self.val_nll_before,
            "val_nll_after": self.val_nll_after,
            "val_ece_before": self.val_ece_before,
            "val_ece_after": self.val_ece_after,
            "evaluated": self.evaluated,
        }


def fit_val_calibration(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    eval_logits: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    min_coverage: float = 0.0,
) -> CalibrationFit:
    """Fit T on the validation logits [N, C] / labels [N] (-1 ignored), choose the threshold for
    `target_precision` (keeping at least `min_coverage` of the images answered when that target
    would answer fewer: `choose_unknown_threshold(keep_coverage=True)`), and (optionally) measure
    both on the evaluated split's logits and labels."""
    labeled = val_labels >= 0
    if not labeled.any():
        raise EvaluationError("no labeled validation images the model knows: cannot fit a calibration")
    logits, labels = val_logits[labeled].astype(np.float64), val_labels[labeled]
    temperature = fit_temperature(logits, labels)
    before = calibration_stats(apply_temperature(logits, 1.0), labels)
    calibrated = apply_temperature(logits, temperature)
    after = calibration_stats(calibrated, labels)
    threshold = choose_unknown_threshold(
        calibrated, labels, target_precision, min_coverage=min_coverage, keep_coverage=min_coverage > 0
    )
    evaluated = None
    if eval_logits is not None and eval_labels is not None and (eval_labels >= 0).any():
        keep = eval_labels >= 0
        raw = apply_temperature(eval_logits[keep].astype(np.float64), 1.0)
        scaled = apply_temperature(eval_logits[keep].astype(np.float64), temperature)
        stats_before = calibration_stats(raw, eval_labels[keep])
        stats_after = calibration_stats(scaled, eval_labels[keep])
        evaluated = {
            "ece_before": stats_before.ece,
            "ece_after": stats_after.ece,
            "nll_before": stats_before.nll,
            "nll_after": stats_after.nll,
            "rejection": rejection_stats(scaled, eval_labels[keep], threshold.threshold).to_dict(),
        }
    return CalibrationFit(
        temperature=temperature,
        threshold=threshold,
        num_val=int(labeled.sum()),
        val_nll_before=before.nll,
        val_nll_after=after.nll,
        val_ece_before=before.ece,
        val_ece_after=after.ece,
        evaluated=evaluated,
    )
