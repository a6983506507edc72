"""Evaluating a car detector (or a detect -> identify pipeline) against the boxes of a sample table:
what `carid evaluate DETECTOR` runs.

    detector bundle, `task: detect` checkpoint or pipeline (`PipelineDetector`) --detect_batch-->
      every photo's detections down to `AP_SCORE_FLOOR` --`detection_metrics` vs the true boxes-->
      `DetectionMetrics` --`evaluate_detector`--> evaluation.json, detections.csv,
      figures/detections.png (`render_detection_samples`), report.html (templates/detection.html)

The metrics:
- AP@0.5 and AP@[.5:.95] (and AP@0.75): COCO's definition (101-point interpolated precision, IoU
  thresholds 0.50:0.05:0.95, at most 100 detections per photo), computed by torchmetrics'
  `MeanAveragePrecision` on the faster-coco-eval backend over every detection above
  `AP_SCORE_FLOOR`: AP ranks them all, so the operating threshold must not cut the curve short.
- At the operating threshold (the detector's, or the one given): recall (the share of true cars a
  detection finds with an IoU >= 0.5; each detection, best score first, takes the unmatched true box
  it overlaps most, as COCO matches), precision and the mean IoU of the matched pairs; on the photos
  without a car, the false positives per photo and the share of them with no detection at all.
- Identification accuracy, when true boxes carry an identity (a box label other than the generic
  `GENERIC_BOX_LABELS`) and the predictions carry labels (a pipeline's top-1 class per car): the
  share of matched, identified true cars whose label is right.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from carid import __version__
from carid.artifacts.detector import DetectorBundle
from carid.artifacts.run_dir import ModelLocation, RunDir, locate
from carid.boxes import as_boxes, iou
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.evaluation.evaluation_data import load_evaluation_data, load_run_config
from carid.evaluation.scoring import EvaluationError
from carid.files import write_atomic, write_json
from carid.images import ImageError, decode_rgb
from carid.reporting import REPORT_NAME, ReportFigure, draw_boxes, render_page, write_figures
from carid.runtime.detection import Detection, DetectionError, Detector, check_threshold, is_detector_model

log = logging.getLogger(__name__)

AP_SCORE_FLOOR = 0.05  # COCO evaluation's lowest score, as training's val mAP (EVAL_SCORE_THRESHOLD)
MATCH_IOU = 0.5
GENERIC_BOX_LABELS = frozenset({"car", "object"})  # csv-boxes' default box label; Sample's fallback
TEMPLATE = "detection.html"  # in carid/evaluation/templates/
FIGURE_NAME = "detections.png"
SAMPLE_PHOTOS = 6
TILE = (320, 240)  # pixels (width, height) a photo is fitted into in the samples figure; 16 more for its name
TRUE_COLOUR, PREDICTED_COLOUR = (0, 170, 0), (220, 30, 30)


@dataclass(frozen=True, eq=False)
class PhotoDetections:
    """What a detector found in one photo: boxes [N, 4] xyxy photo pixels, scores [N] and, from a
    detect -> identify pipeline, one identity per box (labels; None without)."""

    path: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        boxes, scores = as_boxes(self.boxes), np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(boxes) != len(scores) or (self.labels is not None and len(self.labels) != len(scores)):
            count = "no" if self.labels is None else len(self.labels)
            raise EvaluationError(
                f"{self.path}: {len(boxes)} boxes, {len(scores)} scores and {count} labels; one each per car"
            )
        order = np.argsort(-scores, kind="stable")
        object.__setattr__(self, "boxes", boxes[order])
        object.__setattr__(self, "scores", scores[order])
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels[i] for i in order))

    @classmethod
    def of(cls, path: Path | str, detections: Sequence[Detection], labels: Sequence[str] | None = None):
        """From detections; labels default to theirs (`label`: a pipeline names its cars), if any."""
        labels = [getattr(d, "label", None) for d in detections] if labels is None else labels
        return cls(
            str(path),
            np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4),
            np.array([d.score for d in detections], dtype=np.float64),
            tuple(labels) if any(label is not None for label in labels) else None,
        )

    def above(self, threshold: float) -> PhotoDetections:
        """The detections scoring above `threshold` (as the detector's own threshold keeps them)."""
        keep = self.scores > threshold
        labels = None if self.labels is None else tuple(np.asarray(self.labels, dtype=object)[keep])
        return PhotoDetections(self.path, self.boxes[keep], self.scores[keep], labels)


def true_cars(sample: Sample) -> tuple[np.ndarray, tuple[str | None, ...]]:
    """(the sample's boxes [N, 4], the identity of each: its box label, None when generic)."""
    return sample.boxes, tuple(None if label in GENERIC_BOX_LABELS else label for label in sample.box_labels)


def match(
    pred_boxes: np.ndarray, true_boxes: np.ndarray, min_iou: float = MATCH_IOU
) -> list[tuple[int, int, float]]:
    """COCO's greedy matching: each prediction (best score first) takes the unmatched true box it
    overlaps most, if by at least `min_iou`. Returns (prediction, true box, IoU) per pair."""
    if not len(pred_boxes) or not len(true_boxes):
        return []
    overlaps = iou(pred_boxes, true_boxes)
    free = np.ones(len(true_boxes), dtype=bool)
    pairs = []
    for row in range(len(pred_boxes)):
        options = np.where(free, overlaps[row], -1.0)
        best = int(np.argmax(options))
        if options[best] >= min_iou:
            free[best] = False
            pairs.append((row, best, float(options[best])))
    return pairs


def average_precision(
    samples: Sequence[Sample], predictions: Sequence[PhotoDetections]
) -> dict[str, float | None]:
    """{"ap50", "ap", "ap75"} by COCO's definition (see the module docstring); None without true cars."""
    if not any(sample.has_box for sample in samples):
        return {"ap50": None, "ap": None, "ap75": None}
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
    preds, targets = [], []
    for sample, predicted in zip(samples, predictions, strict=True):
        preds.append(
            {
                "boxes": torch.as_tensor(predicted.boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.as_tensor(predicted.scores, dtype=torch.float32),
                "labels": torch.zeros(len(predicted.scores), dtype=torch.int64),
            }
        )
        targets.append(
            {
                "boxes": torch.as_tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.zeros(len(sample.boxes), dtype=torch.int64),
            }
        )
    metric.update(preds, targets)
    result = metric.compute()

    def value(key: str) -> float | None:
        number = float(result[key])
        return None if number < 0 else number  # -1: COCO's "no true box to score"

    return {"ap50": value("map_50"), "ap": value("map"), "ap75": value("map_75")}


@dataclass(frozen=True)
class DetectionMetrics:
    """A detector's scores on a set of photos (see the module docstring); None where the photos
    cannot give a figure (no true car, no car-free photo, no identity)."""

    num_photos: int
    num_car_photos: int
    num_car_free: int
    num_true_cars: int
    score_threshold: float
    num_detections: int
    num_matched: int
    ap50: float | None
    ap: float | None
    ap75: float | None
    recall: float | None
    precision: float | None
    mean_matched_iou: float | None
    false_positives: int
    car_free_false_positives: int
    false_positives_per_car_free_photo: float | None
    car_free_clean_share: float | None
    identity_checked: int = 0
    identity_correct: int = 0
    match_iou: float = MATCH_IOU

    @property
    def identity_accuracy(self) -> float | None:
        return self.identity_correct / self.identity_checked if self.identity_checked else None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["identity_accuracy"] = self.identity_accuracy
        data["ap_score_floor"] = AP_SCORE_FLOOR
        return data

    def headline(self) -> list[tuple[str, str]]:
        """(name, value) rows for the report and the terminal."""
        at = f"at {self.score_threshold:g}"
        rows = [
            ("AP@0.5", self.ap50),
            ("AP@[.5:.95] (COCO)", self.ap),
            ("AP@0.75", self.ap75),
            (f"recall {at} (IoU >= {self.match_iou:g})", self.recall),
            (f"precision {at}", self.precision),
            ("mean IoU of found cars", self.mean_matched_iou),
            (f"false positives per car-free photo {at}", self.false_positives_per_car_free_photo),
            (f"car-free photos with no detection {at}", self.car_free_clean_share),
        ]
        if self.identity_checked:
            rows.append(
                (f"identification accuracy ({self.identity_checked} found cars)", self.identity_accuracy)
            )
        return [(name, "n/a" if value is None else f"{value:.4f}") for name, value in rows]


def detection_metrics(
    samples: Sequence[Sample],
    predictions: Sequence[PhotoDetections],
    score_threshold: float,
    match_iou: float = MATCH_IOU,
) -> DetectionMetrics:
    """Score `predictions` (one per sample, in order, down to any score: AP uses them all) against
    the samples' boxes; see the module docstring. Raises EvaluationError when they do not line up."""
    if len(samples) != len(predictions):
        raise EvaluationError(f"{len(samples)} photos but {len(predictions)} detection lists; one per photo")
    for sample, predicted in zip(samples, predictions, strict=True):
        if predicted.path != str(sample.path):
            raise EvaluationError(f"detections for {predicted.path} given in the place of {sample.path}")
    threshold = check_threshold(score_threshold)
    counts = {"detections": 0, "matched": 0, "fp": 0, "free_fp": 0, "clean": 0, "checked": 0, "correct": 0}
    ious: list[float] = []
    for sample, predicted in zip(samples, predictions, strict=True):
        kept = predicted.above(threshold)
        true_boxes, identities = true_cars(sample)
        pairs = match(kept.boxes, true_boxes, match_iou)
        counts["detections"] += len(kept.scores)
        counts["matched"] += len(pairs)
        counts["fp"] += len(kept.scores) - len(pairs)
        ious += [pair[2] for pair in pairs]
        if not sample.has_box:
            counts["free_fp"] += len(kept.scores)
            counts["clean"] += not len(kept.scores)
        if kept.labels is not None:
            checked = [(kept.labels[p], identities[t]) for p, t, _ in pairs if identities[t] is not None]
            counts["checked"] += len(checked)
            counts["correct"] += sum(label == truth for label, truth in checked)
    car_photos = sum(sample.has_box for sample in samples)
    car_free = len(samples) - car_photos
    true_count = sum(len(sample.boxes) for sample in samples)
    return DetectionMetrics(
        num_photos=len(samples),
        num_car_photos=car_photos,
        num_car_free=car_free,
        num_true_cars=true_count,
        score_threshold=threshold,
        num_detections=counts["detections"],
        num_matched=counts["matched"],
        **average_precision(samples, predictions),
        recall=counts["matched"] / true_count if true_count else None,
        precision=counts["matched"] / counts["detections"] if counts["detections"] else None,
        mean_matched_iou=float(np.mean(ious)) if ious else None,
        false_positives=counts["fp"],
        car_free_false_positives=counts["free_fp"],
        false_positives_per_car_free_photo=counts["free_fp"] / car_free if car_free else None,
        car_free_clean_share=counts["clean"] / car_free if car_free else None,
        identity_checked=counts["checked"],
        identity_correct=counts["correct"],
        match_iou=match_iou,
    )


# --- running a detector on samples ---------------------------------------------------------------


def open_detector(location: ModelLocation, device: str = "cpu") -> Detector:
    """The detector a located model names: a bundle on ONNX Runtime, a checkpoint on PyTorch."""
    if location.kind == "bundle":
        return Detector.load(location.path)
    if location.kind == "checkpoint":
        return Detector.from_checkpoint(location.path, device=device)
    if location.kind == "pipeline":  # a detector whose detections carry the identifier's names
        from carid.runtime.pipeline import PipelineDetector, PipelinePredictor

        return PipelineDetector(PipelinePredictor.load(location.path))  # type: ignore[return-value]
    raise EvaluationError(f"{location.path}: a {location.kind}, not a car detector")


def detect_samples(
    detector: Detector,
    samples: Sequence[Sample],
    score_floor: float = AP_SCORE_FLOOR,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[list[PhotoDetections | None], list[Problem]]:
    """Every photo's detections above `score_floor` (None for a photo that cannot be read, named
    in the problems)."""
    found: list[PhotoDetections | None] = []
    problems: list[Problem] = []
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        bar.start()
        task = bar.add_task(f"detecting with {detector.name}", total=len(samples))
    try:
        for start in range(0, len(samples), max(1, batch_size)):
            chunk = samples[start : start + max(1, batch_size)]
            photos: list[np.ndarray | None] = []
            for sample in chunk:
                try:
                    photos.append(np.asarray(decode_rgb(sample.path, name=str(sample.path))[0]))
                except ImageError as exc:
                    photos.append(None)
                    problems.append(
                        Problem("unreadable_image", str(exc), sample.source, Severity.ERROR, str(sample.path))
                    )
            readable = [photo for photo in photos if photo is not None]
            answers = iter(
                detector.detect_batch(readable, score_threshold=score_floor, batch_size=batch_size)
            )
            for sample, photo in zip(chunk, photos, strict=True):
                found.append(None if photo is None else PhotoDetections.of(sample.path, next(answers)))
            if bar is not None:
                bar.advance(task, len(chunk))
    finally:
        if bar is not None:
            bar.stop()
    return found, problems


# --- the samples figure --------------------------------------------------------------------------


def _errors(sample: Sample, predicted: PhotoDetections, threshold: float) -> int:
    kept = predicted.above(threshold)
    pairs = match(kept.boxes, sample.boxes)
    return (len(sample.boxes) - len(pairs)) + (len(kept.scores) - len(pairs))


def render_detection_samples(
    samples: Sequence[Sample],
    predictions: Sequence[PhotoDetections],
    score_threshold: float,
    count: int = SAMPLE_PHOTOS,
    columns: int = 3,
) -> bytes | None:
    """A PNG of `count` photos with their true boxes (green) and the detections above the threshold
    (red, with their score); the photos with the most misses and false alarms first. None when no
    photo can be read."""
    ranked = sorted(range(len(samples)), key=lambda i: -_errors(samples[i], predictions[i], score_threshold))
    tiles: list[Image.Image] = []
    for index in ranked:
        if len(tiles) >= count:
            break
        tile = _tile(samples[index], predictions[index].above(score_threshold))
        if tile is not None:
            tiles.append(tile)
    if not tiles:
        return None
    rows = math.ceil(len(tiles) / columns)
    width, height = TILE[0], TILE[1] + 16
    sheet = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for position, tile in enumerate(tiles):
        sheet.paste(tile, ((position % columns) * width, (position // columns) * height))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _tile(sample: Sample, predicted: PhotoDetections) -> Image.Image | None:
    """One photo fitted into TILE (shrunk or enlarged), boxes drawn, its file name below."""
    try:
        image, size = decode_rgb(sample.path, name=str(sample.path), min_side=min(TILE))
    except ImageError:
        return None
    fit = min(TILE[0] / size[0], TILE[1] / size[1])
    image = image.resize((max(1, round(size[0] * fit)), max(1, round(size[1] * fit))))
    scale = (image.width / size[0], image.height / size[1])
    draw_boxes(image, [(box, TRUE_COLOUR) for box in sample.boxes], scale)
    draw_boxes(image, [(box, PREDICTED_COLOUR) for box in predicted.boxes], scale)
    draw = ImageDraw.Draw(image)
    for box, score in zip(predicted.boxes, predicted.scores, strict=True):
        x, y = box[0] * scale[0], box[1] * scale[1]
        draw.rectangle((x, max(0.0, y - 11), x + 28, max(11.0, y)), fill=PREDICTED_COLOUR)
        draw.text((x + 2, max(0.0, y - 11)), f"{score:.2f}", fill=(255, 255, 255))
    tile = Image.new("RGB", (TILE[0], TILE[1] + 16), (255, 255, 255))
    tile.paste(image, ((TILE[0] - image.width) // 2, (TILE[1] - image.height) // 2))
    ImageDraw.Draw(tile).text((4, TILE[1] + 2), sample.path.name[:48], fill=(80, 80, 80))
    return tile


# --- evaluate --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DetectionEvaluation:
    """What `evaluate_detector` produced; `to_dict()` is evaluation.json (plus "paths")."""

    metrics: DetectionMetrics
    model: dict[str, Any]
    data: dict[str, Any]
    split: str
    timing: dict[str, float]
    notes: tuple[Problem, ...]
    samples: tuple[Sample, ...] = field(repr=False)
    predictions: tuple[PhotoDetections, ...] = field(repr=False)
    out_dir: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "carid_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "task": "detect",
            "model": self.model,
            "data": self.data,
            "split": self.split,
            "timing": self.timing,
            "notes": [note.to_dict() for note in self.notes],
            "result": self.metrics.to_dict(),
            "paths": {name: str(path) for name, path in self.paths.items()},
        }

    def summary_lines(self) -> list[str]:
        """A few lines for the terminal."""
        m = self.metrics
        lines = [
            f"{self.model.get('name')} on {self.data.get('origin')} {self.split!r}: {m.num_photos:,} photos "
            f"({m.num_car_photos:,} with {m.num_true_cars:,} cars, {m.num_car_free:,} without)",
            "  " + ", ".join(f"{name} {value}" for name, value in m.headline()[:5]),
            "  " + ", ".join(f"{name} {value}" for name, value in m.headline()[5:]),
        ]
        return lines + [f"  {note.severity}: {note.message}" for note in self.notes if not note.path][:5]


def evaluate_detector(
    model: ModelLocation | Path | str,
    data: Path | str | SampleTable | None = None,
    split: str = "test",
    out_dir: Path | str | None = None,
    *,
    data_format: str | None = None,
    score_threshold: float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    write: bool = True,
    progress: bool = False,
) -> DetectionEvaluation:
    """Evaluate a detector bundle or `task: detect` checkpoint on a split (data and split as in
    `carid.evaluation.evaluate`) and write evaluation.json, detections.csv, report.html and the
    samples figure to `out_dir` (default as for a classifier: RUN/evaluation/SPLIT, else
    outputs/evaluation/NAME-SPLIT, with the data's name when DATA is given; nothing with write=False).

    score_threshold: the operating threshold of recall, precision and the car-free figures
    (default: the detector's own). Raises EvaluationError for anything the user can fix.
    """
    started = time.perf_counter()
    location = model if isinstance(model, ModelLocation) else locate(model)
    if not (is_detector_model(location) or location.kind == "pipeline"):
        raise EvaluationError(
            f"{location.path}: not a car detector (a bundle or run with task: detect) or a pipeline"
        )
    tick = time.perf_counter()
    try:
        detector = open_detector(location, device=device)
        threshold = (
            detector.metadata.score_threshold if score_threshold is None else check_threshold(score_threshold)
        )
    except DetectionError as exc:
        raise EvaluationError(str(exc)) from None
    run_dir = location.run_dir
    if run_dir is None and location.kind == "bundle":
        run = RunDir.of_bundle(DetectorBundle.load(location.path))  # type: ignore[arg-type]
        run_dir = None if run is None else run.path
    timing = {"load_model": time.perf_counter() - tick}
    tick = time.perf_counter()
    evaluation_data = load_evaluation_data(
        data,
        split,
        run_dir=run_dir,
        run_config=load_run_config(run_dir),
        data_format=data_format,
        progress=progress,
    )
    timing["load_data"] = time.perf_counter() - tick
    tick = time.perf_counter()
    found, problems = detect_samples(
        detector, evaluation_data.samples, min(AP_SCORE_FLOOR, threshold), batch_size, progress
    )
    timing["detection"] = time.perf_counter() - tick
    kept = [(s, p) for s, p in zip(evaluation_data.samples, found, strict=True) if p is not None]
    if not kept:
        raise EvaluationError(
            f"none of the {len(evaluation_data.samples)} photos of the {split!r} split could be read"
        )
    samples, predictions = tuple(s for s, _ in kept), tuple(p for _, p in kept if p is not None)
    tick = time.perf_counter()
    metrics = detection_metrics(samples, predictions, threshold)
    timing["metrics"] = time.perf_counter() - tick
    notes = [*evaluation_data.notes, *problems]
    if location.note:
        notes.insert(0, Problem("checkpoint_choice", location.note, str(location.path), Severity.INFO))
    facts = {
        "name": location.path.name if location.kind == "bundle" else location.path.stem,
        "kind": location.kind,
        "path": str(location.path),
        **detector.metadata.summary(),
        "location": location.to_dict(),
    }
    report = DetectionEvaluation(
        metrics, facts, evaluation_data.to_dict(), split, timing, tuple(notes), samples, predictions
    )
    if not write:
        return report
    if out_dir is None:  # as carid.evaluation.evaluate.default_out_dir
        tag = f"{Path(data).expanduser().resolve().name}-{split}" if isinstance(data, str | Path) else split
        out_dir = (
            run_dir / "evaluation" / tag
            if run_dir
            else Path("outputs", "evaluation", f"{facts['name']}-{tag}")
        )
    target = Path(out_dir)
    tick = time.perf_counter()
    paths = write_detection_outputs(report, target)
    timing["report"] = time.perf_counter() - tick
    timing["total"] = time.perf_counter() - started
    report = replace(report, out_dir=target, paths=paths)
    write_json(target / "evaluation.json", report.to_dict())
    return report


def detections_csv(
    samples: Sequence[Sample], predictions: Sequence[PhotoDetections], threshold: float
) -> str:
    """One row per detection above the threshold (outcome "found" or "false_positive") and per true
    car no detection found ("missed"); boxes as x1 y1 x2 y2 photo pixels."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "outcome", "score", "box", "true_box", "iou", "label", "true_label"])

    def text(box: np.ndarray) -> str:
        return " ".join(f"{value:.1f}" for value in box)

    for sample, predicted in zip(samples, predictions, strict=True):
        kept = predicted.above(threshold)
        true_boxes, identities = true_cars(sample)
        pairs = {p: (t, overlap) for p, t, overlap in match(kept.boxes, true_boxes)}
        for row, (box, score) in enumerate(zip(kept.boxes, kept.scores, strict=True)):
            label = "" if kept.labels is None else kept.labels[row]
            t, overlap = pairs.get(row, (-1, 0.0))
            truth = ("", "", "") if t < 0 else (text(true_boxes[t]), f"{overlap:.4f}", identities[t] or "")
            outcome = "false_positive" if t < 0 else "found"
            writer.writerow(
                [str(sample.path), outcome, f"{score:.4f}", text(box), *truth[:2], label, truth[2]]
            )
        found = {t for t, _ in pairs.values()}
        for t, box in enumerate(true_boxes):
            if t not in found:
                writer.writerow([str(sample.path), "missed", "", "", text(box), "", "", identities[t] or ""])
    return buffer.getvalue()


def write_detection_outputs(report: DetectionEvaluation, out_dir: Path) -> dict[str, Path]:
    """detections.csv, figures/detections.png and report.html; returns their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    threshold = report.metrics.score_threshold
    paths: dict[str, Path] = {
        "evaluation": out_dir / "evaluation.json",
        "detections": out_dir / "detections.csv",
    }
    write_atomic(paths["detections"], detections_csv(report.samples, report.predictions, threshold))
    png = render_detection_samples(report.samples, report.predictions, threshold)
    caption = (
        f"True boxes green, detections above {threshold:g} red with their score; the photos with the most "
        "misses and false alarms first"
    )
    figures = [] if png is None else [ReportFigure(FIGURE_NAME, "Sample photos", caption, png)]
    written = write_figures(figures, out_dir, known=(FIGURE_NAME,))
    paths.update({Path(name).stem: path for name, path in written.items()})
    page = render_page(
        "carid.evaluation",
        TEMPLATE,
        title=f"Detector evaluation: {report.model.get('name')} on {report.split}",
        model=report.model,
        data=report.data,
        split=report.split,
        timing=", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.timing.items()),
        metrics=report.metrics,
        headline=report.metrics.headline(),
        figures=figures,
        notes=[note.to_dict() for note in report.notes],
    )
    paths["report"] = out_dir / REPORT_NAME
    write_atomic(paths["report"], page.encode("utf-8"))
    return paths
