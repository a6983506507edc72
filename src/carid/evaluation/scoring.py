"""Scores of a model on a list of samples: class probabilities, logits and boxes in photo pixels.

A `ScoreSource` is anything that scores samples: `score(samples) -> Scores` with logits [N, C],
softmax probabilities [N, C] and, with a box head, one box [N, 4] per image in absolute xyxy pixels
of the original photo (`carid.boxes` conventions). Evaluation, calibration and comparison only talk
to this protocol, so a PyTorch checkpoint and an exported ONNX bundle are evaluated the same way.

- `TorchScoreSource`: a checkpoint (or a run folder's `checkpoints/best.ckpt`), rebuilt with
  `carid.training.module.load_for_inference` and fed through the deterministic eval transform of
  the checkpoint's own `PreprocessSpec` (exactly what training validated on). Batches come from
  `CarDataset`, whose per-image `Geometry` maps the predicted boxes back to photo pixels.
- `BundleScoreSource`: an exported bundle (a folder with model.json + model.onnx), scored through
  `carid.runtime.predictor.Predictor`: the predictor's own image preparation and backend (ONNX Runtime by
  default), raw logits from the network, probabilities with the bundle's temperature applied.
- `carid.evaluation.ensemble.EnsembleScoreSource`: an ensemble folder (ensemble.json + member
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

import pickle
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from carid import boxes as box_math
from carid.data.samples import Problem, Sample, Severity
from carid.errors import CaridError
from carid.evaluation.calibration import apply_temperature
from carid.taxonomy import Taxonomy, parse_car_name

if TYPE_CHECKING:
    import torch

BEST_CHECKPOINT = Path("checkpoints") / "best.ckpt"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
BUNDLE_METADATA = (
    "model.json"  # `carid.artifacts.bundle.METADATA_FILE`; the ONNX file it names sits beside it
)
ENSEMBLE_METADATA = "ensemble.json"  # `carid.artifacts.bundle.ENSEMBLE_FILE`; member bundles in members/
MAX_LISTED_LABELS = 8


class EvaluationError(CaridError, ValueError):
    """A model path, data or setting that cannot be evaluated; the message says what to change."""


# ----------------------------------------------------------------------------------------------
# Results


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
class _ScoreBuffers:
    """The arrays a score source fills batch by batch, and the one way rows get filled."""

    logits: np.ndarray
    boxes: np.ndarray | None
    sizes: np.ndarray
    ok: np.ndarray
    problems: list[Problem] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def empty(cls, count: int, num_classes: int, with_box: bool) -> _ScoreBuffers:
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


# ----------------------------------------------------------------------------------------------
# Where a model lives


@dataclass(frozen=True)
class ModelLocation:
    """A model path resolved: kind "checkpoint", "bundle" or "ensemble", the file or folder to load,
    and the run folder it belongs to (None for a bundle, an ensemble or a checkpoint outside a run)."""

    kind: str
    path: Path
    run_dir: Path | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
            "note": self.note,
        }


def is_bundle(path: Path) -> bool:
    """An exported model bundle: a folder with model.json (and the model.onnx it names)."""
    return path.is_dir() and (path / BUNDLE_METADATA).is_file()


def is_ensemble(path: Path) -> bool:
    """An ensemble of bundles: a folder with ensemble.json (`carid.evaluation.ensemble`)."""
    return path.is_dir() and (path / ENSEMBLE_METADATA).is_file()


def is_run_dir(path: Path) -> bool:
    """A training run folder: config.yaml beside a checkpoints/ folder."""
    return path.is_dir() and (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def resolve_model(path: Path | str) -> ModelLocation:
    """Run folder (its checkpoints/best.ckpt, else last.ckpt), checkpoint file, bundle folder or
    ensemble folder.

    Raises EvaluationError naming the path and what was expected.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise EvaluationError(f"{path}: no such file or folder (expected a run folder, a .ckpt or a bundle)")
    if is_ensemble(path):
        return ModelLocation("ensemble", path.resolve(), None)
    if path.name == ENSEMBLE_METADATA and is_ensemble(path.parent):
        return ModelLocation("ensemble", path.parent.resolve(), None)
    if is_bundle(path):
        return ModelLocation("bundle", path.resolve(), None)
    if path.is_dir():
        if (path / BEST_CHECKPOINT).is_file():
            return ModelLocation("checkpoint", (path / BEST_CHECKPOINT).resolve(), path.resolve())
        if (path / LAST_CHECKPOINT).is_file():
            return ModelLocation(
                "checkpoint",
                (path / LAST_CHECKPOINT).resolve(),
                path.resolve(),
                note=f"{path} has no {BEST_CHECKPOINT}; evaluating {LAST_CHECKPOINT} (the latest epoch)",
            )
        raise EvaluationError(
            f"{path}: not a run folder (no {BEST_CHECKPOINT}) and not a model bundle (no {BUNDLE_METADATA})"
        )
    if path.suffix == ".ckpt":
        parent = path.resolve().parent
        run_dir = parent.parent if parent.name == "checkpoints" and is_run_dir(parent.parent) else None
        return ModelLocation("checkpoint", path.resolve(), run_dir)
    if path.name == BUNDLE_METADATA and is_bundle(path.parent):
        return ModelLocation("bundle", path.parent.resolve(), None)
    raise EvaluationError(
        f"{path}: not a model: expected a run folder, a checkpoint (.ckpt) or a bundle folder "
        f"(with {BUNDLE_METADATA} + model.onnx)"
    )


def open_score_source(
    path: Path | str | ModelLocation,
    *,
    device: str = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    backend: str | None = None,
    tta: str = "none",
) -> ScoreSource:
    """The score source of a run folder, a checkpoint, a bundle or an ensemble (see `resolve_model`).

    backend: for bundles (and an ensemble's members), the `Predictor` backend ("onnx" or "torch";
    None = "auto", ONNX Runtime). tta: "none" or "hflip" (`carid.runtime.tta`: each photo and its mirror
    image are scored and averaged).
    """
    location = path if isinstance(path, ModelLocation) else resolve_model(path)
    if location.kind == "ensemble":
        from carid.evaluation.ensemble import EnsembleScoreSource

        return EnsembleScoreSource(location.path, backend=backend, batch_size=batch_size, tta=tta)
    if location.kind == "bundle":
        return BundleScoreSource(location.path, backend=backend, batch_size=batch_size, tta=tta)
    return TorchScoreSource(
        location.path, device=device, batch_size=batch_size, num_workers=num_workers, tta=tta
    )


# ----------------------------------------------------------------------------------------------
# Labels


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


# ----------------------------------------------------------------------------------------------
# PyTorch checkpoints


def _no_label(sample: Sample) -> str | None:
    """`label_of` for scoring: labels are aligned separately (`align_labels`), so none is needed here."""
    return None


class _ScoringDataset:
    """A `CarDataset` (eval transform, raising on a bad image) whose failures become flagged rows.

    Items are the `CarDataset` items plus "ok" (bool) and "error" (str); a failed item has a blank
    image and a unit geometry so the batch still collates.
    """

    def __init__(self, dataset: Any, spec: Any) -> None:
        self.dataset = dataset
        self.spec = spec

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> dict[str, Any]:
        import torch

        from carid.images import ImageError
        from carid.preprocess import Geometry

        try:
            item = self.dataset[position]
        except (ImageError, OSError, ValueError) as exc:
            geometry = Geometry(1, 1, self.spec.width, self.spec.height, 1.0, 1.0)
            return {
                "image": torch.zeros(3, self.spec.height, self.spec.width),
                "geometry": torch.from_numpy(geometry.to_array()),
                "index": torch.tensor(position, dtype=torch.int64),
                "ok": torch.tensor(False),
                "error": str(exc),
            }
        return {
            "image": item["image"],
            "geometry": item["geometry"],
            "index": item["index"],
            "ok": torch.tensor(True),
            "error": "",
        }


def _progress_batches(loader: Any, total: int, description: str, progress: bool) -> Iterator[Any]:
    if not progress:
        yield from loader
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task(description, total=total)
        for batch in loader:
            yield batch
            bar.advance(task, len(batch["index"]))


class TorchScoreSource:
    """A carid checkpoint scored with PyTorch (see the module docstring).

    device: "cpu", "cuda", ... or "auto" (CUDA when available). batch_size / num_workers: of the
    DataLoader that decodes and preprocesses the images.
    """

    def __init__(
        self,
        checkpoint: Path | str,
        device: str = "cpu",
        batch_size: int = 32,
        num_workers: int = 0,
        tta: str = "none",
    ) -> None:
        import torch

        from carid.runtime.predictor import TorchBackend
        from carid.runtime.tta import with_tta
        from carid.training.module import load_for_inference

        self.checkpoint = Path(checkpoint)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise EvaluationError(f"device {device!r} is not usable ({exc}); use cpu, cuda or auto") from None
        try:
            self.network, self.metadata = load_for_inference(self.checkpoint, device=self.device)
        except (KeyError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
            raise EvaluationError(f"{self.checkpoint}: cannot load the checkpoint ({exc})") from exc
        try:
            self.backend = with_tta(TorchBackend(self.network, device=str(self.device)), tta)
        except ValueError as exc:  # TtaError names the mode
            raise EvaluationError(str(exc)) from None
        self.tta = tta
        self.spec = self.metadata.preprocess_spec()
        self.batch_size = max(1, int(batch_size))
        self.num_workers = max(0, int(num_workers))
        self.class_names = tuple(self.metadata.class_names)
        self.with_box = bool(self.metadata.with_box)
        self.label_level = self.metadata.label_level
        self.taxonomy = _taxonomy_of(self.metadata.taxonomy, self.class_names, self.label_level)
        run_name = self.metadata.extra.get("run_name")
        parent = self.checkpoint.resolve().parent
        self.name = str(
            run_name or (parent.parent.name if parent.name == "checkpoints" else self.checkpoint.stem)
        )

    def describe(self) -> dict[str, Any]:
        model = self.metadata.model
        return {
            "kind": "checkpoint",
            "path": str(self.checkpoint),
            "name": self.name,
            "backbone": model.get("backbone"),
            "image_size": list(self.spec.image_size),
            "resize_mode": self.spec.resize_mode,
            "num_classes": len(self.class_names),
            "label_level": self.label_level,
            "with_box": self.with_box,
            "parameters": int(sum(p.numel() for p in self.network.parameters())),
            "carid_version": self.metadata.carid_version,
            "device": str(self.device),
            "tta": self.tta,
        }

    def logits_and_boxes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A normalized batch float32 [B, 3, H, W] -> (logits [B, C], normalized boxes [B, 4] or None),
        through the (TTA-wrapped) torch backend."""
        import torch

        from carid.artifacts.bundle import BOX, LOGITS

        outputs = self.backend.run(images.numpy())  # type: ignore[attr-defined]
        box = outputs.get(BOX) if self.with_box else None
        return torch.from_numpy(outputs[LOGITS]), None if box is None else torch.from_numpy(box)

    def score(self, samples: Sequence[Sample], progress: bool = False) -> Scores:
        """Score `samples` in order; see `Scores`."""
        from torch.utils.data import DataLoader

        from carid.preprocess import Geometry
        from carid.training.datamodule import CarDataset
        from carid.training.transforms import build_eval_transform

        samples = list(samples)
        count = len(samples)
        buffers = _ScoreBuffers.empty(count, len(self.class_names), self.with_box)
        if count:
            dataset = CarDataset(
                samples, {}, build_eval_transform(self.spec), label_of=_no_label, on_error="raise"
            )
            loader = DataLoader(
                _ScoringDataset(dataset, self.spec),  # type: ignore[arg-type]
                batch_size=self.batch_size,
                shuffle=False,
                num_workers=self.num_workers,
                persistent_workers=False,
            )
            for batch in _progress_batches(loader, count, f"scoring {self.name}", progress):
                rows = batch["index"].numpy()
                batch_logits, batch_boxes = self.logits_and_boxes(batch["image"])
                buffers.logits[rows] = batch_logits.numpy()
                buffers.ok[rows] = batch["ok"].numpy()
                for position, (row, geometry_row, good, error) in enumerate(
                    zip(rows, batch["geometry"].numpy(), batch["ok"].numpy(), batch["error"], strict=True)
                ):
                    if not good:
                        buffers.unreadable(samples[row], error)
                        continue
                    box = None if batch_boxes is None else batch_boxes[position].numpy()
                    buffers.place(row, Geometry.from_array(geometry_row), box)
        return buffers.finish(1.0)


def _taxonomy_of(
    data: Mapping[str, Any] | None, class_names: Sequence[str], label_level: str
) -> Taxonomy | None:
    """The model's taxonomy when its classes are car names that (mostly) parse; None otherwise.

    Classes that are a taxonomy level (make, body type, year) have no taxonomy. A taxonomy of names
    of which fewer than half parse as "<Make> <Model> <Body> <Year>" (e.g. "red", "cat") would only
    produce meaningless make / year accuracies, so it is dropped too.
    """
    if label_level != "class":
        return None
    try:
        taxonomy = Taxonomy.from_dict(data) if data else Taxonomy.from_class_names(class_names)
    except ValueError:
        return None
    if taxonomy.classes != tuple(class_names):
        return None
    if 2 * len(taxonomy.unparsed) > taxonomy.num_classes:
        return None
    return taxonomy


# ----------------------------------------------------------------------------------------------
# Exported bundles (carid.runtime.predictor.Predictor)


def _inference() -> Any:
    """The `carid.runtime.predictor` module, or EvaluationError when it cannot be imported."""
    try:
        import carid.runtime.predictor as inference
    except ImportError as exc:
        raise EvaluationError(
            f"evaluating a model bundle needs carid.runtime.predictor, which cannot be imported ({exc})"
        ) from exc
    if not hasattr(inference, "Predictor"):
        raise EvaluationError(
            "evaluating a model bundle needs carid.runtime.predictor.Predictor, which is missing"
        )
    return inference


class BundleScoreSource:
    """An exported bundle scored through `carid.runtime.predictor.Predictor`.

    The predictor is loaded with `Predictor.load(bundle, backend=...)` (ONNX Runtime by default;
    "torch" runs the bundle's source checkpoint). Each image goes through the predictor's own
    `prepare_image` (the bundle's `PreprocessSpec`) and `backend.run`, so the scores are exactly the
    bundle's: raw logits from the "logits" output, probabilities = softmax(logits / the bundle's
    temperature), boxes from the "box" output mapped to photo pixels with each image's `Geometry`.
    The bundle's "unknown" threshold is not applied (pass `unknown_threshold` to `evaluate`).
    """

    def __init__(
        self, bundle: Path | str, backend: str | None = None, batch_size: int = 32, tta: str = "none"
    ) -> None:
        inference = _inference()
        self.bundle = Path(bundle)
        try:
            self.predictor = inference.Predictor.load(self.bundle, backend=backend or "auto", tta=tta)
        except ValueError as exc:  # PredictorError and BundleError name the path and the problem
            raise EvaluationError(str(exc)) from exc
        self._prepare_image = inference.prepare_image
        metadata = self.predictor.metadata
        self.metadata = metadata
        self.spec = self.predictor.spec
        self.class_names = tuple(metadata.class_names)
        self.with_box = bool(metadata.with_box)
        self.label_level = str(metadata.label_level)
        self.taxonomy = _taxonomy_of(metadata.taxonomy, self.class_names, self.label_level)
        self.temperature = float(metadata.temperature or 1.0)
        self.batch_size = max(1, int(batch_size))
        self.backend = getattr(self.predictor.backend, "name", backend)
        self.tta = self.predictor.tta
        run_name = (metadata.extra or {}).get("run_name")
        self.name = str(run_name or self.bundle.name)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "bundle",
            "path": str(self.bundle),
            "name": self.name,
            "backbone": (self.metadata.model_config or {}).get("backbone"),
            "image_size": list(self.spec.image_size),
            "resize_mode": self.spec.resize_mode,
            "num_classes": len(self.class_names),
            "label_level": self.label_level,
            "with_box": self.with_box,
            "temperature": self.temperature,
            "unknown_threshold": self.metadata.unknown_threshold,
            "backend": self.backend,
            "tta": self.tta,
        }

    def score(self, samples: Sequence[Sample], progress: bool = False) -> Scores:
        from carid.artifacts.bundle import BOX, LOGITS

        samples = list(samples)
        count, num_classes = len(samples), len(self.class_names)
        buffers = _ScoreBuffers.empty(count, num_classes, self.with_box)
        for start in range(0, count, self.batch_size):
            batch = samples[start : start + self.batch_size]
            prepared = [self._prepare_image(s.path, self.spec, str(s.path)) for s in batch]
            rows = [start + offset for offset, item in enumerate(prepared) if item.error is None]
            for sample, item in zip(batch, prepared, strict=True):
                if item.error is not None:
                    buffers.unreadable(sample, item.error)
            if not rows:
                continue
            good = [prepared[row - start] for row in rows]
            outputs = self.predictor.backend.run(np.stack([item.array for item in good]))
            batch_logits = np.asarray(outputs[LOGITS], dtype=np.float32)
            if batch_logits.shape != (len(good), num_classes):
                raise EvaluationError(
                    f"{self.bundle}: the network gave logits of shape {list(batch_logits.shape)} "
                    f"for {len(good)} images and {num_classes} classes"
                )
            buffers.logits[rows] = batch_logits
            buffers.ok[rows] = True
            batch_boxes = outputs.get(BOX) if self.with_box else None
            for position, (row, item) in enumerate(zip(rows, good, strict=True)):
                box = None if batch_boxes is None else batch_boxes[position]
                buffers.place(row, item.geometry, box)
        return buffers.finish(self.temperature)
