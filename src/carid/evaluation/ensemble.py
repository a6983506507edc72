"""Ensembles of exported bundles: combine the members' probabilities, fit the weights, ship as a bundle.

An ensemble is M exported bundles with the same class names (e.g. the 75 px and the 100 px
body-type models). Each member preprocesses the photo with its own `PreprocessSpec` and runs in its
own ONNX Runtime session; its probabilities p_m [N, C] (softmax(logits / T_m) with the member
bundle's own temperature, i.e. what that bundle alone would tell a user) are put in the ensemble's
class order by name and combined per class:

    q[n, c] = sum_m W[m, c] * p_m[n, c]          p[n, c] = q[n, c] / sum_c' q[n, c']

W [M, C] is non-negative and each column sums to 1 (a convex combination per class). Three modes:

- "mean": W[m, c] = 1 / M, plain probability averaging. Needs no data.
- "weighted": one weight per member, W[m, c] = w_m, w on the simplex minimising the validation
  negative log-likelihood of the mixture, -mean_n log sum_m w_m p_m[n, y_n]. That NLL is convex in
  w, and the EM update for the mixing proportions of fixed components,
  w_m <- mean_n [w_m p_m[n, y_n] / sum_k w_k p_k[n, y_n]] (Dempster, Laird & Rubin 1977), never
  increases it, stays on the simplex without a projection and needs no step size or line search:
  for a few members and a few thousand images it converges in milliseconds. Hand-written (no scipy)
  so that this module imports in the slim install.
- "expert": per-class expert weighting. W[m, c] = (F1_m(c) + s) / sum_k (F1_k(c) + s), where
  F1_m(c) is member m's F1 score on class c on the validation data (from its top-1 answers) and
  s = EXPERT_SMOOTHING: on column c, the member that recognises class c best has the most say (the
  body-type study found the 100 px model better on coupes and trucks, the 75 px one on sedans and
  SUVs). F1 rather than recall: a member that calls every photo a truck has recall 1 on trucks, but
  its low precision there gives it a low F1. The smoothing keeps every weight above 0 and gives equal
  weights to a class no member gets right (or that the validation data lacks). Since the columns
  are weighted differently, q is renormalised over the classes.

The ensemble's "logits" are log p (floored at PROBABILITY_FLOOR), so its temperature T (fitted on
the validation data after the weights, `fit_temperature`) gives softmax(log p / T) ~ p^(1/T), and
its "unknown" threshold works as for one bundle. Boxes: the members with a box head give each a
box in the pixels of the original photo (mapped back through that member's own preprocessing);
box_mode "mean" averages them, "best" takes the member with the best mean IoU on the fit data.

The ensemble folder is self-contained (copy it anywhere):

    ENSEMBLE/ensemble.json
    ENSEMBLE/members/<name>/model.json + model.onnx      copies of the member bundles

    ensemble.json = {
      "format": "carid.ensemble", "version": 1, "name": "body-75-100",
      "mode": "mean" | "weighted" | "expert",
      "members": [{"name": "body-75px", "path": "members/body-75px", "image_size": [75, 75],
                   "with_box": false, "source": "/runs/body-75px/export"}, ...],
      "weights": [M] | [M, C],              W above; [M] is the same weight for every class
      "box_mode": "mean" | "best", "box_weights": [M],
      "class_names": [...],                 the first member's, in its order
      "label_level": "class" | "make" | "body_type" | "year", "taxonomy": {...} | null,
      "temperature": 1.0, "unknown_threshold": null | 0.42,
      "fit": {...} | null,                  how the weights were fitted (split, images, method, NLL)
      "validation": {...} | null,           each member's and the ensemble's scores on the fit split
      "calibration": {...} | null,          the temperature / threshold fit
      "notes": [...], "created": "...", "versions": {"carid": ...}
    }

Using an ensemble like one model: `Predictor.load(ENSEMBLE)` returns an `EnsemblePredictor` (each
member on ONNX Runtime, no torch), so `carid predict` and `carid serve` accept it;
`open_score_source(ENSEMBLE)` returns an `EnsembleScoreSource`, so `carid evaluate` does too.

Also here: `build_ensemble` (members = bundle folders, or run folders with their RUN/export),
`evaluate_ensemble` (each member and the ensemble side by side) and `calibrate_model` (fit the
temperature and the unknown threshold of a bundle or an ensemble on validation data and store them
in its model.json / ensemble.json). The format, the combination and the predictor need NumPy and the
slim carid modules only; fitting and evaluating import the evaluation stack when called.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import numpy as np

from carid import __version__
from carid.artifacts.bundle import (
    BOX,
    ENSEMBLE_FILE,
    LOGITS,
    METADATA_FILE,
    Bundle,
    BundleError,
    BundleMetadata,
    read_folder_json,
    update_calibration,
)
from carid.data.samples import Problem, Sample
from carid.evaluation.calibration import (
    apply_temperature,
    choose_unknown_threshold,
    fit_temperature,
)
from carid.evaluation.metrics import (
    EvaluationResult,
    calibration_stats,
    confusion_matrix,
    evaluate_predictions,
    per_class_metrics,
)
from carid.evaluation.scoring import (
    BundleScoreSource,
    EvaluationError,
    Scores,
    align_labels,
    is_run_dir,
    open_score_source,
)
from carid.files import write_json
from carid.runtime.predictor import (
    RUN_CHECKPOINT,
    RUN_EXPORT_DIR,
    ImageInput,
    Predictor,
    PredictorError,
    PreparedImage,
    prepare_image,
)
from carid.taxonomy import LEVELS

if TYPE_CHECKING:
    from carid.data.samples import SampleTable
    from carid.evaluation.evaluate import CalibrationFit, EvaluationReport

log = logging.getLogger(__name__)

ENSEMBLE_FORMAT = "carid.ensemble"
ENSEMBLE_VERSION = 1
MEMBERS_DIR = "members"
MODES: tuple[str, ...] = ("mean", "weighted", "expert")
BOX_MODES: tuple[str, ...] = ("mean", "best")
PROBABILITY_FLOOR = 1e-12  # log(p) of the ensemble's "logits" is floored here (about -27.6)
EXPERT_SMOOTHING = 0.01  # s in W[m, c] = (F1_m(c) + s) / sum_k (F1_k(c) + s)
EM_MAX_ITERATIONS = 2000
EM_TOLERANCE = 1e-10  # EM stops when the validation NLL falls by less than this (nats)
DEFAULT_TARGET_PRECISION = 0.95  # `carid.evaluation.evaluate.DEFAULT_TARGET_PRECISION`
COMPARISON_FILES = ("comparison.json", "comparison.csv", "comparison.html")
_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_LISTED = 6


class EnsembleError(BundleError):
    """An ensemble that cannot be built or used; the message names the file (and field) and the problem."""


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_MAX_LISTED])
    return (shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")) or "none"


# ----------------------------------------------------------------------------------------------
# Combination math (pure NumPy)


def weight_matrix(weights: object, num_members: int, num_classes: int) -> np.ndarray:
    """Weights [M] (one per member) or [M, C] (per member and class) as float64 [M, C] whose columns
    sum to 1. ValueError for a wrong shape, a negative or non-finite weight, or an all-zero column."""
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim == 1:
        array = np.repeat(array[:, None], num_classes, axis=1)
    if array.shape != (num_members, num_classes):
        raise ValueError(
            f"weights must have shape [{num_members}] or [{num_members}, {num_classes}] "
            f"(members, classes), got {list(np.shape(weights))}"
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError("weights must be finite and >= 0")
    totals = array.sum(axis=0)
    if (totals <= 0).any():
        raise ValueError(f"the weights of class column {int(np.flatnonzero(totals <= 0)[0])} are all 0")
    return array / totals


def combine_probabilities(member_probabilities: object, weights: object) -> np.ndarray:
    """The ensemble's probabilities float64 [N, C] (rows sum to 1); see the module docstring.

    member_probabilities: [M, N, C], each member's probabilities in the ensemble's class order.
    weights: [M] or [M, C] (normalised per class column by `weight_matrix`).
    """
    probabilities = np.asarray(member_probabilities, dtype=np.float64)
    if probabilities.ndim != 3:
        raise ValueError(f"member probabilities must have shape [M, N, C], got {list(probabilities.shape)}")
    num_members, _, num_classes = probabilities.shape
    matrix = weight_matrix(weights, num_members, num_classes)
    combined = np.einsum("mc,mnc->nc", matrix, probabilities)
    totals = combined.sum(axis=1, keepdims=True)
    # A row sums to 0 only when no member gives any probability where it has weight: uniform then.
    uniform = np.full_like(combined, 1.0 / max(num_classes, 1))
    return np.divide(combined, totals, out=uniform, where=totals > 0)


def probabilities_to_logits(probabilities: object) -> np.ndarray:
    """log(max(p, PROBABILITY_FLOOR)), float64 [..., C]: "logits" whose softmax gives p back (up to the
    floor), so temperatures and thresholds apply to an ensemble as to one network."""
    return np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR))


def combine_boxes(member_boxes: Sequence[np.ndarray | None], box_weights: object) -> np.ndarray | None:
    """Weighted mean float64 [N, 4] of the members' boxes (absolute xyxy pixels of the same photos).

    Members without a box (None) or with weight 0 are left out and the other weights renormalised;
    None when no member is left. The mean of boxes clipped to a photo stays inside it.
    """
    weights = np.asarray(box_weights, dtype=np.float64)
    if weights.shape != (len(member_boxes),):
        raise ValueError(f"box weights must have shape [{len(member_boxes)}], got {list(weights.shape)}")
    used = [
        (float(weight), np.asarray(boxes, dtype=np.float64))
        for weight, boxes in zip(weights, member_boxes, strict=True)
        if boxes is not None and weight > 0
    ]
    if not used:
        return None
    total = sum(w for w, _ in used)
    return sum(w * b for w, b in used) / total  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Fitting the weights


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


# ----------------------------------------------------------------------------------------------
# Class names of the members


def class_columns(reference: Sequence[str], names: Sequence[str], member: str) -> np.ndarray:
    """Column indices int64 [C]: `member_probabilities[:, columns]` is in the `reference` order.

    Raises EnsembleError naming the member and the classes that differ when the names are not the
    same set (the order may differ).
    """
    reference_set, names_set = set(reference), set(names)
    if reference_set != names_set or len(names) != len(reference):
        missing = [name for name in reference if name not in names_set]
        extra = [name for name in names if name not in reference_set]
        raise EnsembleError(
            f"{member}: its {len(names)} classes differ from the ensemble's {len(reference)}: missing "
            f"{_few(missing)}; not in the ensemble {_few(extra)}. Ensemble members must predict the "
            "same class names (in any order)"
        )
    index = {name: position for position, name in enumerate(names)}
    return np.array([index[name] for name in reference], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# ensemble.json


@dataclass(frozen=True)
class EnsembleMember:
    """One member as ensemble.json lists it. path: relative to the ensemble folder (POSIX, inside it).
    image_size: (height, width) of its input. source: where the bundle was copied from."""

    name: str
    path: str
    image_size: tuple[int, int]
    with_box: bool
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "image_size": list(self.image_size),
            "with_box": self.with_box,
            "source": self.source,
        }


class _Fields:
    """Typed reads of ensemble.json fields; each failure is an EnsembleError naming file and field."""

    def __init__(self, source: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.data = data

    def fail(self, key: str, expected: str, value: Any = ...) -> EnsembleError:
        shown = self.data.get(key) if value is ... else value
        return EnsembleError(f"{self.source}: field {key!r} must be {expected}, got {shown!r}")

    def string(self, key: str, optional: bool = False) -> Any:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, "a non-empty string")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value not in choices:
            raise self.fail(key, f"one of {', '.join(choices)}")
        return str(value)

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(key, "an object or null")
        return dict(value)

    def number(self, key: str, default: float | None) -> float | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, "a finite number")
        return float(value)


def _check_member_path(text: str, source: str, name: str) -> str:
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in text:
        raise EnsembleError(
            f"{source}: member {name!r} has path {text!r}; member paths must be relative paths inside "
            f"the ensemble folder (e.g. '{MEMBERS_DIR}/{name}')"
        )
    return path.as_posix()


def _read_members(fields: _Fields) -> tuple[EnsembleMember, ...]:
    items = fields.data.get("members")
    if not isinstance(items, list) or not items:
        raise fields.fail("members", "a non-empty list of members")
    members: list[EnsembleMember] = []
    for position, item in enumerate(items):
        where = _Fields(f"{fields.source} member {position}", item if isinstance(item, Mapping) else {})
        if not isinstance(item, Mapping):
            raise fields.fail("members", "a list of objects", item)
        name = where.string("name")
        size = item.get("image_size")
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise where.fail("image_size", "[height, width] in pixels")
        with_box = item.get("with_box")
        if not isinstance(with_box, bool):
            raise where.fail("with_box", "true or false")
        members.append(
            EnsembleMember(
                name=name,
                path=_check_member_path(where.string("path"), fields.source, name),
                image_size=(int(size[0]), int(size[1])),
                with_box=with_box,
                source=where.string("source", optional=True),
            )
        )
    names = [member.name for member in members]
    if len(set(names)) != len(names):
        raise fields.fail("members", "members with distinct names", names)
    return tuple(members)


def _read_weights(fields: _Fields, num_members: int, num_classes: int) -> tuple[Any, ...]:
    value = fields.data.get("weights")
    try:
        array = np.asarray(value, dtype=np.float64)
        weight_matrix(array, num_members, num_classes)
    except (TypeError, ValueError) as exc:
        raise fields.fail(
            "weights", f"[{num_members}] or [{num_members}, {num_classes}] weights >= 0 ({exc})"
        ) from None
    return _as_tuple(array)


def _as_tuple(array: np.ndarray) -> tuple[Any, ...]:
    if array.ndim == 1:
        return tuple(float(v) for v in array)
    return tuple(tuple(float(v) for v in row) for row in array)


@dataclass(frozen=True)
class EnsembleMetadata:
    """The contents of ensemble.json (see the module docstring for each field)."""

    name: str
    mode: str
    members: tuple[EnsembleMember, ...]
    weights: tuple[Any, ...]
    class_names: tuple[str, ...]
    box_weights: tuple[float, ...]
    box_mode: str = "mean"
    label_level: str = "class"
    taxonomy: dict[str, Any] | None = None
    temperature: float = 1.0
    unknown_threshold: float | None = None
    fit: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    created: str | None = None
    versions: dict[str, str] = field(default_factory=lambda: {"carid": __version__})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def weight_matrix(self) -> np.ndarray:
        """W float64 [M, C], columns summing to 1."""
        return weight_matrix(np.asarray(self.weights, dtype=np.float64), len(self.members), self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": ENSEMBLE_FORMAT,
            "version": ENSEMBLE_VERSION,
            "name": self.name,
            "mode": self.mode,
            "members": [member.to_dict() for member in self.members],
            "weights": [list(row) if isinstance(row, tuple) else row for row in self.weights],
            "box_mode": self.box_mode,
            "box_weights": list(self.box_weights),
            "class_names": list(self.class_names),
            "label_level": self.label_level,
            "taxonomy": self.taxonomy,
            "temperature": self.temperature,
            "unknown_threshold": self.unknown_threshold,
            "fit": self.fit,
            "validation": self.validation,
            "calibration": self.calibration,
            "notes": list(self.notes),
            "created": self.created,
            "versions": self.versions,
        }
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = ENSEMBLE_FILE) -> EnsembleMetadata:
        """Validate ensemble.json contents; EnsembleError names `source` and the field."""
        if not isinstance(data, Mapping):
            raise EnsembleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != ENSEMBLE_FORMAT:
            raise EnsembleError(
                f"{source}: field 'format' is {data.get('format')!r}, expected {ENSEMBLE_FORMAT!r}"
            )
        if data.get("version") != ENSEMBLE_VERSION:
            raise EnsembleError(
                f"{source}: field 'version' is {data.get('version')!r}; this carid reads "
                f"version {ENSEMBLE_VERSION}"
            )
        fields = _Fields(source, data)
        members = _read_members(fields)
        class_names = data.get("class_names")
        if (
            not isinstance(class_names, list)
            or not class_names
            or not all(isinstance(name, str) and name for name in class_names)
        ):
            raise fields.fail("class_names", "a non-empty list of non-empty strings")
        if len(set(class_names)) != len(class_names):
            raise fields.fail("class_names", "distinct names", "repeated names")
        box_weights = data.get("box_weights")
        try:
            boxes = np.asarray(box_weights, dtype=np.float64)
            valid = boxes.shape == (len(members),) and np.isfinite(boxes).all() and (boxes >= 0).all()
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise fields.fail("box_weights", f"{len(members)} numbers >= 0")
        temperature = fields.number("temperature", 1.0)
        if temperature is None or not temperature > 0:
            raise fields.fail("temperature", "a positive number")
        threshold = fields.number("unknown_threshold", None)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise fields.fail("unknown_threshold", "a number in [0, 1] or null")
        notes = data.get("notes") or []
        if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
            raise fields.fail("notes", "a list of strings")
        versions = fields.mapping("versions") or {}
        return cls(
            name=fields.string("name"),
            mode=fields.choice("mode", MODES),
            members=members,
            weights=_read_weights(fields, len(members), len(class_names)),
            class_names=tuple(class_names),
            box_weights=tuple(float(v) for v in boxes),
            box_mode=fields.choice("box_mode", BOX_MODES, default="mean"),
            label_level=fields.choice("label_level", LEVELS, default="class"),
            taxonomy=fields.mapping("taxonomy"),
            temperature=temperature,
            unknown_threshold=threshold,
            fit=fields.mapping("fit"),
            validation=fields.mapping("validation"),
            calibration=fields.mapping("calibration"),
            notes=tuple(notes),
            created=fields.string("created", optional=True),
            versions={str(key): str(value) for key, value in versions.items()},
        )


@dataclass(frozen=True, eq=False)
class Ensemble:
    """An ensemble folder: its metadata, its member bundles (loaded and checked) and, per member,
    the columns that put its probabilities in the ensemble's class order (int64 [C])."""

    path: Path
    metadata: EnsembleMetadata
    bundles: tuple[Bundle, ...]
    columns: tuple[np.ndarray, ...]

    @property
    def metadata_path(self) -> Path:
        return self.path / ENSEMBLE_FILE

    @property
    def with_box(self) -> bool:
        """Some member with a box head has a box weight."""
        return any(
            bundle.metadata.with_box and weight > 0
            for bundle, weight in zip(self.bundles, self.metadata.box_weights, strict=True)
        )

    def member_path(self, index: int) -> Path:
        return self.path / self.metadata.members[index].path

    @classmethod
    def load(cls, path: Path | str) -> Ensemble:
        """Read an ensemble folder (or its ensemble.json) and its member bundles.

        Raises EnsembleError naming the file (and field or member) and the problem: a member
        folder missing or not a bundle, member classes that differ from the ensemble's, ...
        """
        path = Path(path)
        folder = path.parent if path.name == ENSEMBLE_FILE else path
        metadata_path, data = read_folder_json(path, folder, ENSEMBLE_FILE, "carid ensemble", EnsembleError)
        metadata = EnsembleMetadata.from_dict(data, source=str(metadata_path))
        bundles, columns = [], []
        for member in metadata.members:
            where = f"{metadata_path}: member {member.name!r} ({member.path})"
            try:
                bundle = Bundle.load(folder / member.path)
            except BundleError as exc:
                raise EnsembleError(f"{where}: {exc}") from None
            columns.append(class_columns(metadata.class_names, bundle.metadata.class_names, where))
            if bundle.metadata.label_level != metadata.label_level:
                raise EnsembleError(
                    f"{where}: its classes are at level {bundle.metadata.label_level!r}, the ensemble's "
                    f"at {metadata.label_level!r}"
                )
            bundles.append(bundle)
        if bundles[0].metadata.class_names != metadata.class_names:
            raise EnsembleError(
                f"{metadata_path}: field 'class_names' must be the first member's class names in its order"
            )
        return cls(folder, metadata, tuple(bundles), tuple(columns))

    def predictor_metadata(self) -> BundleMetadata:
        """What `Predictor` needs of a bundle, for the ensemble: its classes, taxonomy, temperature
        and threshold; "preprocess" is the first member's (each member uses its own)."""
        meta = self.metadata
        first = self.bundles[0].metadata
        backbones = [
            f"{member.name} ({bundle.metadata.model_config.get('backbone') or '?'}, "
            f"{member.image_size[0]}x{member.image_size[1]})"
            for member, bundle in zip(meta.members, self.bundles, strict=True)
        ]
        with_box = self.with_box
        return BundleMetadata(
            class_names=meta.class_names,
            preprocess=dict(first.preprocess),
            with_box=with_box,
            label_level=meta.label_level,
            taxonomy=meta.taxonomy,
            temperature=meta.temperature,
            unknown_threshold=meta.unknown_threshold,
            output_names=(LOGITS, BOX) if with_box else (LOGITS,),
            embedding_dim=None,
            model_file=ENSEMBLE_FILE,
            model_config={"backbone": f"{meta.mode} ensemble of " + " + ".join(backbones)},
            versions=dict(meta.versions),
            created=meta.created,
            extra={"run_name": meta.name, "ensemble": self.describe()},
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: name, mode, members (name, input size, box head), weights."""
        meta = self.metadata
        return {
            "name": meta.name,
            "mode": meta.mode,
            "members": [member.to_dict() for member in meta.members],
            "weights": [list(row) if isinstance(row, tuple) else row for row in meta.weights],
            "box_mode": meta.box_mode,
            "box_weights": list(meta.box_weights),
            "temperature": meta.temperature,
            "unknown_threshold": meta.unknown_threshold,
        }


def is_ensemble_dir(path: Path | str) -> bool:
    """A folder with ensemble.json."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def write_ensemble_metadata(folder: Path | str, metadata: EnsembleMetadata) -> Path:
    """Write `folder/ensemble.json` atomically; returns its path."""
    path = Path(folder) / ENSEMBLE_FILE
    write_json(path, metadata.to_dict())
    return path


def update_ensemble_calibration(
    path: Path | str,
    temperature: float | None = None,
    unknown_threshold: float | EllipsisType | None = ...,
    calibration: dict[str, Any] | None = None,
) -> Ensemble:
    """Set an ensemble's temperature and/or unknown threshold (as `carid.artifacts.bundle.update_calibration`
    does for a bundle). temperature None keeps it; unknown_threshold ... keeps it, None removes it.
    calibration: the fit record to store beside them."""
    ensemble = Ensemble.load(path)
    changes: dict[str, Any] = {}
    if temperature is not None:
        changes["temperature"] = float(temperature)
    if unknown_threshold is not ...:
        changes["unknown_threshold"] = None if unknown_threshold is None else float(unknown_threshold)
    if calibration is not None:
        changes["calibration"] = calibration
    metadata = replace(ensemble.metadata, **changes)
    metadata = EnsembleMetadata.from_dict(metadata.to_dict(), source=f"{ensemble.metadata_path} (update)")
    write_ensemble_metadata(ensemble.path, metadata)
    return Ensemble.load(ensemble.path)


# ----------------------------------------------------------------------------------------------
# Predicting: an ensemble behind the `Predictor` interface


@dataclass(frozen=True)
class EnsemblePreparedImage(PreparedImage):
    """One input prepared for every member: `parts[m]` with member m's own preprocessing.
    geometry (original photo size) is the first member's; the times are the members' sums."""

    parts: tuple[PreparedImage, ...] = field(default=(), repr=False)


class EnsembleBackend:
    """The members seen as one backend by `Predictor`: names the outputs the ensemble gives.

    There is no single input batch for an ensemble (each member takes its own input size), so
    `run` refuses; `EnsemblePredictor` runs the members itself.
    """

    def __init__(self, members: Sequence[Predictor], with_box: bool) -> None:
        names = {member.backend.name for member in members}
        self.name = names.pop() if len(names) == 1 else "mixed"
        self.output_names = (LOGITS, BOX) if with_box else (LOGITS,)
        self.members = tuple(members)
        modes = {member.tta for member in members}
        self.tta = modes.pop() if len(modes) == 1 else "mixed"  # each member applies its own TTA

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise PredictorError(
            "an ensemble has no single input batch: each member takes its own input size; "
            "use Predictor.predict, which preprocesses each photo for every member"
        )


class EnsemblePredictor(Predictor):
    """A `Predictor` over an ensemble folder: each photo is prepared for every member with that
    member's spec, each member runs on its own backend, and the probabilities (and boxes) are
    combined with the ensemble's weights; temperature, threshold, top-k, taxonomy roll-up and the
    `Prediction` records are the base class's. `embed` is refused (no single embedding)."""

    def __init__(self, ensemble: Ensemble, members: Sequence[Predictor]) -> None:
        if len(members) != len(ensemble.bundles):
            raise ValueError(f"{len(members)} member predictors for {len(ensemble.bundles)} members")
        self.ensemble = ensemble
        self.members = tuple(members)
        self.weights = ensemble.metadata.weight_matrix()
        self.box_weights = np.asarray(ensemble.metadata.box_weights, dtype=np.float64)
        metadata = ensemble.predictor_metadata()
        super().__init__(EnsembleBackend(self.members, metadata.with_box), metadata, ensemble.path)

    @classmethod
    def load(
        cls,
        path: Path | str,
        backend: str = "auto",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        device: str = "cpu",
        tta: str = "none",
    ) -> EnsemblePredictor:
        """Load the ensemble folder and a `Predictor` per member (ONNX Runtime with "auto"); tta
        is each member's (`carid.runtime.tta`)."""
        ensemble = Ensemble.load(path)
        members = [
            Predictor.load(
                ensemble.member_path(index),
                backend,
                providers=providers,
                threads=threads,
                device=device,
                enrolled=False,  # an ensemble answers with its members' trained classes
                tta=tta,
            )
            for index in range(len(ensemble.bundles))
        ]
        return cls(ensemble, members)

    def _prepare(self, images: Sequence[ImageInput], names: Sequence[str]) -> list[PreparedImage]:
        prepared: list[PreparedImage] = []
        for image, name in zip(images, names, strict=True):
            parts: list[PreparedImage] = []
            for member in self.members:
                parts.append(prepare_image(image, member.spec, name))
                if parts[-1].error is not None:  # unreadable for one is unreadable for all
                    break
            prepared.append(
                EnsemblePreparedImage(
                    name=name,
                    geometry=parts[0].geometry,
                    decode_ms=sum(part.decode_ms for part in parts),
                    preprocess_ms=sum(part.preprocess_ms for part in parts),
                    error=parts[-1].error,
                    parts=tuple(parts),
                )
            )
        return prepared

    def _forward(self, prepared: Sequence[PreparedImage]) -> tuple[np.ndarray, np.ndarray | None]:
        items = [item for item in prepared if isinstance(item, EnsemblePreparedImage)]
        if len(items) != len(prepared):
            raise PredictorError("an ensemble runs only on images it prepared itself")
        member_probabilities = np.empty((len(self.members), len(items), self.metadata.num_classes))
        member_boxes: list[np.ndarray | None] = []
        for index, member in enumerate(self.members):
            logits, boxes = member._forward([item.parts[index] for item in items])
            probabilities = apply_temperature(logits, member.metadata.temperature)
            member_probabilities[index] = probabilities[:, self.ensemble.columns[index]]
            member_boxes.append(boxes)
        combined = combine_probabilities(member_probabilities, self.weights)
        boxes = combine_boxes(member_boxes, self.box_weights) if self.metadata.with_box else None
        return probabilities_to_logits(combined), boxes

    def embed(self, images: Any, batch_size: int = 16) -> np.ndarray:
        raise PredictorError(
            f"{self.source}: an ensemble has no single embedding; embed with one of its members "
            f"({self.source / MEMBERS_DIR if self.source else MEMBERS_DIR}/<name>)"
        )

    def warmup(self, batch_size: int = 1) -> float:
        """Warm every member up; returns the total milliseconds."""
        return sum(member.warmup(batch_size) for member in self.members)

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["image_size"] = None
        info["ensemble"] = {
            **self.ensemble.describe(),
            "member_backends": [member.backend.name for member in self.members],
        }
        return info


# ----------------------------------------------------------------------------------------------
# Scoring: an ensemble behind the `ScoreSource` protocol


def _in_class_order(scores: Scores, columns: np.ndarray) -> Scores:
    """A member's scores with the columns in the ensemble's class order."""
    return replace(scores, logits=scores.logits[:, columns], probabilities=scores.probabilities[:, columns])


def _merged_problems(member_scores: Sequence[Scores]) -> tuple[Problem, ...]:
    """The members' problems, one per image and kind (every member names an unreadable image)."""
    seen: set[tuple[str, str | None]] = set()
    problems: list[Problem] = []
    for scores in member_scores:
        for problem in scores.problems:
            if (problem.kind, problem.path) not in seen:
                seen.add((problem.kind, problem.path))
                problems.append(problem)
    return tuple(problems)


def combine_scores(
    member_scores: Sequence[Scores],
    weights: object,
    box_weights: object | None,
    temperature: float = 1.0,
) -> Scores:
    """The ensemble's `Scores` from its members' (same samples, columns in the ensemble's order).

    logits: float32 log of the combined probabilities; probabilities: softmax(logits / temperature);
    boxes: `combine_boxes` (None when box_weights is None); ok: scored by every member; problems:
    the members' (one per image and kind); seconds: their sum.
    """
    if not member_scores:
        raise ValueError("no member scores to combine")
    ok = np.logical_and.reduce([scores.ok for scores in member_scores])
    stacked = np.stack([scores.probabilities for scores in member_scores])
    logits = probabilities_to_logits(combine_probabilities(stacked, weights))
    logits[~ok] = 0.0
    boxes = None
    if box_weights is not None:
        boxes = combine_boxes([scores.boxes for scores in member_scores], box_weights)
    return Scores(
        logits=logits.astype(np.float32),
        probabilities=apply_temperature(logits, temperature),
        boxes=boxes,
        original_sizes=member_scores[0].original_sizes,
        ok=ok,
        problems=_merged_problems(member_scores),
        seconds=sum(scores.seconds for scores in member_scores),
    )


class EnsembleScoreSource:
    """An ensemble folder scored member by member (`BundleScoreSource`, each with its own
    preprocessing and backend) and combined with `combine_scores`; see the module docstring."""

    def __init__(
        self, path: Path | str, backend: str | None = None, batch_size: int = 32, tta: str = "none"
    ) -> None:
        try:
            self.ensemble = Ensemble.load(path)
        except BundleError as exc:
            raise EvaluationError(str(exc)) from exc
        metadata = self.ensemble.metadata
        self.path = self.ensemble.path
        self.members = tuple(
            BundleScoreSource(
                self.ensemble.member_path(index), backend=backend, batch_size=batch_size, tta=tta
            )
            for index in range(len(metadata.members))
        )
        self.name = metadata.name
        self.class_names = metadata.class_names
        self.label_level = metadata.label_level
        self.taxonomy = self.members[0].taxonomy  # the first member's classes, in the same order
        self.with_box = self.ensemble.with_box
        self.temperature = metadata.temperature
        self.weights = metadata.weight_matrix()
        self.box_weights = np.asarray(metadata.box_weights, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        metadata = self.ensemble.metadata
        members = ", ".join(
            f"{member.name} {member.image_size[0]}x{member.image_size[1]}" for member in metadata.members
        )
        return {
            "kind": "ensemble",
            "path": str(self.path),
            "name": self.name,
            "backbone": f"{metadata.mode} ensemble of {members}",
            "image_size": None,
            "resize_mode": None,
            "num_classes": len(self.class_names),
            "label_level": self.label_level,
            "with_box": self.with_box,
            "temperature": self.temperature,
            "unknown_threshold": metadata.unknown_threshold,
            "backend": self.members[0].backend,
            "tta": self.members[0].tta,
            "ensemble": self.ensemble.describe(),
            "members": [member.describe() for member in self.members],
        }

    def score_members(self, samples: Sequence[Sample], progress: bool = False) -> list[Scores]:
        """Each member's `Scores` on `samples`, columns in the ensemble's class order."""
        samples = list(samples)
        return [
            _in_class_order(member.score(samples, progress=progress), columns)
            for member, columns in zip(self.members, self.ensemble.columns, strict=True)
        ]

    def score(self, samples: Sequence[Sample], progress: bool = False) -> Scores:
        return combine_scores(
            self.score_members(samples, progress),
            self.weights,
            self.box_weights if self.with_box else None,
            self.temperature,
        )


# ----------------------------------------------------------------------------------------------
# Scores of one model on one split, side by side


@dataclass(frozen=True)
class ModelSummary:
    """Headline scores of one model (a member or an ensemble) on one split.

    accuracy / top5: top-1 / top-5 accuracy (top5 None with fewer than 5 classes); nll: mean
    negative log-likelihood (nats); ece: expected calibration error; mean_iou / iou_50: box IoU
    mean and share >= 0.5 (None without boxes); per_class_f1: {class name: F1}.
    """

    name: str
    kind: str
    num_labeled: int
    accuracy: float
    top5: float | None
    macro_f1: float
    nll: float
    ece: float
    mean_iou: float | None = None
    iou_50: float | None = None
    per_class_f1: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_result(cls, name: str, kind: str, result: EvaluationResult) -> ModelSummary:
        boxes = result.boxes
        return cls(
            name=name,
            kind=kind,
            num_labeled=result.num_labeled,
            accuracy=result.accuracy,
            top5=result.top_k_accuracy.get(5),
            macro_f1=result.macro.f1,
            nll=result.calibration.nll,
            ece=result.calibration.ece,
            mean_iou=None if boxes is None else boxes.mean_iou,
            iou_50=None if boxes is None else boxes.share_iou_50,
            per_class_f1={metrics.name: metrics.f1 for metrics in result.per_class},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "num_labeled": self.num_labeled,
            "accuracy": self.accuracy,
            "top5": self.top5,
            "macro_f1": self.macro_f1,
            "nll": self.nll,
            "ece": self.ece,
            "mean_iou": self.mean_iou,
            "iou_50": self.iou_50,
            "per_class_f1": self.per_class_f1,
        }


def summarize(
    name: str,
    kind: str,
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    pred_boxes: np.ndarray | None = None,
    true_boxes: np.ndarray | None = None,
    has_box: np.ndarray | None = None,
) -> ModelSummary:
    """`ModelSummary` of probabilities [N, C] against labels [N] (-1 ignored) and, with
    pred_boxes [N, 4], true_boxes [N, 4] (NaN rows: none) and has_box [N], the box IoU."""
    with_boxes = pred_boxes is not None and true_boxes is not None and has_box is not None and has_box.any()
    result = evaluate_predictions(
        probabilities,
        labels,
        class_names,
        pred_boxes=pred_boxes if with_boxes else None,
        true_boxes=true_boxes if with_boxes else None,
        has_box=has_box if with_boxes else None,
    )
    return ModelSummary.from_result(name, kind, result)


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "name"),
    ("kind", "kind"),
    ("images", "num_labeled"),
    ("accuracy", "accuracy"),
    ("top-5", "top5"),
    ("macro F1", "macro_f1"),
    ("NLL", "nll"),
    ("ECE", "ece"),
    ("mean IoU", "mean_iou"),
    ("IoU>=0.5", "iou_50"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def summary_rows(summaries: Sequence[ModelSummary]) -> list[list[str]]:
    """The side-by-side table as text cells, one row per model, columns `TABLE_COLUMNS`."""
    return [[_cell(getattr(summary, key)) for _, key in TABLE_COLUMNS] for summary in summaries]


def per_class_rows(summaries: Sequence[ModelSummary]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per class, the F1 of each model side by side."""
    header = ["class", *(summary.name for summary in summaries)]
    classes = list(summaries[0].per_class_f1) if summaries else []
    rows = [[name, *(_cell(summary.per_class_f1.get(name)) for summary in summaries)] for name in classes]
    return header, rows


def format_table(summaries: Sequence[ModelSummary], per_class: bool = False) -> str:
    """Plain-text table (aligned columns) of the summaries; with per_class, the per-class F1 too."""

    def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(text.ljust(width) for text, width in zip(header, widths, strict=True))]
        lines.append("  ".join("-" * width for width in widths))
        lines += [
            "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)) for row in rows
        ]
        return lines

    lines = render([title for title, _ in TABLE_COLUMNS], summary_rows(summaries))
    if per_class:
        header, rows = per_class_rows(summaries)
        lines += ["", "per-class F1:", *render(header, rows)]
    return "\n".join(lines)


def comparison_csv(summaries: Sequence[ModelSummary]) -> str:
    """CSV text: the `TABLE_COLUMNS` then one "f1:<class>" column per class."""
    import csv
    import io

    classes = list(summaries[0].per_class_f1) if summaries else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([key for _, key in TABLE_COLUMNS] + [f"f1:{name}" for name in classes])
    for summary in summaries:
        values = [getattr(summary, key) for _, key in TABLE_COLUMNS]
        writer.writerow(
            ["" if v is None else v for v in values]
            + [summary.per_class_f1.get(name, "") for name in classes]
        )
    return buffer.getvalue()


def _bold_best_in_columns(
    rows: Sequence[Sequence[str]], columns: Sequence[int], lower_is_better: Sequence[int] = ()
) -> list[list[str]]:
    """HTML-escaped cells; in each of `columns` the best number is bold (lowest in lower_is_better)."""
    marked = [[html.escape(text) for text in row] for row in rows]
    for column in columns:
        values = [_float_or_none(row[column]) for row in rows]
        numbers = [value for value in values if value is not None]
        if len(numbers) < 2:
            continue
        best = min(numbers) if column in lower_is_better else max(numbers)
        for row, value in zip(marked, values, strict=True):
            if value == best:
                row[column] = f"<b>{row[column]}</b>"
    return marked


def _bold_best_in_rows(rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """HTML-escaped cells; in each row the highest number after the first cell is bold."""
    marked = [[html.escape(text) for text in row] for row in rows]
    for row, raw in zip(marked, rows, strict=True):
        values = [_float_or_none(text) for text in raw[1:]]
        numbers = [value for value in values if value is not None]
        if len(numbers) < 2:
            continue
        for position, value in enumerate(values, start=1):
            if value == max(numbers):
                row[position] = f"<b>{row[position]}</b>"
    return marked


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(text)}</th>" for text in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_SCORE_KEYS = ("accuracy", "top5", "macro_f1", "nll", "ece", "mean_iou", "iou_50")
_LOWER_IS_BETTER = ("nll", "ece")
_PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
    "text-align:left}td{font-variant-numeric:tabular-nums}thead th{background:#f3f3f3}"
)


def comparison_html(title: str, summaries: Sequence[ModelSummary], facts: Sequence[tuple[str, str]]) -> str:
    """A small self-contained HTML page: facts, the side-by-side scores (the best of each column in
    bold) and the F1 of every class per model (the best per class in bold). All text is escaped."""
    keys = [key for _, key in TABLE_COLUMNS]
    headline = _bold_best_in_columns(
        summary_rows(summaries),
        [keys.index(key) for key in _SCORE_KEYS],
        [keys.index(key) for key in _LOWER_IS_BETTER],
    )
    class_header, class_rows = per_class_rows(summaries)
    fact_rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(text)}</td></tr>" for name, text in facts
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<table>{fact_rows}</table><h2>Scores (best in bold)</h2>"
        f"{_html_table([heading for heading, _ in TABLE_COLUMNS], headline)}"
        f"<h2>F1 per class</h2>{_html_table(class_header, _bold_best_in_rows(class_rows))}"
        f"<p><small>carid {html.escape(__version__)}, {generated}</small></p></body></html>\n"
    )


def _float_or_none(text: str) -> float | None:
    try:
        return float(text.replace("<b>", "").replace("</b>", ""))
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------
# Members: where their bundles are


@dataclass(frozen=True)
class MemberSource:
    """A member to be: its bundle, the run it was exported from (None when unknown) and its name."""

    bundle: Bundle
    run_dir: Path | None
    name: str


def bundle_run_dir(bundle: Bundle) -> Path | None:
    """The run folder a bundle comes from, when it is still there: the bundle is RUN/export, or its
    source checkpoint is RUN/checkpoints/*.ckpt."""
    if bundle.path.name == RUN_EXPORT_DIR and is_run_dir(bundle.path.parent):
        return bundle.path.parent.resolve()
    checkpoint = bundle.metadata.source_checkpoint
    if checkpoint:
        parent = Path(checkpoint).parent
        if parent.name == RUN_CHECKPOINT.parent.name and is_run_dir(parent.parent):
            return parent.parent.resolve()
    return None


def _safe_name(text: str) -> str:
    return _NAME_CHARACTERS.sub("-", text).strip("-.") or "member"


def resolve_member(path: Path | str) -> MemberSource:
    """A bundle folder (or its model.json / model.onnx) or a run folder with an export (RUN/export).

    Raises EnsembleError for a run without an export (export it first), a checkpoint, an ensemble
    or anything else, naming the path.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise EnsembleError(f"{path}: no such file or folder (expected a bundle folder or a run folder)")
    if path.is_file() and (path.name in (METADATA_FILE, ENSEMBLE_FILE) or path.suffix == ".onnx"):
        path = path.parent
    if path.is_dir() and (path / ENSEMBLE_FILE).is_file():
        raise EnsembleError(
            f"{path}: an ensemble cannot be a member of another ensemble; give its members "
            f"({path / MEMBERS_DIR}/*) instead"
        )
    run_dir: Path | None = None
    if path.is_dir() and (path / METADATA_FILE).is_file():
        folder = path
    elif path.is_dir() and ((path / RUN_CHECKPOINT).is_file() or is_run_dir(path)):
        folder = path / RUN_EXPORT_DIR
        if not (folder / METADATA_FILE).is_file():
            raise EnsembleError(
                f"{path}: the run has no export ({folder}); run `carid export {path}` first, then give "
                "the run folder (or its export folder) as a member"
            )
        run_dir = path.resolve()
    elif path.suffix == ".ckpt":
        raise EnsembleError(
            f"{path}: a checkpoint cannot be a member; export it first (`carid export {path}`) and "
            "give the bundle folder"
        )
    else:
        raise EnsembleError(
            f"{path}: not a model bundle (no {METADATA_FILE}) nor a run folder with an export "
            f"({RUN_EXPORT_DIR}/{METADATA_FILE})"
        )
    try:
        bundle = Bundle.load(folder)
    except BundleError as exc:
        raise EnsembleError(str(exc)) from None
    run_dir = run_dir or bundle_run_dir(bundle)
    name = bundle.metadata.extra.get("run_name") or (run_dir.name if run_dir else None)
    if not name:
        name = folder.resolve().parent.name if folder.name == RUN_EXPORT_DIR else folder.resolve().name
    return MemberSource(bundle=bundle, run_dir=run_dir, name=_safe_name(str(name)))


def unique_member_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def _data_name(data: object) -> str:
    """How to name evaluation data in records: its path, or "a SampleTable"."""
    return str(data) if isinstance(data, str | Path) else "a SampleTable"


def run_split_csv(run_dirs: Sequence[Path | None]) -> Path | None:
    """The split.csv of the first member run that has one (the images the members were split on)."""
    for run_dir in run_dirs:
        if run_dir is not None and (run_dir / "split.csv").is_file():
            return run_dir / "split.csv"
    return None


def default_data(ensemble: Ensemble) -> Path | None:
    """Evaluation data for an ensemble given no DATA: the split.csv of a member's run, if still there."""
    return run_split_csv([bundle_run_dir(bundle) for bundle in ensemble.bundles])


# ----------------------------------------------------------------------------------------------
# Building an ensemble


@dataclass(frozen=True, eq=False)
class FitData:
    """The fit split scored by every member: kept samples (read by all), labels int64 [N] (-1:
    unknown), member probabilities float64 [M, N, C] in the ensemble's class order, member boxes
    ([N, 4] pixels or None each), true boxes [N, 4] (NaN rows) and has_box [N]."""

    samples: tuple[Sample, ...]
    labels: np.ndarray
    probabilities: np.ndarray
    boxes: tuple[np.ndarray | None, ...]
    true_boxes: np.ndarray
    has_box: np.ndarray
    problems: tuple[Problem, ...]

    def member_iou(self) -> list[float | None]:
        """Mean IoU of each member's boxes over the samples with a true box (None: no box head)."""
        from carid.boxes import paired_iou

        values: list[float | None] = []
        for boxes in self.boxes:
            if boxes is None or not self.has_box.any():
                values.append(None)
            else:
                values.append(float(paired_iou(boxes[self.has_box], self.true_boxes[self.has_box]).mean()))
        return values


def score_fit_data(
    sources: Sequence[BundleScoreSource],
    columns: Sequence[np.ndarray],
    samples: Sequence[Sample],
    class_names: Sequence[str],
    label_level: str,
    progress: bool = False,
) -> FitData:
    """Score `samples` with each member source and align labels and true boxes (see `FitData`)."""
    from carid.evaluation.scoring import target_boxes

    samples = list(samples)
    member_scores = [
        _in_class_order(source.score(samples, progress=progress), column)
        for source, column in zip(sources, columns, strict=True)
    ]
    ok = np.logical_and.reduce([scores.ok for scores in member_scores])
    kept = tuple(sample for sample, good in zip(samples, ok, strict=True) if good)
    labels = align_labels(kept, class_names, label_level).labels
    sizes = member_scores[0].original_sizes[ok]
    true_boxes, has_box = target_boxes(kept, sizes)
    problems = _merged_problems(member_scores)
    return FitData(
        samples=kept,
        labels=labels,
        probabilities=np.stack([scores.probabilities[ok] for scores in member_scores]).astype(np.float64),
        boxes=tuple(None if scores.boxes is None else scores.boxes[ok] for scores in member_scores),
        true_boxes=true_boxes,
        has_box=has_box,
        problems=problems,
    )


def training_overlap_notes(
    samples: Sequence[Sample], members: Sequence[MemberSource], split: str
) -> list[str]:
    """A note per member run whose training images are among `samples` (fitting on them favours
    that member): read from the run's split.csv; a refit run (`train.fit_on_val`) trained on its
    val images too."""
    from carid.data.split import load_split
    from carid.evaluation.evaluate import load_run_config, trained_splits

    paths = {Path(sample.path).resolve() for sample in samples}
    notes = []
    for member in members:
        split_csv = None if member.run_dir is None else member.run_dir / "split.csv"
        if split_csv is None or not split_csv.is_file():
            continue
        try:
            table = load_split(split_csv)
        except (OSError, ValueError) as exc:
            notes.append(f"cannot check member {member.name}'s training images ({exc})")
            continue
        splits = trained_splits(load_run_config(member.run_dir))
        trained = {Path(s.path).resolve() for s in table.samples if s.split in splits}
        overlap = len(paths & trained)
        if overlap:
            notes.append(
                f"{overlap} of the {len(paths)} {split!r} images are training images of member "
                f"{member.name} ({split_csv}): fitted weights favour it; fit on images no member trained on"
            )
    return notes


@dataclass(frozen=True, eq=False)
class EnsembleBuild:
    """What `build_ensemble` made: the ensemble (loaded back), the fit, the scores on the fit split
    (members and ensemble; empty without fit data), notes and the duration."""

    ensemble: Ensemble
    fit: EnsembleFit
    validation: tuple[ModelSummary, ...]
    notes: tuple[str, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ensemble": str(self.ensemble.path),
            **self.ensemble.describe(),
            "fit": self.fit.to_dict(),
            "validation": [summary.to_dict() for summary in self.validation],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 2),
        }

    def summary_lines(self) -> list[str]:
        """A few lines for the terminal."""
        meta = self.ensemble.metadata
        lines = [
            f"ensemble {meta.name!r} ({meta.mode}, {len(meta.members)} members) in {self.ensemble.path}",
            f"  weights: {self.fit.method}",
        ]
        for member, weights in zip(meta.members, self.fit.weights, strict=True):
            shown = (
                f"{float(weights):.4f}"
                if np.ndim(weights) == 0
                else "per class " + " ".join(f"{w:.2f}" for w in weights)
            )
            lines.append(f"    {member.name}: {shown}")
        lines.append(
            f"  temperature {meta.temperature:.4f}, unknown threshold "
            f"{'none' if meta.unknown_threshold is None else f'{meta.unknown_threshold:.4f}'}"
        )
        if self.validation:
            split = (meta.fit or {}).get("split", "val")
            lines.append(f"  on the {split!r} split it was fitted on:")
            lines += ["    " + line for line in format_table(self.validation).splitlines()]
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def build_ensemble(
    members: Sequence[Path | str],
    out: Path | str,
    *,
    mode: str = "mean",
    data: Path | str | SampleTable | None = None,
    fit_on: str = "val",
    data_format: str | None = None,
    box_mode: str = "mean",
    calibrate: bool = True,
    target_precision: float | None = None,
    name: str | None = None,
    overwrite: bool = False,
    backend: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> EnsembleBuild:
    """Build an ensemble folder `out` from member bundles (or run folders with an export).

    mode: "mean", "weighted" or "expert" (module docstring). data / fit_on: the images the weights,
    the temperature and the threshold are fitted on: the `fit_on` split ("val") of `data` by the
    rules of `carid.evaluation.evaluate` (a split CSV, a dataset, a `SampleTable`); default: the
    split.csv of the first member run that has one. "mean" with box_mode "mean" needs no data (then
    without data nothing is fitted and no validation scores are recorded).
    calibrate: fit the ensemble's temperature on the fit data. target_precision: also choose the
    "unknown" threshold reaching it (default: none stored). overwrite: replace an existing ensemble
    folder. backend: of the members' predictors while fitting. say: progress lines.
    Raises EnsembleError (a ValueError) for anything the user can fix, naming the path or value.
    """
    from carid.evaluation.evaluate import SPLIT_CHOICES, load_evaluation_data, load_run_config

    started = time.perf_counter()
    tell = say or log.info
    if mode not in MODES:
        raise EnsembleError(f"ensemble mode {mode!r} is not one of {', '.join(MODES)}")
    if box_mode not in BOX_MODES:
        raise EnsembleError(f"box mode {box_mode!r} is not one of {', '.join(BOX_MODES)}")
    if fit_on not in SPLIT_CHOICES:
        raise EnsembleError(f"--fit-on {fit_on!r} is not one of {', '.join(SPLIT_CHOICES)}")
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise EnsembleError(f"target precision must be in (0, 1], got {target_precision}")
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not overwrite:
        raise EnsembleError(f"{out_dir} already exists; pass --force to replace it, or --out elsewhere")
    if out_dir.exists() and not is_ensemble_dir(out_dir) and any(out_dir.iterdir()):
        raise EnsembleError(f"{out_dir} exists and is not an ensemble folder; it is not replaced")

    sources = [resolve_member(member) for member in members]
    if len(sources) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got {len(sources)}")
    folders = [source.bundle.path.resolve() for source in sources]
    repeated = sorted({str(f) for f in folders if folders.count(f) > 1})
    if repeated:
        raise EnsembleError(f"the same bundle is given twice: {', '.join(repeated)}")
    if any(out_dir.resolve() in folder.parents for folder in folders):
        raise EnsembleError(f"{out_dir}: a member lives inside the ensemble folder being replaced")
    names = unique_member_names([source.name for source in sources])
    ensemble_name = _safe_name(name) if name else _safe_name(out_dir.resolve().name)
    reference = sources[0].bundle.metadata
    columns = [
        class_columns(reference.class_names, source.bundle.metadata.class_names, f"member {n} ({folder})")
        for source, n, folder in zip(sources, names, folders, strict=True)
    ]
    for source, member_name in zip(sources, names, strict=True):
        if source.bundle.metadata.label_level != reference.label_level:
            raise EnsembleError(
                f"member {member_name} ({source.bundle.path}) predicts "
                f"{source.bundle.metadata.label_level!r} classes, the first member {reference.label_level!r}"
            )
    with_box = [source.bundle.metadata.with_box for source in sources]

    run_dirs = [source.run_dir for source in sources]
    data_path = data if data is not None else run_split_csv(run_dirs)
    needs_data = mode != "mean" or (box_mode == "best" and any(with_box)) or target_precision is not None
    notes: list[str] = []
    fit_data: FitData | None = None
    fit_record: dict[str, Any] | None = None
    if data_path is None and needs_data:
        raise EnsembleError(
            f"mode {mode!r}"
            + (f" with box mode {box_mode!r}" if box_mode == "best" else "")
            + (" and a target precision" if target_precision is not None else "")
            + f" fits on the {fit_on!r} split of some data: give --data (a split CSV or a dataset), or "
            "members that are run folders (their split.csv is used)"
        )
    if data_path is None:
        notes.append("no data to fit on: equal weights, temperature 1, no validation scores recorded")
    else:
        run_dir = next((r for r in run_dirs if r is not None), None)
        evaluation_data = load_evaluation_data(
            data_path,
            fit_on,
            run_dir=run_dir,
            run_config=load_run_config(run_dir),
            data_format=data_format,
            progress=progress,
        )
        notes += training_overlap_notes(evaluation_data.samples, sources, fit_on)
        tell(f"scoring {len(evaluation_data.samples)} {fit_on!r} images with {len(sources)} members")
        member_sources = [
            BundleScoreSource(s.bundle.path, backend=backend, batch_size=batch_size) for s in sources
        ]
        fit_data = score_fit_data(
            member_sources,
            columns,
            evaluation_data.samples,
            reference.class_names,
            reference.label_level,
            progress,
        )
        labeled = int((fit_data.labels >= 0).sum())
        if not labeled:
            raise EnsembleError(
                f"none of the {len(evaluation_data.samples)} {fit_on!r} images of {data_path} has a label "
                f"the members know (classes: {_few(list(reference.class_names))})"
            )
        notes += [str(problem) for problem in fit_data.problems[:_MAX_LISTED]]
        fit_record = {
            "split": fit_on,
            "data": _data_name(data_path),
            "num_samples": len(fit_data.samples),
            "num_labeled": labeled,
            "unreadable": len(evaluation_data.samples) - len(fit_data.samples),
        }

    try:
        fit = fit_ensemble(
            mode,
            None if fit_data is None else fit_data.probabilities,
            None if fit_data is None else fit_data.labels,
            with_box,
            box_mode,
            None if fit_data is None else fit_data.member_iou(),
        )
    except ValueError as exc:
        raise EnsembleError(str(exc)) from None

    temperature, threshold, calibration = 1.0, None, None
    validation: list[ModelSummary] = []
    if fit_data is not None:
        labels = fit_data.labels
        keep = labels >= 0
        logits = probabilities_to_logits(combine_probabilities(fit_data.probabilities, fit.weights))
        if calibrate:
            temperature = fit_temperature(logits[keep], labels[keep])
        final = apply_temperature(logits, temperature)
        before, after = (
            calibration_stats(apply_temperature(logits[keep], 1.0), labels[keep]),
            calibration_stats(final[keep], labels[keep]),
        )
        choice = None
        if target_precision is not None:
            choice = choose_unknown_threshold(final, labels, target_precision)
            threshold = choice.threshold
        calibration = {
            "temperature": temperature,
            "fitted": calibrate,
            "nll_before": before.nll,
            "nll_after": after.nll,
            "ece_before": before.ece,
            "ece_after": after.ece,
            "threshold": None if choice is None else choice.to_dict(),
        }
        box_pred = combine_boxes(list(fit_data.boxes), fit.box_weights)
        for member_name, index in zip(names, range(len(sources)), strict=True):
            validation.append(
                summarize(
                    member_name,
                    "member",
                    fit_data.probabilities[index],
                    labels,
                    reference.class_names,
                    fit_data.boxes[index],
                    fit_data.true_boxes,
                    fit_data.has_box,
                )
            )
        validation.append(
            summarize(
                ensemble_name,
                f"ensemble ({mode})",
                final,
                labels,
                reference.class_names,
                box_pred,
                fit_data.true_boxes,
                fit_data.has_box,
            )
        )
        assert fit_record is not None
        fit_record.update({"method": fit.method, "details": fit.details})

    metadata = EnsembleMetadata(
        name=ensemble_name,
        mode=mode,
        members=tuple(
            EnsembleMember(
                name=member_name,
                path=f"{MEMBERS_DIR}/{member_name}",
                image_size=tuple(source.bundle.metadata.preprocess_spec().image_size),  # type: ignore[arg-type]
                with_box=source.bundle.metadata.with_box,
                source=str(folder),
            )
            for source, member_name, folder in zip(sources, names, folders, strict=True)
        ),
        weights=_as_tuple(np.asarray(fit.weights, dtype=np.float64)),
        class_names=reference.class_names,
        box_weights=tuple(float(w) for w in fit.box_weights),
        box_mode=box_mode,
        label_level=reference.label_level,
        taxonomy=reference.taxonomy,
        temperature=float(temperature),
        unknown_threshold=threshold,
        fit=fit_record,
        validation=None
        if not validation
        else {"split": fit_on, "models": [summary.to_dict() for summary in validation]},
        calibration=calibration,
        notes=tuple(notes),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    tell(f"writing {out_dir} (copying {len(sources)} member bundles)")
    _write_ensemble_folder(out_dir, metadata, [source.bundle.path for source in sources], overwrite)
    ensemble = Ensemble.load(out_dir)
    return EnsembleBuild(ensemble, fit, tuple(validation), tuple(notes), time.perf_counter() - started)


def _write_ensemble_folder(
    out_dir: Path, metadata: EnsembleMetadata, bundle_folders: Sequence[Path], overwrite: bool
) -> None:
    """Copy the member bundles and write ensemble.json in a staging folder beside `out_dir`, check
    it loads, then rename it into place (an existing ensemble is moved aside first)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for member, folder in zip(metadata.members, bundle_folders, strict=True):
            shutil.copytree(folder, staging / member.path, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        write_ensemble_metadata(staging, metadata)
        Ensemble.load(staging)  # what readers will see: validate before moving into place
        if out_dir.exists():
            if not overwrite:
                raise EnsembleError(f"{out_dir} appeared while building; pass --force to replace it")
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Evaluating members and the ensemble side by side


@dataclass(frozen=True, eq=False)
class EnsembleEvaluation:
    """Each member's and the ensemble's `evaluate` report on one split, and the side-by-side
    summaries (members first, the ensemble last). paths: comparison.json/csv/html by name."""

    summaries: tuple[ModelSummary, ...]
    ensemble_report: EvaluationReport
    member_reports: tuple[EvaluationReport, ...]
    split: str
    data: str | None
    out_dir: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "carid_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "ensemble": self.ensemble_report.model,
            "data": self.ensemble_report.data,
            "split": self.split,
            "models": [summary.to_dict() for summary in self.summaries],
            "reports": {
                summary.name: str(report.paths.get("report", ""))
                for summary, report in zip(
                    self.summaries, (*self.member_reports, self.ensemble_report), strict=True
                )
            },
            "paths": {name: str(path) for name, path in self.paths.items()},
        }

    def summary_lines(self) -> list[str]:
        return [
            f"{self.ensemble_report.model.get('name')} on {self.split!r}:",
            *format_table(self.summaries).splitlines(),
        ]


def evaluate_ensemble(
    ensemble: Path | str,
    data: Path | str | SampleTable | None = None,
    split: str = "test",
    out_dir: Path | str | None = None,
    *,
    data_format: str | None = None,
    batch_size: int = 32,
    backend: str | None = None,
    unknown_threshold: float | None = None,
    write: bool = True,
    progress: bool = False,
) -> EnsembleEvaluation:
    """`carid.evaluation.evaluate.evaluate` on each member and on the ensemble, then the scores side
    by side (comparison.json, comparison.csv, comparison.html in out_dir).

    data: as for `evaluate`; default: the split.csv of a member's run (`default_data`).
    out_dir (default outputs/evaluation/<ensemble>-<split>): the ensemble's full report in
    out_dir/ensemble, each member's in out_dir/members/<name>. Each member is scored twice (alone
    and inside the ensemble), which keeps this a plain reuse of `evaluate`.
    """
    from carid.evaluation.evaluate import evaluate
    from carid.files import write_atomic, write_json

    try:
        loaded = Ensemble.load(ensemble)
    except BundleError as exc:
        raise EvaluationError(str(exc)) from exc
    chosen = data if data is not None else default_data(loaded)
    if chosen is None:
        raise EvaluationError(
            f"{loaded.path}: give DATA (a dataset or a split CSV); no member's run split.csv is there to use"
        )
    if isinstance(data, str | Path):
        tag = f"{Path(data).expanduser().resolve().name}-{split}"
    else:
        tag = split if data is None else f"table-{split}"
    default_target = Path("outputs") / "evaluation" / f"{loaded.metadata.name}-{tag}"
    target = Path(out_dir) if out_dir is not None else default_target
    options: dict[str, Any] = {
        "data_format": data_format,
        "batch_size": batch_size,
        "backend": backend,
        "unknown_threshold": unknown_threshold,
        "write": write,
        "progress": progress,
    }
    member_reports = tuple(
        evaluate(loaded.member_path(index), chosen, split, target / MEMBERS_DIR / member.name, **options)
        for index, member in enumerate(loaded.metadata.members)
    )
    ensemble_report = evaluate(loaded.path, chosen, split, target / "ensemble", **options)
    summaries = tuple(
        [
            ModelSummary.from_result(member.name, "member", report.result)
            for member, report in zip(loaded.metadata.members, member_reports, strict=True)
        ]
        + [
            ModelSummary.from_result(
                loaded.metadata.name, f"ensemble ({loaded.metadata.mode})", ensemble_report.result
            )
        ]
    )
    evaluation = EnsembleEvaluation(summaries, ensemble_report, member_reports, split, _data_name(chosen))
    if not write:
        return evaluation
    target.mkdir(parents=True, exist_ok=True)
    paths = {name.rsplit(".", 1)[1]: target / name for name in COMPARISON_FILES}
    facts = [
        ("ensemble", f"{loaded.metadata.name} ({loaded.metadata.mode}): {loaded.path}"),
        ("data", f"{ensemble_report.data.get('origin')}: {ensemble_report.data.get('path') or chosen}"),
        ("split", split),
        (
            "members",
            ", ".join(f"{m.name} {m.image_size[0]}x{m.image_size[1]}" for m in loaded.metadata.members),
        ),
        ("reports", "ensemble/report.html, members/<name>/report.html"),
    ]
    write_atomic(paths["csv"], comparison_csv(summaries).encode("utf-8"))
    write_atomic(
        paths["html"],
        comparison_html(
            f"Ensemble {loaded.metadata.name} vs its members on {split}", summaries, facts
        ).encode("utf-8"),
    )
    evaluation = replace(evaluation, out_dir=target, paths=paths)
    write_json(paths["json"], evaluation.to_dict())
    return evaluation


# ----------------------------------------------------------------------------------------------
# Calibration stored into a bundle or an ensemble


@dataclass(frozen=True, eq=False)
class CalibrationUpdate:
    """A temperature and "unknown" threshold fitted on validation data and stored into a model.

    kind: "bundle" (model.json) or "ensemble" (ensemble.json). before / after: the stored
    temperature and unknown_threshold. fit: `carid.evaluation.evaluate.CalibrationFit`.
    threshold_stored: whether the fitted threshold was stored (asked for, and reaching the target).
    """

    path: Path
    kind: str
    data: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    fit: CalibrationFit
    threshold_stored: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "data": self.data,
            "before": self.before,
            "after": self.after,
            "fit": self.fit.to_dict(),
            "threshold_stored": self.threshold_stored,
        }

    def summary_lines(self) -> list[str]:
        fit = self.fit
        threshold = self.after["unknown_threshold"]
        return [
            f"{self.kind} {self.path}: temperature {self.before['temperature']:.4f} -> "
            f"{self.after['temperature']:.4f}, unknown threshold "
            f"{self.before['unknown_threshold']} -> {threshold}",
            f"  fitted on {fit.num_val} {self.data.get('split')!r} images: NLL {fit.val_nll_before:.4f} -> "
            f"{fit.val_nll_after:.4f}, ECE {fit.val_ece_before:.4f} -> {fit.val_ece_after:.4f}",
            f"  threshold: {fit.threshold.message}"
            + ("" if self.threshold_stored else "; not stored (the model keeps its threshold)"),
        ]


def _calibration_target(model: Path | str) -> tuple[str, Path, Path | None]:
    """(kind "bundle" or "ensemble", folder, run folder for the default data or None)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise EvaluationError(f"{path}: no such file or folder")
    if path.is_file() and path.name in (METADATA_FILE, ENSEMBLE_FILE):
        path = path.parent
    if is_ensemble_dir(path):
        try:
            ensemble = Ensemble.load(path)
        except BundleError as exc:
            raise EvaluationError(str(exc)) from exc
        runs = [bundle_run_dir(bundle) for bundle in ensemble.bundles]
        split_csv = run_split_csv(runs)
        return "ensemble", ensemble.path, None if split_csv is None else split_csv.parent
    if path.is_dir() and (path / METADATA_FILE).is_file():
        try:
            return "bundle", path, bundle_run_dir(Bundle.load(path))
        except BundleError as exc:
            raise EvaluationError(str(exc)) from exc
    if path.is_dir() and (path / RUN_CHECKPOINT).is_file():
        export = path / RUN_EXPORT_DIR
        if (export / METADATA_FILE).is_file():
            return "bundle", export, path
        raise EvaluationError(
            f"{path}: the run has no export ({export}); calibration is stored in a bundle: run "
            f"`carid export {path}` first"
        )
    raise EvaluationError(
        f"{path}: not a bundle, an ensemble or a run folder with an export; calibration is stored in a "
        "bundle's model.json (export a checkpoint first with `carid export`)"
    )


def calibrate_model(
    model: Path | str,
    data: Path | str | SampleTable | None = None,
    *,
    split: str = "val",
    target_precision: float = DEFAULT_TARGET_PRECISION,
    set_threshold: bool = True,
    data_format: str | None = None,
    backend: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> CalibrationUpdate:
    """Fit a temperature and an "unknown" threshold on validation data and store them in the model.

    model: a bundle folder, a run folder (its RUN/export bundle) or an ensemble folder.
    data / split: the images, by the rules of `carid.evaluation.evaluate` (default: the run's
    split.csv, its "val" part). The temperature is fitted on the raw logits (the network's, or an
    ensemble's log combined probabilities), so it replaces the stored one rather than stacking on
    it; the threshold is the smallest top-1 probability whose answers reach `target_precision` on
    the temperature-scaled probabilities (`fit_val_calibration`); it is stored only when it reaches
    the target (else the stored threshold is kept and the summary says why). set_threshold False
    stores the temperature only. Written atomically with `carid.artifacts.bundle.update_calibration` (or
    `update_ensemble_calibration`).
    """
    from carid.evaluation.evaluate import fit_val_calibration, load_evaluation_data, load_run_config

    if not 0.0 < target_precision <= 1.0:
        raise EvaluationError(f"target precision must be in (0, 1], got {target_precision}")
    kind, path, run_dir = _calibration_target(model)
    source = open_score_source(path, backend=backend, batch_size=batch_size)
    evaluation_data = load_evaluation_data(
        data,
        split,
        run_dir=run_dir,
        run_config=load_run_config(run_dir),
        data_format=data_format,
        progress=progress,
    )
    scores = source.score(evaluation_data.samples, progress=progress)
    kept = [sample for sample, ok in zip(evaluation_data.samples, scores.ok, strict=True) if ok]
    labels = align_labels(kept, source.class_names, source.label_level).labels
    fit = fit_val_calibration(scores.logits[scores.ok], labels, target_precision)
    stored_threshold = set_threshold and fit.threshold.achievable
    threshold: float | EllipsisType = fit.threshold.threshold if stored_threshold else ...
    if kind == "ensemble":
        previous = Ensemble.load(path).metadata
        before = {"temperature": previous.temperature, "unknown_threshold": previous.unknown_threshold}
        stored = update_ensemble_calibration(
            path, fit.temperature, threshold, calibration=fit.to_dict()
        ).metadata
        after = {"temperature": stored.temperature, "unknown_threshold": stored.unknown_threshold}
    else:
        previous_bundle = Bundle.load(path).metadata
        before = {
            "temperature": previous_bundle.temperature,
            "unknown_threshold": previous_bundle.unknown_threshold,
        }
        stored_bundle = update_calibration(path, fit.temperature, threshold).metadata
        after = {
            "temperature": stored_bundle.temperature,
            "unknown_threshold": stored_bundle.unknown_threshold,
        }
    return CalibrationUpdate(path, kind, evaluation_data.to_dict(), before, after, fit, stored_threshold)
