"""The evaluation report: PNG figures and one self-contained HTML page for one model on one split.

`write_evaluation_report(view, out_dir)` writes ``out_dir/report.html`` (every figure and thumbnail
embedded as a base64 data URI, so the single file can be mailed) and the figures as PNG files in
``out_dir/figures/``:

    confusion.png       the whole confusion matrix, rows normalized (share of the true class),
                        classes in `EvaluationResult.display_order` (grouped by make, with thin lines
                        between makes); folded on the page above FOLD_CLASSES classes (a 196-class
                        matrix cannot be read at page width)
    confusion_top.png   the classes of the most confused pairs only (up to 16), counts in every cell
    reliability.png     reliability diagram (accuracy vs confidence per bin) and the bin counts
    per_class_f1.png    F1 of every class, sorted, worst at the top (the 30 weakest of many classes)
    iou.png             histogram of the IoU of predicted vs true boxes (only with boxes)
    curves.png          the training curves of the model's run, when its run folder is known

The page shows the headline scores, taxonomy-level accuracies, the most confused pairs as a text
table (with how often each goes the other way), calibration (ECE, NLL and, when fitted, the
temperature and the "unknown" threshold), notes about the data (unknown labels, unreadable images),
up to three mistaken photos per confused pair beside a photo of the class they were taken for (boxes
drawn, and named in the caption, only when the evaluation has them; `carid.evaluation.report_pairs`),
the figures and a per-class table.

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
from carid.evaluation.report_pairs import (
    CURVES_FILE,
    MISTAKES_PER_PAIR,
    box_legend,
    confused_pair_rows,
    pair_examples,
    training_curves,
)
from carid.files import write_atomic
from carid.reporting import REPORT_NAME, ReportFigure, add_figure, render_page, write_figures
from carid.taxonomy import Taxonomy

TEMPLATE = "evaluation.html"  # in carid/evaluation/templates/
FIGURE_FILES = frozenset(
    {"confusion.png", "confusion_top.png", "reliability.png", "per_class_f1.png", "iou.png", CURVES_FILE}
)
MAX_TICK_LABELS = 250  # above this, the full confusion matrix has no class names on its axes
MAX_ZOOM_CLASSES = 16  # classes in the zoomed confusion matrix (its counts stay legible)
FOLD_CLASSES = 40  # above this, the full confusion matrix is folded and the F1 chart shows the weakest
WEAKEST_SHOWN = 30  # classes in the F1 chart of a many-class model


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
    run_dir: the training run folder of the model, when known; its curves are shown.
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
    run_dir: Path | None = None


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
    side = 0.55 * len(classes) + 3.6  # inches: ~55 px cells, room for the class names
    figure = Figure(figsize=(min(side, 11.5), side), layout="constrained")
    axis = figure.add_subplot()
    off_diagonal = counts.astype(np.float64)
    np.fill_diagonal(off_diagonal, np.nan)
    axis.imshow(off_diagonal, cmap="Reds", interpolation="nearest", vmin=0)
    peak = max(1, int(np.nanmax(off_diagonal))) if np.isfinite(off_diagonal).any() else 1
    for row in range(len(classes)):
        for column in range(len(classes)):
            value = int(counts[row, column])
            if value or row == column:
                colour = "black" if row == column or value < 0.6 * peak else "white"
                weight = "bold" if row == column else "normal"
                axis.text(
                    column,
                    row,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=11,
                    color=colour,
                    weight=weight,
                )
    names = [result.class_names[i] for i in classes]
    axis.set_xticks(range(len(classes)), names, rotation=90, fontsize=9)
    axis.set_yticks(range(len(classes)), names, fontsize=9)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title("Most confused classes: images (rows true, columns predicted; bold = right)")
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
    total = len(rows)
    if total > FOLD_CLASSES:  # the weakest only: a bar per class of 196 is a 3,000-pixel figure
        rows = rows[-WEAKEST_SHOWN:]
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
    axis.set_title(
        "Per-class F1, sorted (red: below 0.5)"
        + (f": the {len(rows)} weakest of {total} classes" if len(rows) < total else "")
    )
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
        f"The classes of the most confused pairs (up to {MAX_ZOOM_CLASSES}); each cell counts images "
        "(row: true class, column: predicted class; the diagonal, in bold, the right answers).",
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
        "Classes without samples in this split are left out"
        + (
            f"; the {WEAKEST_SHOWN} weakest shown, every class in the per-class table."
            if sum(m.support > 0 for m in result.per_class) > FOLD_CLASSES
            else "."
        ),
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
    curves = training_curves(view.run_dir)
    if curves is not None:
        figures.append(curves)
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
        pair_rows=confused_pair_rows(result),
        pairs=pair_examples(view),
        box_legend=box_legend(view),
        max_mistakes=MISTAKES_PER_PAIR,
        curves=curves,
        figures=[figure for figure in figures if figure is not curves],
        folded={"confusion.png"} if len(result.class_names) > FOLD_CLASSES else set(),
        per_class=per_class_rows(result),
    )
    report = out_dir / REPORT_NAME
    write_atomic(report, page.encode("utf-8"))
    paths["report"] = report
    return paths
