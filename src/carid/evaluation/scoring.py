"""Scores of a model on a list of samples: class probabilities, logits and boxes in photo pixels.

A `ScoreSource` is anything that scores samples: `score(samples) -> Scores` with logits [N, C],
softmax probabilities [N, C] and, with a box head, one box [N, 4] per image in absolute xyxy pixels
of the original photo (`carid.boxes` conventions). Evaluation, calibration and comparison only talk
to this protocol, so a PyTorch checkpoint and an exported ONNX bundle are evaluated the same way.

- `TorchScoreSource`: a checkpoint (or a run folder's `checkpoints/best.ckpt`), rebuilt with
  `carid.models.checkpoint.load_for_inference` and fed through the deterministic eval transform of
  the checkpoint's own `PreprocessSpec` (exactly what training validated on). Batches come from
  `CarDataset`, whose per-image `Geometry` maps the predicted boxes back to photo pixels.
- `BundleScoreSource`: an exported bundle (a folder with model.json + model.onnx), scored through
  `carid.runtime.predictor.Predictor`: the predictor's own image preparation and backend (ONNX Runtime by
  default), raw logits from the network, probabilities with the bundle's temperature applied.
- `carid.evaluation.sources.EnsembleScoreSource`: an ensemble folder (ensemble.json + member
  bundles): each member scored as a bundle, probabilities combined; its "logits" are the log of the
  combined probabilities, so a temperature fitted on them is absolute too.

Each source takes `tta="hflip"` (`carid.runtime.tta`): every image and its mirror image are scored and
the outputs averaged (boxes mirrored back first), on the same backend.

Probabilities are what the model gives its users: softmax(logits) for a checkpoint,
softmax(logits / T) for a bundle calibrated with temperature T. Logits are always the network's
raw outputs, so a temperature fitted on them is absolute, not relative to the bundle's.

Class-name alignment (`align_labels`): the labels of the evaluation data are mapped onto the
model's classes by name, so the data may hold a subset or a superset of them, in any order. For a
model trained on a taxonomy level (make, body type, year), a data label that is not itself one of
the model's classes is mapped through `parse_car_name` to that level. A sample whose label the
model does not know gets label -1 (excluded from the class metrics, its box still scored) and an
`unknown_class` `Problem`. An image that cannot be loaded gets an `unreadable_image` Problem and is
left out of everything; `Scores.ok` says which rows were scored.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from carid import boxes as box_math
from carid.data.samples import Problem, Sample, Severity
from carid.errors import CaridError
from carid.runtime.calibration import apply_temperature
from carid.taxonomy import Taxonomy, parse_car_name

MAX_LISTED_LABELS = 8


class EvaluationError(CaridError, ValueError):
    """A model path, data or setting that cannot be evaluated; the message says what to change."""


@dataclass(frozen=True, eq=False)
class Scores:
    """What a score source says about N samples (rows aligned with the samples given).

    logits: float32 [N, C]; probabilities: float64 [N, C], softmax of the logits (rows sum to 1).
    boxes: float64 [N, 4] absolute xyxy pixels of the original photo, clipped to it; None without
        a box head.
    original_sizes: int64 [N, 2], (width, height) of each photo file in pixels.
    ok: bool [N], False for images that could not be loaded (their rows are zeros / uniform and
        must not be used); `problems` names each of them.
    seconds: wall time of the scoring.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    boxes: np.ndarray | None
    original_sizes: np.ndarray
    ok: np.ndarray
    problems: tuple[Problem, ...] = ()
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.ok)

    def subset(self, keep: np.ndarray) -> Scores:
        """The rows where `keep` ([N] bool) is true."""
        return Scores(
            logits=self.logits[keep],
            probabilities=self.probabilities[keep],
            boxes=None if self.boxes is None else self.boxes[keep],
            original_sizes=self.original_sizes[keep],
            ok=self.ok[keep],
            problems=self.problems,
            seconds=self.seconds,
        )


@dataclass
class ScoreBuffers:
    """The arrays a score source fills batch by batch, and the one way rows get filled."""

    logits: np.ndarray
    boxes: np.ndarray | None
    sizes: np.ndarray
    ok: np.ndarray
    problems: list[Problem] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def empty(cls, count: int, num_classes: int, with_box: bool) -> ScoreBuffers:
        return cls(
            logits=np.zeros((count, num_classes), dtype=np.float32),
            boxes=np.zeros((count, 4), dtype=np.float64) if with_box else None,
            sizes=np.zeros((count, 2), dtype=np.int64),
            ok=np.zeros(count, dtype=bool),
        )

    def unreadable(self, sample: Sample, error: object) -> None:
        self.problems.append(
            Problem(
                "unreadable_image",
                f"cannot score {sample.path}: {error}",
                sample.source,
                Severity.ERROR,
                str(sample.path),
            )
        )

    def place(self, row: int, geometry: Any, box: np.ndarray | None) -> None:
        """Record a photo's size and its predicted box (normalized [4]) in original pixels."""
        self.sizes[row] = (geometry.original_width, geometry.original_height)
        if self.boxes is not None and box is not None:
            original = geometry.boxes_to_original(np.asarray(box, dtype=np.float64)[None, :])
            self.boxes[row] = box_math.clip(original, *self.sizes[row])[0]

    def finish(self, temperature: float) -> Scores:
        self.logits[~self.ok] = 0.0
        probabilities = apply_temperature(self.logits.astype(np.float64), temperature)
        return Scores(
            self.logits,
            probabilities,
            self.boxes,
            self.sizes,
            self.ok,
            tuple(self.problems),
            time.perf_counter() - self.started,
        )


@runtime_checkable
class ScoreSource(Protocol):
    """Something that gives class probabilities [N, C] and boxes [N, 4] in original pixels for samples.

    name: a short human-readable name (run or bundle name). class_names: the C outputs in order.
    taxonomy: make / body type / year of the classes (None when the classes are a taxonomy level
    or do not parse). with_box: the model predicts a box. label_level: "class", "make",
    "body_type" or "year", what the classes are.
    """

    name: str
    class_names: tuple[str, ...]
    taxonomy: Taxonomy | None
    with_box: bool
    label_level: str

    def score(self, samples: Sequence[Sample], progress: bool = False) -> Scores: ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about the model (kind, path, backbone, input size, classes, ...)."""
        ...


def level_label(label: str, class_names: Sequence[str] | set[str], label_level: str) -> str:
    """The model class a data label stands for: itself when it is one, else its taxonomy level value."""
    if label in class_names or label_level == "class":
        return label
    return parse_car_name(label).level_value(label_level)


@dataclass(frozen=True)
class LabelAlignment:
    """Data labels mapped onto a model's classes.

    labels: int64 [N], the model class index of each sample, -1 when unlabeled or unknown.
    unknown: {data label: samples} of labels the model does not know.
    unlabeled: samples without a label. absent_classes: model classes no sample has.
    problems: one `unknown_class` warning per sample with an unknown label.
    """

    labels: np.ndarray
    unknown: Mapping[str, int]
    unlabeled: int
    absent_classes: tuple[str, ...]
    problems: tuple[Problem, ...] = field(default=())

    def summary(self) -> list[Problem]:
        """Dataset-level notes: unknown labels and model classes without samples."""
        notes: list[Problem] = []
        if self.unknown:
            count = sum(self.unknown.values())
            ranked = sorted(self.unknown.items(), key=lambda item: (-item[1], item[0]))
            listed = ", ".join(f"{name!r} ({n})" for name, n in ranked[:MAX_LISTED_LABELS])
            if len(ranked) > MAX_LISTED_LABELS:
                listed += f", and {len(ranked) - MAX_LISTED_LABELS} more"
            notes.append(
                Problem(
                    kind="unknown_class",
                    message=(
                        f"{count} sample(s) have a label the model does not know, excluded from the "
                        f"class metrics (their boxes are still scored): {listed}"
                    ),
                    source="evaluation data",
                    severity=Severity.WARNING,
                )
            )
        if self.unlabeled:
            notes.append(
                Problem(
                    kind="unlabeled",
                    message=f"{self.unlabeled} sample(s) have no label; only their boxes are scored",
                    source="evaluation data",
                    severity=Severity.INFO,
                )
            )
        if self.absent_classes:
            shown = ", ".join(self.absent_classes[:MAX_LISTED_LABELS])
            more = len(self.absent_classes) - MAX_LISTED_LABELS
            notes.append(
                Problem(
                    kind="class_without_samples",
                    message=(
                        f"{len(self.absent_classes)} of the model's classes have no sample in the evaluation "
                        f"data (no recall for them): {shown}{f', and {more} more' if more > 0 else ''}"
                    ),
                    source="evaluation data",
                    severity=Severity.INFO,
                )
            )
        return notes


def align_labels(
    samples: Sequence[Sample], class_names: Sequence[str], label_level: str = "class"
) -> LabelAlignment:
    """Map each sample's label onto the model's classes by name (see the module docstring)."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.full(len(samples), -1, dtype=np.int64)
    unknown: Counter[str] = Counter()
    problems: list[Problem] = []
    unlabeled = 0
    for row, sample in enumerate(samples):
        if sample.label is None:
            unlabeled += 1
            continue
        name = level_label(sample.label, index, label_level)
        if name in index:
            labels[row] = index[name]
            continue
        unknown[sample.label] += 1
        mapped = "" if name == sample.label else f" (its {label_level} {name!r})"
        problems.append(
            Problem(
                kind="unknown_class",
                message=(
                    f"label {sample.label!r}{mapped} is not one of the model's {len(class_names)} "
                    "classes; excluded from the class metrics"
                ),
                source=sample.source,
                severity=Severity.WARNING,
                path=str(sample.path),
            )
        )
    present = set(labels[labels >= 0].tolist())
    absent = tuple(name for i, name in enumerate(class_names) if i not in present)
    return LabelAlignment(labels, dict(unknown), unlabeled, absent, tuple(problems))


def target_boxes(samples: Sequence[Sample], original_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true boxes float64 [N, 4] absolute xyxy pixels, NaN rows where none; has_box bool [N]).

    The one target box of an image is the one training uses (`select_target_box`: the largest after
    clipping to the photo), so evaluation scores what the box head learned to predict.
    """
    from carid.training.datamodule import select_target_box

    boxes = np.full((len(samples), 4), np.nan, dtype=np.float64)
    for row, sample in enumerate(samples):
        if not sample.has_box:
            continue
        width, height = (int(v) for v in original_sizes[row])
        if width <= 0 or height <= 0:
            continue
        target = select_target_box(sample.boxes, width, height)
        if target is not None:
            boxes[row] = target
    return boxes, np.isfinite(boxes).all(axis=1)


def no_label(sample: Sample) -> str | None:
    """`label_of` for scoring: labels are aligned separately (`align_labels`), so none is needed here."""
    return None
