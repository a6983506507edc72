"""Where scores come from: a checkpoint on PyTorch (`TorchScoreSource`), an exported bundle through the
`Predictor` (`BundleScoreSource`) or an ensemble member by member (`EnsembleScoreSource`), and
`open_score_source(path)`, which picks one for whatever `carid.artifacts.run_dir.locate` finds.

Each scores a list of samples into one `carid.evaluation.scoring.Scores` record (logits,
probabilities, boxes in original-photo pixels, which images could be read), so that `carid
evaluate`, calibration and ensemble fitting treat every kind of model alike.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carid.artifacts.bundle import (
    BundleError,
)
from carid.artifacts.ensemble import Ensemble
from carid.artifacts.run_dir import ModelLocation, locate
from carid.data.samples import Problem, Sample
from carid.evaluation.scoring import EvaluationError, ScoreBuffers, Scores, ScoreSource, no_label
from carid.runtime.calibration import apply_temperature
from carid.runtime.ensemble import combine_boxes, combine_probabilities, probabilities_to_logits
from carid.taxonomy import Taxonomy

if TYPE_CHECKING:
    import torch


def open_score_source(
    path: Path | str | ModelLocation,
    *,
    device: str = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    backend: str | None = None,
    tta: str = "none",
) -> ScoreSource:
    """The score source of a run folder, a checkpoint, a bundle or an ensemble (see
    `carid.artifacts.run_dir.locate`).

    backend: for bundles (and an ensemble's members), the `Predictor` backend ("onnx" or "torch";
    None = "auto", ONNX Runtime). tta: "none" or "hflip" (`carid.runtime.tta`: each photo and its mirror
    image are scored and averaged).
    """
    location = path if isinstance(path, ModelLocation) else locate(path)
    if location.kind == "ensemble":
        return EnsembleScoreSource(location.path, backend=backend, batch_size=batch_size, tta=tta)
    if location.kind == "bundle":
        return BundleScoreSource(location.path, backend=backend, batch_size=batch_size, tta=tta)
    return TorchScoreSource(
        location.path, device=device, batch_size=batch_size, num_workers=num_workers, tta=tta
    )


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

        from carid.models.checkpoint import load_for_inference
        from carid.runtime.backends import TorchBackend
        from carid.runtime.tta import with_tta

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
        buffers = ScoreBuffers.empty(count, len(self.class_names), self.with_box)
        if count:
            dataset = CarDataset(
                samples, {}, build_eval_transform(self.spec), label_of=no_label, on_error="raise"
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
        buffers = ScoreBuffers.empty(count, num_classes, self.with_box)
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


# --- an ensemble, member by member ---


def in_class_order(scores: Scores, columns: np.ndarray) -> Scores:
    """A member's scores with the columns in the ensemble's class order."""
    return replace(scores, logits=scores.logits[:, columns], probabilities=scores.probabilities[:, columns])


def merged_problems(member_scores: Sequence[Scores]) -> tuple[Problem, ...]:
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
        problems=merged_problems(member_scores),
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
            in_class_order(member.score(samples, progress=progress), columns)
            for member, columns in zip(self.members, self.ensemble.columns, strict=True)
        ]

    def score(self, samples: Sequence[Sample], progress: bool = False) -> Scores:
        return combine_scores(
            self.score_members(samples, progress),
            self.weights,
            self.box_weights if self.with_box else None,
            self.temperature,
        )
