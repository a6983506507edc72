"""The records `carid.evaluation.metrics` returns: per-class scores, averages, confused pairs, box,
calibration, taxonomy-level and rejection statistics, and the `EvaluationResult` that holds them
all. Frozen dataclasses; `to_dict()` is JSON-ready (what evaluation.json stores).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def _optional(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass(frozen=True)
class ClassMetrics:
    """Scores of one class. support: true samples of the class; predicted: samples predicted as it."""

    index: int
    name: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
            "predicted": self.predicted,
        }


@dataclass(frozen=True)
class AveragedMetrics:
    """Precision, recall and F1 averaged over the classes present in the labels (macro: equal
    weights; weighted: weights = support)."""

    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1}


@dataclass(frozen=True)
class ConfusedPair:
    """`count` samples of class `true_name` were predicted as `predicted_name`; `share` is that count
    over the true class's support."""

    true_index: int
    true_name: str
    predicted_index: int
    predicted_name: str
    count: int
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "true_index": self.true_index,
            "true_name": self.true_name,
            "predicted_index": self.predicted_index,
            "predicted_name": self.predicted_name,
            "count": self.count,
            "share": self.share,
        }


@dataclass(frozen=True)
class BoxStats:
    """IoU of predicted vs true boxes over the `count` samples that have a true box (labeled or not),
    and "correct and found": the share of the `labeled_count` labeled samples with a box whose class
    is right and whose IoU >= `FOUND_IOU`. Fields are None when there is nothing to average."""

    count: int
    mean_iou: float | None
    median_iou: float | None
    share_iou_50: float | None
    share_iou_75: float | None
    labeled_count: int
    correct_and_found: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_iou": self.mean_iou,
            "median_iou": self.median_iou,
            "share_iou_50": self.share_iou_50,
            "share_iou_75": self.share_iou_75,
            "labeled_count": self.labeled_count,
            "correct_and_found": self.correct_and_found,
        }


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin (lower, upper] of the reliability diagram: the mean top-1 probability
    (confidence) and the top-1 accuracy of its `count` samples (None when the bin is empty)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "count": self.count,
            "confidence": self.confidence,
            "accuracy": self.accuracy,
        }


@dataclass(frozen=True)
class CalibrationStats:
    """ece: sum over bins of (bin count / N) * |accuracy - confidence|, in [0, 1].
    nll: mean negative log-likelihood of the true class (nats). bins: `num_bins` equal-width bins."""

    num_bins: int
    ece: float
    nll: float
    bins: tuple[ReliabilityBin, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_bins": self.num_bins,
            "ece": self.ece,
            "nll": self.nll,
            "bins": [bin_.to_dict() for bin_ in self.bins],
        }


@dataclass(frozen=True)
class LevelAccuracy:
    """Accuracy at one taxonomy level: the argmax of the rolled-up probabilities against the true
    class's value at that level. num_values: distinct values at the level."""

    level: str
    accuracy: float
    num_values: int

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "accuracy": self.accuracy, "num_values": self.num_values}


@dataclass(frozen=True)
class RejectionStats:
    """Answering "unknown" when the top-1 probability is below `threshold`, over the labeled samples.

    coverage: share answered (top-1 probability >= threshold); rejected: 1 - coverage;
    answered_accuracy: top-1 accuracy on the answered samples (None when none is answered).
    """

    threshold: float
    num_labeled: int
    num_answered: int
    coverage: float
    rejected: float
    answered_accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "num_labeled": self.num_labeled,
            "num_answered": self.num_answered,
            "coverage": self.coverage,
            "rejected": self.rejected,
            "answered_accuracy": self.answered_accuracy,
        }


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Every score of one set of predictions; see the module docstring.

    top_k_accuracy: {k: accuracy} for each requested k <= num_classes.
    confusion: int64 [C, C], read-only; rows = true class, columns = predicted class.
    display_order: class indices in the order to show them (make, then name; or name).
    boxes: None when no boxes were given. taxonomy_levels: empty without a taxonomy.
    rejection: None when no unknown threshold was given.
    """

    num_samples: int
    num_labeled: int
    class_names: tuple[str, ...]
    top_k_accuracy: Mapping[int, float]
    per_class: tuple[ClassMetrics, ...]
    macro: AveragedMetrics
    weighted: AveragedMetrics
    confusion: np.ndarray
    confused_pairs: tuple[ConfusedPair, ...]
    display_order: tuple[int, ...]
    calibration: CalibrationStats
    boxes: BoxStats | None = None
    taxonomy_levels: tuple[LevelAccuracy, ...] = ()
    rejection: RejectionStats | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy over the labeled samples."""
        return self.top_k_accuracy[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "num_labeled": self.num_labeled,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "top_k_accuracy": {f"top{k}": value for k, value in self.top_k_accuracy.items()},
            "per_class": [metrics.to_dict() for metrics in self.per_class],
            "macro": self.macro.to_dict(),
            "weighted": self.weighted.to_dict(),
            "confusion": self.confusion.tolist(),
            "confused_pairs": [pair.to_dict() for pair in self.confused_pairs],
            "display_order": list(self.display_order),
            "calibration": self.calibration.to_dict(),
            "boxes": None if self.boxes is None else self.boxes.to_dict(),
            "taxonomy_levels": [level.to_dict() for level in self.taxonomy_levels],
            "rejection": None if self.rejection is None else self.rejection.to_dict(),
        }
