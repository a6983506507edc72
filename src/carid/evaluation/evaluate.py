"""`evaluate`: one model on one split of some data -> scores, figures, report. What `carid evaluate` calls.

MODEL is a run folder (its checkpoints/best.ckpt), a checkpoint file or an exported bundle folder
(model.json + model.onnx); see `carid.evaluation.scoring`.

Which samples are evaluated (DATA and SPLIT; SPLIT is "train", "val", "test" or "all"):

1. No DATA: the run's own split.csv (MODEL must be a run, or a checkpoint inside one), its SPLIT part.
   This is the default: the test images the run never trained on.
2. DATA is a split CSV (a file with path, label and split columns, as `carid data split` and every
   run write): its SPLIT part. Its rows are used as they are (no data checks).
3. DATA is the dataset the run was trained on (the same path as the run's `data.path`): the run's
   split.csv, as in 1, so the test images are exactly the run's.
4. DATA is any other dataset (folder or annotation file, any format `carid data formats` lists): it
   is read, checked (images with error-level problems are left out and counted) and split with the
   run's split settings (seed, fractions, format split; defaults without a run), so the same dataset
   always gives the same split. Use SPLIT "all" to evaluate every usable image of a dataset the
   model never saw.
5. DATA is a `SampleTable` (from Python): its samples whose `split` is SPLIT ("all": every sample);
   samples with error-level problems are left out.

Labels are matched to the model's classes by name (`scoring.align_labels`): images whose label the
model does not know are reported and left out of the class metrics.

Outputs in `out_dir` (default: `<run>/evaluation/<split>` for a run, `<run>/evaluation/<data
name>-<split>` when DATA is given, `outputs/evaluation/<bundle>-<split>` for a bundle):

    evaluation.json     model, data, split, counts, timing, notes, calibration and
                        `EvaluationResult.to_dict()` under "result"
    predictions.csv     one row per scored image: label, prediction, confidence, top-5, boxes, IoU
    report.html         the self-contained report (`carid.evaluation.report`)
    figures/*.png       confusion matrix (full and zoomed), reliability, per-class F1, IoU histogram
    calibration.json    with `fit_calibration`: the temperature and "unknown" threshold fitted on the
                        VALIDATION split (to be stored into a bundle by the export)

Calibration is fitted on the validation part of the same data source (rules 1-5 with SPLIT "val"),
never on the split being evaluated; the report shows what it does to this split.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carid import __version__
from carid.artifacts.run_dir import ModelLocation, locate
from carid.boxes import paired_iou
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.evaluation.detection import DetectionEvaluation, evaluate_detector
from carid.evaluation.evaluation_data import (
    EvaluationData,
    _check_split,
    load_run_config,
    read_evaluation_source,
)
from carid.evaluation.metric_records import EvaluationResult
from carid.evaluation.metrics import DEFAULT_TOP_K, evaluate_predictions
from carid.evaluation.report import EvaluationView, write_evaluation_report
from carid.evaluation.report_pairs import run_folder
from carid.evaluation.scoring import EvaluationError, Scores, ScoreSource, align_labels, target_boxes
from carid.evaluation.sources import open_score_source
from carid.evaluation.val_calibration import DEFAULT_TARGET_PRECISION, CalibrationFit, fit_val_calibration
from carid.files import write_atomic, write_json
from carid.runtime.detection import is_detector_model
from carid.runtime.tta import TtaError, check_mode

log = logging.getLogger(__name__)


TOP_K_SHOWN = 5  # predictions.csv lists this many best classes


@dataclass(frozen=True, eq=False)
class ScoredSamples:
    """The scored images of one evaluation, aligned row by row (unreadable images dropped).

    labels: int64 [N] model class index or -1. logits: float32 [N, C]; probabilities: float64 [N, C].
    pred_boxes: [N, 4] xyxy photo pixels or None. true_boxes: [N, 4] (NaN rows: no box).
    iou: [N] (NaN: no true box) or None without predicted boxes.
    """

    samples: tuple[Sample, ...]
    labels: np.ndarray
    logits: np.ndarray
    probabilities: np.ndarray
    pred_boxes: np.ndarray | None
    true_boxes: np.ndarray
    has_box: np.ndarray
    iou: np.ndarray | None


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """What `evaluate` produced. `to_dict()` is what evaluation.json holds (plus "paths")."""

    result: EvaluationResult
    model: dict[str, Any]
    data: dict[str, Any]
    split: str
    counts: dict[str, int]
    timing: dict[str, float]
    notes: tuple[Problem, ...]
    scored: ScoredSamples
    sample_problems: tuple[Problem, ...] = ()
    calibration: CalibrationFit | None = None
    out_dir: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.result.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "carid_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": self.model,
            "data": self.data,
            "split": self.split,
            "counts": self.counts,
            "timing": self.timing,
            "notes": [note.to_dict() for note in self.notes],
            "sample_problems": [problem.to_dict() for problem in self.sample_problems],
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "result": self.result.to_dict(),
            "paths": {name: str(path) for name, path in self.paths.items()},
        }

    def summary_lines(self) -> list[str]:
        """A few lines for the terminal."""
        result = self.result
        lines = [
            f"{self.model.get('name')} on {self.data.get('origin')} {self.split!r}: "
            f"{self.counts['scored']:,} images, {result.num_labeled:,} labeled",
            "  "
            + ", ".join(f"top-{k} {value:.4f}" for k, value in sorted(result.top_k_accuracy.items()))
            + f", macro F1 {result.macro.f1:.4f}, ECE {result.calibration.ece:.4f}",
        ]
        if result.boxes is not None and result.boxes.mean_iou is not None:
            lines.append(
                f"  box IoU mean {result.boxes.mean_iou:.4f}, IoU>=0.5 {result.boxes.share_iou_50:.4f}"
            )
        for level in result.taxonomy_levels:
            lines.append(f"  {level.level} accuracy {level.accuracy:.4f}")
        if self.calibration is not None:
            lines.append(
                f"  calibration (validation): temperature {self.calibration.temperature:.4f}, "
                f"unknown threshold {self.calibration.threshold.threshold:.4f}"
            )
        per_image = Counter(note.kind for note in self.notes if note.path)
        for note in self.notes:
            if not note.path:
                lines.append(f"  {note.severity}: {note.message}")
        for kind, count in sorted(per_image.items()):
            example = next(note for note in self.notes if note.kind == kind and note.path)
            lines.append(f"  {count} image(s) with {kind.replace('_', ' ')}, e.g. {example.message}")
        return lines


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def default_out_dir(location: ModelLocation, split: str, data: Path | str | SampleTable | None) -> Path:
    """Where `evaluate` writes when no out_dir is given (see the module docstring)."""
    if isinstance(data, SampleTable):
        tag = f"{Path(data.root).name or 'table'}-{split}"
    elif data is not None:
        tag = f"{Path(data).expanduser().resolve().name}-{split}"
    else:
        tag = split
    if location.run_dir is not None:
        return location.run_dir / "evaluation" / tag
    name = location.path.name if location.kind == "bundle" else location.path.stem
    return Path("outputs") / "evaluation" / f"{name}-{tag}"


def _score_split(
    source: ScoreSource, data: EvaluationData, progress: bool
) -> tuple[ScoredSamples, Scores, list[Problem], tuple[Problem, ...]]:
    """Score the samples, align labels and boxes; drops unreadable images (named in the problems).

    Returns (scored samples, raw scores, notes: unreadable images and label summaries, one
    `unknown_class` problem per image whose label the model does not know).
    """
    scores = source.score(data.samples, progress=progress)
    kept = tuple(sample for sample, ok in zip(data.samples, scores.ok, strict=True) if ok)
    scores_kept = scores.subset(scores.ok)
    alignment = align_labels(kept, source.class_names, source.label_level)
    true_boxes, has_box = target_boxes(kept, scores_kept.original_sizes)
    iou = None
    if scores_kept.boxes is not None:
        iou = np.full(len(kept), np.nan)
        if has_box.any():
            iou[has_box] = paired_iou(scores_kept.boxes[has_box], true_boxes[has_box])
    scored = ScoredSamples(
        samples=kept,
        labels=alignment.labels,
        logits=scores_kept.logits,
        probabilities=scores_kept.probabilities,
        pred_boxes=scores_kept.boxes,
        true_boxes=true_boxes,
        has_box=has_box,
        iou=iou,
    )
    notes = [*scores.problems, *alignment.summary()]
    return scored, scores, notes, alignment.problems


def evaluate(
    model_path: Path | str,
    data: Path | str | SampleTable | None = None,
    split: str = "test",
    out_dir: Path | str | None = None,
    *,
    data_format: str | None = None,
    fit_calibration: bool = False,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_coverage: float = 0.0,
    unknown_threshold: float | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "cpu",
    backend: str | None = None,
    tta: str = "none",
    top_k: Sequence[int] = DEFAULT_TOP_K,
    write: bool = True,
    progress: bool = False,
) -> EvaluationReport | DetectionEvaluation:
    """Evaluate a model on a split and write evaluation.json, predictions.csv, report.html, figures.
    A car detector (bundle or `task: detect` run) gets `carid.evaluation.detection.evaluate_detector`.

    model_path: run folder, checkpoint or bundle. data / split: see the module docstring.
    out_dir: where to write (default: `default_out_dir`); nothing is written with write=False.
    fit_calibration: also fit a temperature and an "unknown" threshold for
        `target_precision` on the validation split of the same data (writes calibration.json);
        min_coverage: the share of images the threshold must keep answering (0: precision only).
    unknown_threshold: report coverage / accuracy when answering "unknown" below this top-1
        probability (the model's own probabilities, no temperature).
    device, batch_size, num_workers: PyTorch scoring; backend: the bundle predictor's backend.
    tta: "none" or "hflip" (score each photo and its mirror image and average; `carid.runtime.tta`).
    Raises EvaluationError (a ValueError) for anything the user can fix, naming the path or value.
    """
    started = time.perf_counter()
    timing: dict[str, float] = {}
    _check_split(split)
    try:
        tta = check_mode(tta)
    except TtaError as exc:
        raise EvaluationError(str(exc)) from None
    if not 0.0 < target_precision <= 1.0:
        raise EvaluationError(f"target precision must be in (0, 1], got {target_precision}")
    if unknown_threshold is not None and not 0.0 <= unknown_threshold <= 1.0:
        raise EvaluationError(f"unknown threshold must be in [0, 1], got {unknown_threshold}")
    location = locate(model_path)
    if is_detector_model(location) or location.kind == "pipeline":  # detection metrics and report
        if fit_calibration or tta != "none" or unknown_threshold is not None:
            raise EvaluationError("--fit-calibration, --tta and --unknown-threshold are for classifiers")
        target = out_dir if out_dir is not None or not write else default_out_dir(location, split, data)
        return evaluate_detector(
            location,
            data,
            split,
            target,
            data_format=data_format,
            batch_size=batch_size,
            device=device,
            write=write,
            progress=progress,
        )
    tick = time.perf_counter()
    source = open_score_source(
        location, device=device, batch_size=batch_size, num_workers=num_workers, backend=backend, tta=tta
    )
    timing["load_model"] = time.perf_counter() - tick
    run_config = load_run_config(location.run_dir)

    tick = time.perf_counter()
    data_source = read_evaluation_source(
        data,
        with_splits=split != "all" or fit_calibration,
        run_dir=location.run_dir,
        run_config=run_config,
        data_format=data_format,
        progress=progress,
    )
    evaluation_data = data_source.select(split)
    timing["load_data"] = time.perf_counter() - tick

    scored, scores, score_notes, sample_problems = _score_split(source, evaluation_data, progress)
    timing["scoring"] = scores.seconds
    notes = list(evaluation_data.notes) + score_notes
    if location.note:
        notes.insert(0, Problem("checkpoint_choice", location.note, str(location.path), Severity.INFO))
    if not len(scored.samples):
        raise EvaluationError(
            f"none of the {len(evaluation_data.samples)} images of the {split!r} split could be scored"
        )
    if not (scored.labels >= 0).any():
        data_labels = sorted({s.label for s in scored.samples if s.label is not None})
        raise EvaluationError(
            f"none of the {len(scored.samples)} images has a label the model knows "
            f"(model classes: {_listing(source.class_names)}; data labels: {_listing(data_labels)})"
        )

    tick = time.perf_counter()
    with_boxes = scored.pred_boxes is not None and bool(scored.has_box.any())
    result = evaluate_predictions(
        scored.probabilities,
        scored.labels,
        source.class_names,
        pred_boxes=scored.pred_boxes if with_boxes else None,
        true_boxes=scored.true_boxes if with_boxes else None,
        has_box=scored.has_box if with_boxes else None,
        taxonomy=source.taxonomy,
        unknown_threshold=unknown_threshold,
        top_k=top_k,
    )
    timing["metrics"] = time.perf_counter() - tick

    calibration = None
    if fit_calibration:
        tick = time.perf_counter()
        val_data = data_source.select("val")
        val_scored, _, _, _ = _score_split(source, val_data, progress)
        calibration = fit_val_calibration(
            val_scored.logits,
            val_scored.labels,
            target_precision,
            scored.logits,
            scored.labels,
            min_coverage=min_coverage,
        )
        timing["calibration"] = time.perf_counter() - tick

    counts = {
        "samples": len(evaluation_data.samples),
        "scored": len(scored.samples),
        "unreadable": len(evaluation_data.samples) - len(scored.samples),
        "labeled": int((scored.labels >= 0).sum()),
        "unknown_label": int(
            sum(
                1
                for s, label in zip(scored.samples, scored.labels, strict=True)
                if s.label is not None and label < 0
            )
        ),
        "unlabeled": int(sum(1 for s in scored.samples if s.label is None)),
        "with_box": int(scored.has_box.sum()),
    }
    model_facts = {**source.describe(), "location": location.to_dict()}
    report = EvaluationReport(
        result=result,
        model=model_facts,
        data=evaluation_data.to_dict(),
        split=split,
        counts=counts,
        timing=timing,
        notes=tuple(notes),
        scored=scored,
        sample_problems=sample_problems,
        calibration=calibration,
    )
    if not write:
        timing["total"] = time.perf_counter() - started
        return report

    target = Path(out_dir) if out_dir is not None else default_out_dir(location, split, data)
    tick = time.perf_counter()
    paths = write_outputs(report, target, source)
    timing["report"] = time.perf_counter() - tick
    timing["total"] = time.perf_counter() - started
    report = replace(report, out_dir=target, paths=paths)
    write_json(target / "evaluation.json", report.to_dict())
    return report


def predictions_csv(scored: ScoredSamples, class_names: Sequence[str]) -> str:
    """One CSV row per scored image (see the module docstring); boxes as x1,y1,x2,y2 pixels."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "path",
            "source",
            "label",
            "known_label",
            "predicted",
            "confidence",
            "correct",
            "top5",
            "pred_box",
            "true_box",
            "iou",
        ]
    )
    ranked = np.argsort(-scored.probabilities, axis=1, kind="stable")[:, :TOP_K_SHOWN]
    for row, sample in enumerate(scored.samples):
        predicted = int(ranked[row, 0])
        label = int(scored.labels[row])

        def box_text(boxes: np.ndarray | None, row: int = row) -> str:
            if boxes is None or not np.isfinite(boxes[row]).all():
                return ""
            return " ".join(f"{value:.1f}" for value in boxes[row])

        iou = "" if scored.iou is None or not np.isfinite(scored.iou[row]) else f"{scored.iou[row]:.4f}"
        writer.writerow(
            [
                str(sample.path),
                sample.source,
                sample.label or "",
                "" if label < 0 else class_names[label],
                class_names[predicted],
                f"{scored.probabilities[row, predicted]:.6f}",
                "" if label < 0 else int(label == predicted),
                "|".join(class_names[int(i)] for i in ranked[row]),
                box_text(scored.pred_boxes),
                box_text(scored.true_boxes),
                iou,
            ]
        )
    return buffer.getvalue()


def _facts(report: EvaluationReport) -> list[tuple[str, str]]:
    model, data, counts = report.model, report.data, report.counts
    size = model.get("image_size")
    facts = [
        ("model", f"{model.get('name')} ({model.get('kind')}: {model.get('path')})"),
        ("backbone / input", f"{model.get('backbone')} / {'x'.join(map(str, size)) if size else 'n/a'} px"),
        (
            "classes",
            f"{model.get('num_classes')} ({model.get('label_level')})"
            + (", with a box head" if model.get("with_box") else ""),
        ),
        ("data", f"{data.get('origin')}: {data.get('path') or 'the run split'}"),
        ("split", report.split),
        (
            "images",
            f"{counts['samples']:,} in the split, {counts['scored']:,} scored, "
            f"{counts['labeled']:,} with a known label, {counts['with_box']:,} with a box",
        ),
        ("timing", ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.timing.items())),
    ]
    return facts


def write_outputs(report: EvaluationReport, out_dir: Path, source: ScoreSource) -> dict[str, Path]:
    """predictions.csv, calibration.json, report.html and figures; returns their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"evaluation": out_dir / "evaluation.json"}
    predictions = out_dir / "predictions.csv"
    write_atomic(predictions, predictions_csv(report.scored, source.class_names).encode("utf-8"))
    paths["predictions"] = predictions
    if report.calibration is not None:
        calibration = out_dir / "calibration.json"
        write_json(calibration, {"model": report.model.get("path"), **report.calibration.to_dict()})
        paths["calibration"] = calibration
    scored = report.scored
    view = EvaluationView(
        title=f"Evaluation: {report.model.get('name')} on {report.split}",
        result=report.result,
        samples=scored.samples,
        labels=scored.labels,
        probabilities=scored.probabilities,
        pred_boxes=scored.pred_boxes,
        true_boxes=scored.true_boxes if scored.pred_boxes is not None else None,
        iou=scored.iou if report.result.boxes is not None else None,
        taxonomy=source.taxonomy,
        facts=_facts(report),
        notes=report.notes,
        calibration=None if report.calibration is None else report.calibration.to_dict(),
        run_dir=run_folder(report.model),
    )
    paths.update(write_evaluation_report(view, out_dir))
    return paths
