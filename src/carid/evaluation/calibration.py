"""Temperature scaling and the "unknown" threshold, fitted on validation predictions.

- `fit_temperature(logits, labels)` finds the T > 0 that minimises the negative log-likelihood of
  softmax(logits / T) on validation samples (Guo et al. 2017, "On Calibration of Modern Neural
  Networks"); `apply_temperature` turns logits into calibrated probabilities.
- `choose_unknown_threshold(probabilities, labels, target_precision)` picks the smallest top-1
  probability at which the answers given reach a target precision; images below it are answered
  "unknown" by `apply_unknown`. Photos of things that are no known class (out-of-distribution
  samples) can be passed too: each one accepted counts as a wrong answer, which pushes the
  threshold up until such photos are mostly rejected.

The temperature and threshold are plain floats, stored in the model bundle JSON; the predictor
applies them with `carid.runtime.calibration` (`apply_temperature`, `apply_unknown`, re-used here),
so this module needs NumPy only (no torch, no scipy). The 1-D search is hand-written for that
reason: the NLL is convex in 1/T (a log-sum-exp minus a linear term), hence unimodal in log T, so
a golden-section search over log T in [0.05, 20] finds the minimum to any tolerance in a few dozen
evaluations, as scipy's bounded
`minimize_scalar` would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from carid.evaluation.metrics import as_labels, as_probabilities, as_score_matrix
from carid.runtime.calibration import (
    as_temperature,
    as_threshold,
)

TEMPERATURE_BOUNDS: tuple[float, float] = (0.05, 20.0)
LOG_TEMPERATURE_TOLERANCE = 1e-5  # golden-section stops when the log-T bracket is this narrow
_INVERSE_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def temperature_nll(logits: object, labels: object, temperature: float) -> float:
    """Mean negative log-likelihood (nats) of softmax(logits / temperature) over the labeled samples."""
    values = as_score_matrix(logits, "logits")
    truth = as_labels(labels, len(values), values.shape[1])
    labeled = truth >= 0
    if not labeled.any():
        raise ValueError("no labeled samples: every label is -1")
    return _nll(values[labeled], truth[labeled], as_temperature(temperature))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = logits / temperature
    top = scaled.max(axis=1)
    log_normaliser = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
    return float((log_normaliser - scaled[np.arange(len(labels)), labels]).mean())


def fit_temperature(
    logits: object, labels: object, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The temperature T in `bounds` that minimises the NLL of softmax(logits / T).

    logits: [N, C] validation logits (before softmax). labels: [N] class indices, -1 ignored.
    T > 1 softens over-confident predictions, T < 1 sharpens. When the NLL keeps falling towards a
    bound (e.g. every validation sample right with a wide margin), the bound is returned.
    """
    values = as_score_matrix(logits, "logits")
    truth = as_labels(labels, len(values), values.shape[1])
    labeled = truth >= 0
    if not labeled.any():
        raise ValueError("no labeled samples to fit a temperature on: every label is -1")
    low, high = (as_temperature(bound) for bound in bounds)
    if not low < high:
        raise ValueError(f"temperature bounds must be increasing, got {bounds}")
    values, truth = values[labeled], truth[labeled]

    def objective(log_temperature: float) -> float:
        return _nll(values, truth, math.exp(log_temperature))

    # Golden-section search on log T: keeps two interior points and drops the worse side each step.
    left, right = math.log(low), math.log(high)
    inner_left = right - _INVERSE_GOLDEN * (right - left)
    inner_right = left + _INVERSE_GOLDEN * (right - left)
    nll_left, nll_right = objective(inner_left), objective(inner_right)
    while right - left > LOG_TEMPERATURE_TOLERANCE:
        if nll_left <= nll_right:
            right, inner_right, nll_right = inner_right, inner_left, nll_left
            inner_left = right - _INVERSE_GOLDEN * (right - left)
            nll_left = objective(inner_left)
        else:
            left, inner_left, nll_left = inner_left, inner_right, nll_right
            inner_right = left + _INVERSE_GOLDEN * (right - left)
            nll_right = objective(inner_right)
    best = (left + right) / 2
    # The minimum may sit on a bound, where the bracket converges but never reaches it.
    candidates = {math.log(low): objective(math.log(low)), math.log(high): objective(math.log(high))}
    candidates[best] = objective(best)
    return float(math.exp(min(candidates, key=candidates.__getitem__)))


@dataclass(frozen=True)
class ThresholdChoice:
    """The unknown threshold chosen on validation data and what it gives there.

    threshold: answer when the top-1 probability >= threshold, else "unknown".
    precision: share of right answers among the answered samples (accepted OOD samples count wrong).
    coverage: share of the labeled (in-distribution) samples answered.
    ood_accepted: share of the out-of-distribution samples answered (None without OOD samples).
    achievable: whether the threshold reaches target_precision with coverage >= min_coverage; when
    not, the fields describe the best threshold found and `message` says why.
    """

    threshold: float
    precision: float
    coverage: float
    achievable: bool
    target_precision: float
    min_coverage: float
    num_labeled: int
    num_ood: int
    ood_accepted: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "precision": self.precision,
            "coverage": self.coverage,
            "achievable": self.achievable,
            "target_precision": self.target_precision,
            "min_coverage": self.min_coverage,
            "num_labeled": self.num_labeled,
            "num_ood": self.num_ood,
            "ood_accepted": self.ood_accepted,
            "message": self.message,
        }


def choose_unknown_threshold(
    probabilities: object,
    labels: object,
    target_precision: float,
    min_coverage: float = 0.0,
    ood_probabilities: object | None = None,
    keep_coverage: bool = False,
) -> ThresholdChoice:
    """The smallest top-1 probability threshold whose answers reach `target_precision`.

    probabilities: [N, C] validation softmax probabilities, after temperature scaling if the
    predictor applies it (the threshold must see the probabilities it will be applied to).
    labels: [N] class indices; -1 rows are unlabeled and ignored.
    ood_probabilities: [M, C] probabilities of images that are no known class; each one accepted
    (top-1 probability >= threshold) counts as a wrong answer.
    min_coverage: the least share of labeled samples that must still be answered.

    The candidates are the observed top-1 probabilities: threshold t answers every sample with
    confidence >= t. When every sample may be answered, the threshold is 0 (never "unknown").
    When no threshold reaches the target, `achievable` is False and the choice is the threshold
    with the highest precision (the lowest one on ties); when the target is reached only below
    `min_coverage`, it is the smallest threshold that reaches the target, also with `achievable`
    False. `message` explains either case.
    keep_coverage: a coverage a user accepts comes first: when the target precision needs answering
        fewer than `min_coverage` of the samples (or is out of reach), the threshold is instead the
        highest one that still answers `min_coverage` of them (the best precision at that coverage);
        `achievable` stays False and `message` says which precision that coverage costs.
    """
    if not 0.0 < float(target_precision) <= 1.0:
        raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
    target = float(target_precision)
    least_coverage = as_threshold(min_coverage, name="min_coverage")
    probs = as_probabilities(probabilities)
    num_classes = probs.shape[1]
    truth = as_labels(labels, len(probs), num_classes)
    labeled = truth >= 0
    if not labeled.any():
        raise ValueError("no labeled samples to choose a threshold on: every label is -1")
    confidence = probs[labeled].max(axis=1)
    correct = probs[labeled].argmax(axis=1) == truth[labeled]
    num_labeled = len(confidence)

    ood_confidence = np.zeros(0)
    if ood_probabilities is not None:
        ood = as_probabilities(ood_probabilities, name="ood_probabilities")
        if ood.shape[1] != num_classes:
            raise ValueError(
                f"ood_probabilities have {ood.shape[1]} columns but probabilities have {num_classes}"
            )
        ood_confidence = ood.max(axis=1)
    num_ood = len(ood_confidence)

    # Sort every sample by confidence, highest first; in-distribution samples carry their
    # correctness, OOD samples are wrong. Threshold = each distinct confidence in turn.
    all_confidence = np.concatenate([confidence, ood_confidence])
    all_correct = np.concatenate([correct, np.zeros(num_ood, dtype=bool)])
    is_labeled = np.concatenate([np.ones(num_labeled, dtype=bool), np.zeros(num_ood, dtype=bool)])
    order = np.argsort(-all_confidence, kind="stable")
    sorted_confidence = all_confidence[order]
    answered_right = np.cumsum(all_correct[order])
    answered_labeled = np.cumsum(is_labeled[order])
    answered = np.arange(1, len(order) + 1)
    # The last position of each run of equal confidences: a threshold answers whole runs.
    run_end = np.flatnonzero(np.append(sorted_confidence[1:] != sorted_confidence[:-1], True))
    thresholds = sorted_confidence[run_end]
    precision = answered_right[run_end] / answered[run_end]
    coverage = answered_labeled[run_end] / num_labeled
    ood_answered = answered[run_end] - answered_labeled[run_end]

    reaching = np.flatnonzero(precision >= target)
    if reaching.size:
        # Lowest threshold reaching the target = the largest answered set, so the best coverage.
        pick = int(reaching[-1])
        achievable = bool(coverage[pick] >= least_coverage)
        if achievable:
            message = (
                f"answering at top-1 probability >= {thresholds[pick]:.4g} gives precision "
                f"{precision[pick]:.4f} (target {target:.4f}) on {coverage[pick]:.1%} of validation images"
            )
        else:
            message = (
                f"precision {target:.4f} is reached only by answering {coverage[pick]:.1%} of validation "
                f"images (threshold {thresholds[pick]:.4g}), below min_coverage {least_coverage:.1%}"
            )
    else:
        pick = int(np.flatnonzero(precision == precision.max())[-1])
        achievable = False
        message = (
            f"no threshold reaches precision {target:.4f}; the best is {precision[pick]:.4f} at top-1 "
            f"probability >= {thresholds[pick]:.4g}, answering {coverage[pick]:.1%} of validation images"
        )
    if keep_coverage and not achievable and least_coverage > 0:
        pick = int(np.flatnonzero(coverage >= least_coverage)[0])
        message = (
            f"precision {target:.4f} would leave fewer than {least_coverage:.1%} of validation images "
            f"answered; keeping that coverage, answering at top-1 probability >= {thresholds[pick]:.4g} "
            f"gives precision {precision[pick]:.4f} on {coverage[pick]:.1%} of them"
        )
    answers_everything = pick == len(run_end) - 1
    return ThresholdChoice(
        threshold=0.0 if answers_everything else float(thresholds[pick]),
        precision=float(precision[pick]),
        coverage=float(coverage[pick]),
        achievable=achievable,
        target_precision=target,
        min_coverage=least_coverage,
        num_labeled=num_labeled,
        num_ood=num_ood,
        ood_accepted=float(ood_answered[pick] / num_ood) if num_ood else None,
        message=message,
    )
