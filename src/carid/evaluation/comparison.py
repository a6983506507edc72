"""Models side by side: one summary per model (accuracy, top-5, macro F1, NLL, ECE, IoU), as a
console table, CSV and an HTML page, and `evaluate_ensemble`, which scores every member of an
ensemble and the ensemble itself on the same images and writes that comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carid import __version__
from carid.artifacts.bundle import (
    BundleError,
)
from carid.artifacts.ensemble import MEMBERS_DIR, Ensemble
from carid.artifacts.run_dir import bundle_run_dir, run_split_csv
from carid.evaluation.metric_records import EvaluationResult
from carid.evaluation.metrics import evaluate_predictions
from carid.evaluation.scoring import EvaluationError
from carid.reporting import render_page

if TYPE_CHECKING:
    from carid.data.samples import SampleTable
    from carid.evaluation.evaluate import EvaluationReport

COMPARISON_FILES = ("comparison.json", "comparison.csv", "comparison.html")


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


Cell = tuple[str, bool]  # (text, is the best of its column or row)


def best_in_columns(
    rows: Sequence[Sequence[str]], columns: Sequence[int], lower_is_better: Sequence[int] = ()
) -> list[list[Cell]]:
    """Cells marked best: in each of `columns` the best number (lowest in lower_is_better)."""
    marked = [[(text, False) for text in row] for row in rows]
    for column in columns:
        values = [_float_or_none(row[column]) for row in rows]
        numbers = [value for value in values if value is not None]
        if len(numbers) < 2:
            continue
        best = min(numbers) if column in lower_is_better else max(numbers)
        for row, value in zip(marked, values, strict=True):
            if value == best:
                row[column] = (row[column][0], True)
    return marked


def best_in_rows(rows: Sequence[Sequence[str]]) -> list[list[Cell]]:
    """Cells marked best: in each row the highest number after the first cell."""
    marked = [[(text, False) for text in row] for row in rows]
    for row, raw in zip(marked, rows, strict=True):
        values = [_float_or_none(text) for text in raw[1:]]
        numbers = [value for value in values if value is not None]
        if len(numbers) < 2:
            continue
        for position, value in enumerate(values, start=1):
            if value == max(numbers):
                row[position] = (row[position][0], True)
    return marked


_SCORE_KEYS = ("accuracy", "top5", "macro_f1", "nll", "ece", "mean_iou", "iou_50")


_LOWER_IS_BETTER = ("nll", "ece")


def comparison_html(title: str, summaries: Sequence[ModelSummary], facts: Sequence[tuple[str, str]]) -> str:
    """A self-contained HTML page (`carid/evaluation/templates/models.html`): facts, the side-by-side
    scores (the best of each column in bold) and the F1 of every class per model (the best per class
    in bold). All text is escaped by the template."""
    keys = [key for _, key in TABLE_COLUMNS]
    class_header, class_rows = per_class_rows(summaries)
    return render_page(
        "carid.evaluation",
        "models.html",
        title=title,
        facts=list(facts),
        score_header=[heading for heading, _ in TABLE_COLUMNS],
        score_rows=best_in_columns(
            summary_rows(summaries),
            [keys.index(key) for key in _SCORE_KEYS],
            [keys.index(key) for key in _LOWER_IS_BETTER],
        ),
        class_header=class_header,
        class_rows=best_in_rows(class_rows),
    )


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


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
    evaluation = EnsembleEvaluation(summaries, ensemble_report, member_reports, split, data_name(chosen))
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


def data_name(data: object) -> str:
    """How to name evaluation data in records: its path, or "a SampleTable"."""
    return str(data) if isinstance(data, str | Path) else "a SampleTable"


def default_data(ensemble: Ensemble) -> Path | None:
    """Evaluation data for an ensemble given no DATA: the split.csv of a member's run, if still there."""
    return run_split_csv([bundle_run_dir(bundle) for bundle in ensemble.bundles])
