"""The evaluation report's most-confused-pairs block, its mistaken photos and the run's training curves.

- `confused_pair_rows`: the most confused pairs as plain text rows (true class, taken for, images,
  share of the class, and how often the confusion goes the other way), the readable block a reader
  sees first;
- `pair_examples`: for each pair, up to `MISTAKES_PER_PAIR` mistaken photos (most confident first)
  beside a photo of the class they were taken for; boxes are drawn only when the evaluation has
  them, and `box_legend` says which colours mean what (nothing when no box is drawn);
- `run_folder` / `training_curves`: the training run a model came from (a run folder, a checkpoint
  inside one, or a bundle whose source checkpoint is still there) and its ``curves.png`` (drawn
  from ``metrics.csv`` with `carid.training.plots` when the run has no picture).

Split from `carid.evaluation.report`, which assembles the page.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from carid.artifacts.bundle import Bundle
from carid.artifacts.run_dir import RunDir, is_run_dir
from carid.data.samples import Sample
from carid.errors import CaridError
from carid.evaluation.metric_records import EvaluationResult
from carid.reporting import ReportFigure, data_uri, draw_boxes, jpeg_bytes

MAX_PAIR_ROWS = 15  # pairs named in the text block
MAX_PAIR_EXAMPLES = 12  # pairs shown with photos
MISTAKES_PER_PAIR = 3
THUMB_SIZE = 150  # pixels, longer side of a thumbnail
TRUE_BOX_COLOUR = (40, 200, 60)
PREDICTED_BOX_COLOUR = (235, 40, 40)
CURVES_FILE = "curves.png"  # written by `carid.training.fit` into the run folder
METRICS_FILE = "metrics.csv"

RGB = tuple[int, int, int]


class PairSource(Protocol):
    """What the pair block reads (`carid.evaluation.report.EvaluationView` has it); arrays aligned
    with `samples`."""

    result: EvaluationResult
    samples: Sequence[Sample]
    labels: np.ndarray
    probabilities: np.ndarray
    pred_boxes: np.ndarray | None
    true_boxes: np.ndarray | None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def confused_pair_rows(result: EvaluationResult, limit: int = MAX_PAIR_ROWS) -> list[dict[str, Any]]:
    """The most confused pairs, most images first: names, counts, share of the true class and the
    count the other way round (the predicted class taken for the true one)."""
    rows = []
    for rank, pair in enumerate(result.confused_pairs[:limit], start=1):
        back = int(result.confusion[pair.predicted_index, pair.true_index])
        rows.append(
            {
                "rank": rank,
                "true_name": pair.true_name,
                "predicted_name": pair.predicted_name,
                "count": pair.count,
                "support": int(result.confusion[pair.true_index].sum()),
                "share": _percent(pair.share),
                "back": back,
            }
        )
    return rows


def thumbnail(sample: Sample, boxes: Sequence[tuple[np.ndarray | None, RGB]] = ()) -> bytes | None:
    """A JPEG thumbnail (longer side THUMB_SIZE) with boxes (xyxy photo pixels, colour) drawn; None
    when the image cannot be read."""
    from carid.preprocess import load_image

    try:
        decoded = load_image(sample.path, min_side=THUMB_SIZE)
    except (OSError, ValueError):  # ImageError is a ValueError; a report must not stop at one file
        return None
    image = decoded.image.copy()
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    scale = (image.width / decoded.original_size[0], image.height / decoded.original_size[1])
    draw_boxes(image, boxes, scale)
    return jpeg_bytes(image)


def _has_boxes(boxes: np.ndarray | None) -> bool:
    return boxes is not None and bool(np.isfinite(np.asarray(boxes, dtype=np.float64)).all(axis=1).any())


def box_legend(view: PairSource) -> str:
    """What the box colours on the photos mean; empty when the photos have no boxes drawn."""
    parts = []
    if _has_boxes(view.true_boxes):
        parts.append("true box green")
    if _has_boxes(view.pred_boxes):
        parts.append("predicted box red")
    return f" ({', '.join(parts)})" if parts else ""


def _row_boxes(view: PairSource, row: int, predicted: bool) -> list[tuple[np.ndarray | None, RGB]]:
    boxes: list[tuple[np.ndarray | None, RGB]] = []
    if view.true_boxes is not None:
        boxes.append((view.true_boxes[row], TRUE_BOX_COLOUR))
    if predicted and view.pred_boxes is not None:
        boxes.append((view.pred_boxes[row], PREDICTED_BOX_COLOUR))
    return boxes


def _photo(view: PairSource, row: int, predicted: bool, confidence: float | None = None) -> dict[str, Any]:
    data = thumbnail(view.samples[row], _row_boxes(view, row, predicted))
    return {
        "uri": None if data is None else data_uri(data, "image/jpeg"),
        "name": view.samples[row].path.name,
        "confidence": None if confidence is None else _percent(confidence),
    }


def pair_examples(
    view: PairSource, limit: int = MAX_PAIR_EXAMPLES, per_pair: int = MISTAKES_PER_PAIR
) -> list[dict[str, Any]]:
    """The most confused pairs with, for each, up to `per_pair` mistaken photos (most confident
    first) and a photo of the class they were taken for (its most confident right answer, else any
    sample of it; None when the split has none)."""
    result = view.result
    predicted = view.probabilities.argmax(axis=1)
    confidence = view.probabilities.max(axis=1)
    rows = []
    for pair in result.confused_pairs[:limit]:
        mistakes = np.flatnonzero((view.labels == pair.true_index) & (predicted == pair.predicted_index))
        mistakes = mistakes[np.argsort(-confidence[mistakes], kind="stable")][:per_pair]
        references = np.flatnonzero(view.labels == pair.predicted_index)
        right = references[predicted[references] == pair.predicted_index]
        pool = right if len(right) else references
        reference = None
        if len(pool):
            best = int(pool[np.argmax(view.probabilities[pool, pair.predicted_index])])
            reference = _photo(view, best, predicted=False)
        rows.append(
            {
                "true_name": pair.true_name,
                "predicted_name": pair.predicted_name,
                "count": pair.count,
                "share": _percent(pair.share),
                "mistakes": [_photo(view, int(row), True, float(confidence[row])) for row in mistakes],
                "reference": reference,
            }
        )
    return rows


def run_folder(model: Mapping[str, Any]) -> Path | None:
    """The training run folder of an evaluated model (`ScoreSource.describe()` plus its "location"):
    the location's run folder, else for a bundle the run of its source checkpoint when still there."""
    location = model.get("location") or {}
    if location.get("run_dir"):
        return Path(location["run_dir"])
    if model.get("kind") == "bundle" and model.get("path"):
        try:
            run = RunDir.of_bundle(Bundle.load(model["path"]))
        except (CaridError, OSError):
            return None
        return None if run is None else run.path
    return None


def training_curves(run_dir: Path | None) -> ReportFigure | None:
    """The run's training curves as a report figure: its curves.png, else drawn from metrics.csv;
    None without a run folder or when it has neither."""
    if run_dir is None or not is_run_dir(run_dir):
        return None
    caption = f"Loss and accuracy per epoch of the run {run_dir.name} ({run_dir})."
    picture = run_dir / CURVES_FILE
    if picture.is_file():
        return ReportFigure(CURVES_FILE, "Training curves", caption, picture.read_bytes())
    if not (run_dir / METRICS_FILE).is_file():
        return None
    from carid.training.plots import plot_curves  # matplotlib only; drawn once, in a temporary folder

    with tempfile.TemporaryDirectory() as folder:
        drawn = plot_curves(run_dir / METRICS_FILE, Path(folder) / CURVES_FILE, title=run_dir.name)
        if drawn is None:
            return None
        return ReportFigure(CURVES_FILE, "Training curves", caption, drawn.read_bytes())
