"""Fitting an ensemble's weights on validation scores, and scoring an ensemble like one model.

W [M, C] is non-negative and each column sums to 1 (a convex combination per class). Three modes:

- "mean": W[m, c] = 1 / M, plain probability averaging. Needs no data.
- "weighted": one weight per member, W[m, c] = w_m, w on the simplex minimising the validation
  negative log-likelihood of the mixture, -mean_n log sum_m w_m p_m[n, y_n]. That NLL is convex in
  w, and the EM update for the mixing proportions of fixed components,
  w_m <- mean_n [w_m p_m[n, y_n] / sum_k w_k p_k[n, y_n]] (Dempster, Laird & Rubin 1977), never
  increases it, stays on the simplex without a projection and needs no step size or line search:
  for a few members and a few thousand images it converges in milliseconds. Hand-written (no scipy).
- "expert": per-class expert weighting. W[m, c] = (F1_m(c) + s) / sum_k (F1_k(c) + s), where
  F1_m(c) is member m's F1 score on class c on the validation data (from its top-1 answers) and
  s = EXPERT_SMOOTHING: on column c, the member that recognises class c best has the most say (the
  body-type study found the 100 px model better on coupes and trucks, the 75 px one on sedans and
  SUVs). F1 rather than recall: a member that calls every photo a truck has recall 1 on trucks, but
  its low precision there gives it a low F1. The smoothing keeps every weight above 0 and gives equal
  weights to a class no member gets right (or that the validation data lacks). Since the columns
  are weighted differently, q is renormalised over the classes.

The ensemble's temperature is fitted on the validation data after the weights (`fit_temperature`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carid.artifacts.ensemble import BOX_MODES, MODES
from carid.evaluation.metrics import confusion_matrix, per_class_metrics
from carid.runtime.ensemble import PROBABILITY_FLOOR

EXPERT_SMOOTHING = 0.01  # s in W[m, c] = (F1_m(c) + s) / sum_k (F1_k(c) + s)


EM_MAX_ITERATIONS = 2000


EM_TOLERANCE = 1e-10  # EM stops when the validation NLL falls by less than this (nats)


def _labeled_likelihoods(member_probabilities: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities float64 [M, N, C], labels int64 [N]) checked; ValueError when nothing is labeled."""
    probabilities = np.asarray(member_probabilities, dtype=np.float64)
    if probabilities.ndim != 3:
        raise ValueError(f"member probabilities must have shape [M, N, C], got {list(probabilities.shape)}")
    truth = np.asarray(labels, dtype=np.int64)
    if truth.shape != (probabilities.shape[1],):
        raise ValueError(f"labels must have shape [{probabilities.shape[1]}], got {list(truth.shape)}")
    if (truth >= probabilities.shape[2]).any():
        raise ValueError(f"labels must be class indices below {probabilities.shape[2]} (or -1)")
    if not (truth >= 0).any():
        raise ValueError("no labeled samples to fit ensemble weights on: every label is -1")
    return probabilities, truth


@dataclass(frozen=True, eq=False)
class MixtureFit:
    """Member weights float64 [M] on the simplex minimising the NLL of the mixture (EM), the NLL
    (nats, mean over the labeled samples) at the start (equal weights) and at the end."""

    weights: np.ndarray
    nll: float
    start_nll: float
    iterations: int
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": [float(w) for w in self.weights],
            "nll": self.nll,
            "start_nll": self.start_nll,
            "iterations": self.iterations,
            "converged": self.converged,
        }


def fit_mixture_weights(
    member_probabilities: object,
    labels: object,
    max_iterations: int = EM_MAX_ITERATIONS,
    tolerance: float = EM_TOLERANCE,
) -> MixtureFit:
    """The "weighted" mode: w on the simplex minimising -mean_n log sum_m w_m p_m[n, y_n] by EM.

    member_probabilities: [M, N, C]; labels: [N] class indices, -1 ignored. Starts from equal
    weights; stops when an EM step lowers the NLL by less than `tolerance`.
    """
    probabilities, truth = _labeled_likelihoods(member_probabilities, labels)
    rows = np.flatnonzero(truth >= 0)
    likelihood = np.maximum(probabilities[:, rows, truth[rows]], PROBABILITY_FLOOR)  # [M, N']
    num_members = len(likelihood)
    weights = np.full(num_members, 1.0 / num_members)
    mixture = weights @ likelihood
    nll = start = float(-np.log(mixture).mean())
    for iteration in range(1, max_iterations + 1):
        weights = (weights[:, None] * likelihood / mixture).mean(axis=1)
        weights /= weights.sum()
        mixture = weights @ likelihood
        new_nll = float(-np.log(mixture).mean())
        improvement, nll = nll - new_nll, new_nll
        if improvement < tolerance:
            return MixtureFit(weights, nll, start, iteration, True)
    return MixtureFit(weights, nll, start, max_iterations, False)


def member_f1(probabilities: object, labels: object) -> np.ndarray:
    """Per-class F1 float64 [C] of one model's top-1 answers (`metrics.per_class_metrics`)."""
    values = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels, dtype=np.int64)
    keep = truth >= 0
    num_classes = values.shape[1]
    confusion = confusion_matrix(truth[keep], values[keep].argmax(axis=1), num_classes)
    per_class, _, _ = per_class_metrics(confusion, [str(i) for i in range(num_classes)])
    return np.array([metrics.f1 for metrics in per_class], dtype=np.float64)


def expert_weights(
    member_probabilities: object, labels: object, smoothing: float = EXPERT_SMOOTHING
) -> tuple[np.ndarray, np.ndarray]:
    """The "expert" mode: (W float64 [M, C], F1 float64 [M, C]) with
    W[m, c] = (F1_m(c) + smoothing) / sum_k (F1_k(c) + smoothing); see the module docstring."""
    if not smoothing > 0:
        raise ValueError(f"smoothing must be > 0, got {smoothing}")
    probabilities, truth = _labeled_likelihoods(member_probabilities, labels)
    f1 = np.stack([member_f1(member, truth) for member in probabilities])
    scores = f1 + smoothing
    return scores / scores.sum(axis=0, keepdims=True), f1


def box_weights_for(
    with_box: Sequence[bool], box_mode: str = "mean", mean_iou: Sequence[float | None] | None = None
) -> np.ndarray:
    """Box weights float64 [M]: "mean" = equal for the members with a box head, "best" = 1 for the
    one with the highest `mean_iou` (needs those). All zero when no member has a box head."""
    if box_mode not in BOX_MODES:
        raise ValueError(f"box mode {box_mode!r} is not one of {', '.join(BOX_MODES)}")
    flags = np.asarray(with_box, dtype=bool)
    weights = np.zeros(len(flags), dtype=np.float64)
    if not flags.any():
        return weights
    if box_mode == "mean":
        weights[flags] = 1.0 / flags.sum()
        return weights
    scores = [
        -math.inf if not flag or iou is None or not math.isfinite(iou) else float(iou)
        for flag, iou in zip(flags, mean_iou or [None] * len(flags), strict=True)
    ]
    if max(scores) == -math.inf:
        raise ValueError("box mode 'best' needs each box member's mean IoU on data with true boxes")
    weights[int(np.argmax(scores))] = 1.0
    return weights


@dataclass(frozen=True, eq=False)
class EnsembleFit:
    """The weights of one mode and how they were found.

    weights: float64 [M] ("mean", "weighted") or [M, C] ("expert"); box_weights: float64 [M].
    method: one sentence for the record; details: the numbers of the fit (NLL, iterations, F1).
    """

    mode: str
    weights: np.ndarray
    box_mode: str
    box_weights: np.ndarray
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "weights": self.weights.tolist(),
            "box_mode": self.box_mode,
            "box_weights": self.box_weights.tolist(),
            "method": self.method,
            "details": self.details,
        }


def fit_ensemble(
    mode: str,
    member_probabilities: object | None,
    labels: object | None,
    with_box: Sequence[bool],
    box_mode: str = "mean",
    member_iou: Sequence[float | None] | None = None,
) -> EnsembleFit:
    """Weights of `mode` from the members' probabilities [M, N, C] and labels [N] on the fit data
    (both may be None for "mean" with box_mode "mean")."""
    if mode not in MODES:
        raise ValueError(f"ensemble mode {mode!r} is not one of {', '.join(MODES)}")
    num_members = len(with_box)
    boxes = box_weights_for(with_box, box_mode, member_iou)
    if mode == "mean":
        return EnsembleFit(
            mode, np.full(num_members, 1.0 / num_members), box_mode, boxes, "equal weights (no fit)"
        )
    if member_probabilities is None or labels is None:
        raise ValueError(f"ensemble mode {mode!r} needs the members' probabilities and labels to fit on")
    if mode == "weighted":
        mixture = fit_mixture_weights(member_probabilities, labels)
        method = (
            "member weights on the simplex minimising the validation NLL of the averaged "
            f"probabilities (EM, {mixture.iterations} iterations)"
        )
        return EnsembleFit(mode, mixture.weights, box_mode, boxes, method, mixture.to_dict())
    weights, f1 = expert_weights(member_probabilities, labels)
    method = (
        "per-class weights proportional to each member's validation F1 on the class "
        f"(+{EXPERT_SMOOTHING} smoothing), normalised per class"
    )
    return EnsembleFit(mode, weights, box_mode, boxes, method, {"member_f1": f1.tolist()})
