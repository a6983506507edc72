"""The evaluation report: PNG figures and one self-contained HTML page for one model on one split.

`write_evaluation_report(view, out_dir)` writes ``out_dir/report.html`` (every figure and thumbnail
embedded as a base64 data URI, so the single file can be mailed) and the figures as PNG files in
``out_dir/figures/``:

    confusion.png       the whole confusion matrix, rows normalized (share of the true class),
                        classes in `EvaluationResult.display_order` (grouped by make, with thin lines
                        between makes), sized so 196 class names stay legible
    confusion_top.png   the classes of the most confused pairs only, with counts written in
    reliability.png     reliability diagram (accuracy vs confidence per bin) and the bin counts
    per_class_f1.png    F1 of every class, sorted, worst at the top
    iou.png             histogram of the IoU of predicted vs true boxes (only with boxes)

The page shows the headline scores, taxonomy-level accuracies, calibration (ECE, NLL and, when
fitted, the temperature and the "unknown" threshold), notes about the data (unknown labels,
unreadable images), the most confused pairs with a thumbnail of a mistaken photo (true box green,
predicted box red) beside a photo of the class it was taken for, and a per-class table.

Figures, files and the page go through `carid.reporting`, shared with `carid.data.eda` and
`carid.evaluation.compare`: matplotlib's object API on the Agg canvas (no pyplot state, no display)
and Jinja2 with autoescaping, so class names and file names cannot inject markup;
`templates/evaluation.html` extends the shared base page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from carid.data.samples import Problem, Sample
from carid.evaluation.metric_records import EvaluationResult
from carid.files import write_atomic
from carid.reporting import (
    REPORT_NAME,
    ReportFigure,
    add_figure,
    data_uri,
    draw_boxes,
    jpeg_bytes,
    render_page,
    write_figures,
)
from carid.taxonomy import Taxonomy

TEMPLATE = "evaluation.html"  # in carid/evaluation/templates/
FIGURE_FILES = frozenset(
    {"confusion.png", "confusion_top.png", "reliability.png", "per_class_f1.png", "iou.png"}
)
MAX_TICK_LABELS = 250  # above this, the full confusion matrix has no class names on its axes
MAX_ZOOM_CLASSES = 30  # classes in the zoomed confusion matrix
MAX_PAIR_EXAMPLES = 12  # confused pairs shown with thumbnails
THUMB_SIZE = 150  # pixels, longer side of a thumbnail
TRUE_BOX_COLOUR = (40, 200, 60)
PREDICTED_BOX_COLOUR = (235, 40, 40)


# ----------------------------------------------------------------------------------------------
# Formatting


def _percent(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------------------------
# What the report shows


@dataclass(frozen=True, eq=False)
class EvaluationView:
    """Everything the report draws; arrays are aligned with `samples` (the scored samples).

    labels: int64 [N], model class index or -1 (unknown / unlabeled).
    probabilities: float [N, C]. pred_boxes: float [N, 4] xyxy photo pixels, or None.
    true_boxes: float [N, 4] with NaN rows for images without a box, or None.
    iou: float [N], NaN where there is no true box, or None without boxes.
    facts: (name, text) rows about the model, data and timing. notes: data problems to show.
    calibration: `CalibrationFit.to_dict()` when a temperature was fitted.
    """

    title: str
    result: EvaluationResult
    samples: Sequence[Sample]
    labels: np.ndarray
    probabilities: np.ndarray
    pred_boxes: np.ndarray | None = None
    true_boxes: np.ndarray | None = None
    iou: np.ndarray | None = None
    taxonomy: Taxonomy | None = None
    facts: Sequence[tuple[str, str]] = ()
    notes: Sequence[Problem] = ()
    calibration: Mapping[str, Any] | None = None


# ----------------------------------------------------------------------------------------------
# Figures


def _make_boundaries(order: Sequence[int], taxonomy: Taxonomy | None) -> list[float]:
    """Positions (between display rows) where the make changes, for the separator lines."""
    if taxonomy is None:
        return []
    makes = taxonomy.labels("make")
    return [
        position - 0.5
        for position in range(1, len(order))
        if makes[order[position]] != makes[order[position - 1]]
    ]


def confusion_figure(result: EvaluationResult, taxonomy: Taxonomy | None = None) -> Figure:
    """The full confusion matrix, each row divided by its support, classes in display order."""
    order = list(result.display_order)
    counts = result.confusion[np.ix_(order, order)].astype(np.float64)
    support = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
    num_classes = len(order)
    cell = 0.14  # inches per class: ~10 pt rows, enough for a 7 pt class name
    side = float(np.clip(4.0 + cell * num_classes, 6.0, 34.0))
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    axis = figure.add_subplot()
    # A square-root colour scale, so that the few-percent confusions of a 196-class matrix show.
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = axis.imshow(shares, cmap="Blues", norm=norm, interpolation="nearest", aspect="equal")
    figure.colorbar(image, ax=axis, shrink=0.5, label="share of the true class (square-root scale)")
    for boundary in _make_boundaries(order, taxonomy):
        axis.axhline(boundary, color="#d0d0d0", linewidth=0.4)
        axis.axvline(boundary, color="#d0d0d0", linewidth=0.4)
    if num_classes <= MAX_TICK_LABELS:
        names = [result.class_names[i] for i in order]
        font = float(np.clip(0.75 * 72 * min(cell, (side - 4.0) / max(1, num_classes)), 3.0, 9.0))
        axis.set_xticks(range(num_classes), names, rotation=90, fontsize=font)
        axis.set_yticks(range(num_classes), names, fontsize=font)
    else:
        axis.set_xticks([])
        axis.set_yticks([])
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(
        f"Confusion matrix ({num_classes} classes, {result.num_labeled:,} labeled images, "
        f"top-1 {_percent(result.accuracy)})"
    )
    return figure


def zoom_classes(result: EvaluationResult, limit: int = MAX_ZOOM_CLASSES) -> list[int]:
    """Class indices of the most confused pairs (at most `limit`), in display order."""
    chosen: list[int] = []
    for pair in result.confused_pairs:
        for index in (pair.true_index, pair.predicted_index):
            if index not in chosen and len(chosen) < limit:
                chosen.append(index)
    rank = {index: position for position, index in enumerate(result.display_order)}
    return sorted(chosen, key=lambda index: rank[index])


def confusion_zoom_figure(result: EvaluationResult, limit: int = MAX_ZOOM_CLASSES) -> Figure | None:
    """The confusion counts among the classes of the most confused pairs; None when nothing is confused."""
    classes = zoom_classes(result, limit)
    if len(classes) < 2:
        return None
    counts = result.confusion[np.ix_(classes, classes)]
    size = float(np.clip(3.0 + 0.42 * len(classes), 5.0, 16.0))
    figure = Figure(figsize=(size + 2.5, size + 1.5), layout="constrained")
    axis = figure.add_subplot()
    off_diagonal = counts.astype(np.float64)
    np.fill_diagonal(off_diagonal, np.nan)
    axis.imshow(off_diagonal, cmap="Reds", interpolation="nearest")
    peak = max(1, int(np.nanmax(off_diagonal))) if np.isfinite(off_diagonal).any() else 1
    for row in range(len(classes)):
        for column in range(len(classes)):
            value = int(counts[row, column])
            if value:
                colour = "black" if row == column or value < 0.6 * peak else "white"
                weight = "bold" if row == column else "normal"
                axis.text(
                    column, row, str(value), ha="center", va="center", fontsize=7, color=colour, weight=weight
                )
    names = [result.class_names[i] for i in classes]
    axis.set_xticks(range(len(classes)), names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(classes)), names, fontsize=7)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title("Most confused classes (counts; diagonal = correct, in bold)")
    return figure


def reliability_figure(result: EvaluationResult) -> Figure:
    """Accuracy against mean confidence per bin (perfect calibration on the diagonal), and bin counts."""
    calibration = result.calibration
    figure = Figure(figsize=(6.5, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    lowers = np.array([b.lower for b in calibration.bins])
    widths = np.array([b.upper - b.lower for b in calibration.bins])
    accuracy = np.array([np.nan if b.accuracy is None else b.accuracy for b in calibration.bins])
    confidence = np.array([np.nan if b.confidence is None else b.confidence for b in calibration.bins])
    filled = np.isfinite(accuracy)
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    top.bar(
        lowers[filled],
        accuracy[filled],
        width=widths[filled],
        align="edge",
        color="#4c72b0",
        edgecolor="white",
        label="accuracy",
    )
    top.bar(
        lowers[filled],
        confidence[filled] - accuracy[filled],
        bottom=accuracy[filled],
        width=widths[filled],
        align="edge",
        color="#dd8452",
        alpha=0.45,
        edgecolor="none",
        label="gap to confidence",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability: ECE {calibration.ece:.4f}, NLL {calibration.nll:.3f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(
        lowers,
        [b.count for b in calibration.bins],
        width=widths,
        align="edge",
        color="#8c8c8c",
        edgecolor="white",
    )
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("images")
    return figure


def per_class_f1_figure(result: EvaluationResult) -> Figure:
    """Horizontal bars of per-class F1, worst at the top; classes without samples are left out."""
    rows = sorted((m for m in result.per_class if m.support > 0), key=lambda m: (m.f1, m.name), reverse=True)
    height = float(np.clip(1.5 + 0.16 * len(rows), 3.0, 40.0))
    figure = Figure(figsize=(8.5, height), layout="constrained")
    axis = figure.add_subplot()
    positions = np.arange(len(rows))
    colours = ["#c0392b" if m.f1 < 0.5 else "#4c72b0" for m in rows]
    axis.barh(positions, [m.f1 for m in rows], color=colours)
    font = 7 if len(rows) > 40 else 9
    axis.set_yticks(positions, [f"{m.name} ({m.support})" for m in rows], fontsize=font)
    axis.set_ylim(-0.5, len(rows) - 0.5)
    axis.set_xlim(0, 1)
    axis.axvline(
        result.macro.f1, color="black", linestyle="--", linewidth=1, label=f"macro F1 {result.macro.f1:.3f}"
    )
    axis.set_xlabel("F1 (support in brackets)")
    axis.set_title("Per-class F1, sorted (red: below 0.5)")
    axis.legend(loc="lower right", fontsize=8)
    return figure


def iou_figure(iou: np.ndarray) -> Figure | None:
    """Histogram of per-image IoU (finite values only); None when there is none."""
    values = np.asarray(iou, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    figure = Figure(figsize=(7, 4), layout="constrained")
    axis = figure.add_subplot()
    axis.hist(values, bins=np.linspace(0, 1, 21), color="#55a868", edgecolor="white")
    for threshold in (0.5, 0.75):
        axis.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    axis.set_xlim(0, 1)
    axis.set_xlabel("IoU of predicted vs true box")
    axis.set_ylabel("images")
    axis.set_title(
        f"Box IoU: {len(values):,} images, mean {values.mean():.3f}, "
        f"IoU >= 0.5 for {100 * (values >= 0.5).mean():.1f}%"
    )
    return figure


def evaluation_figures(view: EvaluationView) -> list[ReportFigure]:
    """Every figure of the report, as PNG bytes with a title and caption."""
    result = view.result
    figures: list[ReportFigure] = []
    add = partial(add_figure, figures)  # add(name, title, caption, figure or None)

    add(
        "confusion.png",
        "Confusion matrix",
        "Rows: true class, columns: predicted class; each row divided by the class's support. "
        + (
            "Classes grouped by make (thin lines between makes)."
            if view.taxonomy
            else "Classes sorted by name."
        ),
        confusion_figure(result, view.taxonomy),
    )
    add(
        "confusion_top.png",
        "Most confused classes",
        f"The classes of the most confused pairs (up to {MAX_ZOOM_CLASSES}), counts of images.",
        confusion_zoom_figure(result),
    )
    add(
        "reliability.png",
        "Calibration",
        f"{result.calibration.num_bins} equal-width confidence bins; bars under the diagonal: overconfident.",
        reliability_figure(result),
    )
    add(
        "per_class_f1.png",
        "Per-class F1",
        "Classes without samples in this split are left out.",
        per_class_f1_figure(result),
    )
    if view.iou is not None:
        add(
            "iou.png",
            "Box IoU",
            "Images with a true box; dashed lines at IoU 0.5 and 0.75.",
            iou_figure(view.iou),
        )
    return figures


# ----------------------------------------------------------------------------------------------
# Thumbnails of the most confused pairs


def thumbnail(sample: Sample, boxes: Sequence[tuple[np.ndarray, tuple[int, int, int]]] = ()) -> bytes | None:
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


def _box_row(boxes: np.ndarray | None, row: int) -> np.ndarray | None:
    return None if boxes is None else boxes[row]


def pair_examples(view: EvaluationView, limit: int = MAX_PAIR_EXAMPLES) -> list[dict[str, Any]]:
    """The most confused pairs with, for each, the most confident mistake and a photo of the class it
    was taken for (its most confident right answer, else any sample of it)."""
    result = view.result
    predicted = view.probabilities.argmax(axis=1)
    confidence = view.probabilities.max(axis=1)
    rows = []
    for pair in result.confused_pairs[:limit]:
        mistakes = np.flatnonzero((view.labels == pair.true_index) & (predicted == pair.predicted_index))
        references = np.flatnonzero(view.labels == pair.predicted_index)
        right = references[predicted[references] == pair.predicted_index]
        mistake_uri = reference_uri = None
        mistake_name = reference_name = ""
        mistake_confidence = None
        if len(mistakes):
            row = int(mistakes[np.argmax(confidence[mistakes])])
            data = thumbnail(
                view.samples[row],
                [
                    (_box_row(view.true_boxes, row), TRUE_BOX_COLOUR),
                    (_box_row(view.pred_boxes, row), PREDICTED_BOX_COLOUR),
                ],
            )
            mistake_uri = None if data is None else data_uri(data, "image/jpeg")
            mistake_name = view.samples[row].path.name
            mistake_confidence = float(confidence[row])
        pool = right if len(right) else references
        if len(pool):
            row = int(pool[np.argmax(view.probabilities[pool, pair.predicted_index])])
            data = thumbnail(view.samples[row], [(_box_row(view.true_boxes, row), TRUE_BOX_COLOUR)])
            reference_uri = None if data is None else data_uri(data, "image/jpeg")
            reference_name = view.samples[row].path.name
        rows.append(
            {
                "true_name": pair.true_name,
                "predicted_name": pair.predicted_name,
                "count": pair.count,
                "share": _percent(pair.share),
                "mistake_uri": mistake_uri,
                "mistake_name": mistake_name,
                "mistake_confidence": _percent(mistake_confidence),
                "reference_uri": reference_uri,
                "reference_name": reference_name,
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# The page


def headline_rows(result: EvaluationResult) -> list[tuple[str, str]]:
    """(name, value) rows of the main scores."""
    rows = [(f"top-{k} accuracy", _percent(value, 2)) for k, value in sorted(result.top_k_accuracy.items())]
    rows += [
        (
            "macro precision / recall / F1",
            f"{result.macro.precision:.4f} / {result.macro.recall:.4f} / {result.macro.f1:.4f}",
        ),
        ("weighted F1", f"{result.weighted.f1:.4f}"),
        ("ECE / NLL", f"{result.calibration.ece:.4f} / {result.calibration.nll:.4f}"),
        ("images / labeled", f"{result.num_samples:,} / {result.num_labeled:,}"),
    ]
    if result.boxes is not None:
        boxes = result.boxes
        rows += [
            (
                "box IoU mean / median",
                f"{_number(boxes.mean_iou, 3)} / {_number(boxes.median_iou, 3)} "
                f"({boxes.count:,} images with a box)",
            ),
            ("IoU >= 0.5 / >= 0.75", f"{_percent(boxes.share_iou_50)} / {_percent(boxes.share_iou_75)}"),
            ("right class and IoU >= 0.5", _percent(boxes.correct_and_found)),
        ]
    if result.rejection is not None:
        rejection = result.rejection
        rows.append(
            (
                f"answering at confidence >= {rejection.threshold:.3f}",
                f"coverage {_percent(rejection.coverage)}, "
                f"accuracy on answered {_percent(rejection.answered_accuracy)}",
            )
        )
    return rows


def per_class_rows(result: EvaluationResult) -> list[dict[str, Any]]:
    """Per-class metrics, worst F1 first (classes without samples last)."""
    ordered = sorted(result.per_class, key=lambda m: (m.support == 0, m.f1, m.name))
    return [
        {
            "name": m.name,
            "support": m.support,
            "predicted": m.predicted,
            "precision": f"{m.precision:.3f}",
            "recall": f"{m.recall:.3f}",
            "f1": f"{m.f1:.3f}",
            "weak": m.support > 0 and m.f1 < 0.5,
        }
        for m in ordered
    ]


def write_evaluation_report(view: EvaluationView, out_dir: Path | str) -> dict[str, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/figures/*.png``.

    Returns {"report": html path, figure stem ("confusion", ...): png path}.
    """
    out_dir = Path(out_dir)
    figures = evaluation_figures(view)
    written = write_figures(figures, out_dir, known=FIGURE_FILES)
    paths = {Path(name).stem: path for name, path in written.items()}
    result = view.result
    page = render_page(
        "carid.evaluation",
        TEMPLATE,
        title=view.title,
        facts=list(view.facts),
        headline=headline_rows(result),
        levels=[
            (level.level.replace("_", " "), _percent(level.accuracy, 2), level.num_values)
            for level in result.taxonomy_levels
        ],
        calibration=view.calibration,
        notes=[note.to_dict() for note in view.notes],
        pairs=pair_examples(view),
        figures=figures,
        per_class=per_class_rows(result),
    )
    report = out_dir / REPORT_NAME
    write_atomic(report, page.encode("utf-8"))
    paths["report"] = report
    return paths
