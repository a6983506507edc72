"""Compare training runs: one table (terminal, CSV, HTML) and overlaid training curves.

`compare_runs(run_dirs, metric="val/acc", out_dir)` reads each run folder written by
`carid.training.fit.train` (config.yaml, metrics.csv, summary.json, checkpoints/) and returns a
`ComparisonResult` with one `RunSummary` per run: backbone, image size, optimizer, learning rate,
epochs, label level, classes, parameters (counted from the checkpoint), the best value of `metric`
over the epochs, the final train/val loss, accuracy and IoU, the test metrics of summary.json,
the top-1 of `carid evaluate`'s default output (`<run>/evaluation/test/evaluation.json`) when
there is one, and the wall time. Runs may differ in anything (backbone, input size, optimizer,
number of classes); a value a run does not have is left empty, never guessed.

The best run is the one with the highest `metric`, or the lowest for a loss-like metric (the last
part of the name contains "loss", "nll", "ece" or "error": the mode is inferred, as Lightning's
checkpointing in `fit.py` does for its monitor). A metric named "test/..." is read from the
summary's test metrics; any other from the per-epoch records of metrics.csv (the best epoch wins).

Files in `out_dir`: comparison.csv (raw values), comparison.json (`to_dict()`), comparison.html
(self-contained, the best row highlighted, curves embedded) and curves.png (validation accuracy,
validation loss with train loss dashed, and validation IoU when logged, one colour per run).

config.yaml is read as plain YAML rather than validated into `Config`, so runs made by older
versions (with keys since renamed) can still be compared.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from carid.artifacts.run_dir import RunDir, is_run_dir
from carid.data.text import console_text
from carid.errors import CaridError
from carid.files import write_atomic
from carid.reporting import data_uri, figure_png, render_page
from carid.training.plots import epoch_metrics

COMPARE_TEMPLATE = "compare.html"
LOWER_IS_BETTER = ("loss", "nll", "ece", "error")
FINAL_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/iou")
EVALUATION_JSON = Path("evaluation") / "test" / "evaluation.json"
WIDE_TERMINAL = 160  # characters; narrower terminals get the NARROW_COLUMNS of the table
NARROW_COLUMNS = frozenset(
    {"run", "backbone", "size", "optimizer", "lr", "epochs", "val acc", "test acc", "time"}
)


class CompareError(CaridError, ValueError):
    """A path that is not a run folder, or nothing to compare; the message names the path."""


def metric_mode(metric: str) -> str:
    """ "min" for loss-like metrics (see the module docstring), else "max"."""
    last = metric.split("/")[-1].lower()
    return "min" if any(word in last for word in LOWER_IS_BETTER) else "max"


def has_metrics(path: Path) -> bool:
    """A run folder (`carid.artifacts.run_dir.is_run_dir`) that has logged metrics to compare."""
    return is_run_dir(path) and RunDir(path).metrics.is_file()


def expand_run_dirs(paths: Iterable[Path | str]) -> list[Path]:
    """Run folders from the given paths: a run folder itself, or every run folder directly inside a
    folder (e.g. `runs/`). Raises CompareError naming a path that holds no run."""
    found: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if not path.exists():
            raise CompareError(f"{path}: no such folder")
        if has_metrics(path):
            candidates = [path]
        elif path.is_dir():
            candidates = sorted(child for child in path.iterdir() if has_metrics(child))
            if not candidates:
                raise CompareError(f"{path}: not a run folder (no config.yaml + metrics.csv) and holds none")
        else:
            raise CompareError(f"{path}: not a run folder")
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved not in found:
                found.append(resolved)
    return found


# ----------------------------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class RunSummary:
    """What one run folder says (None: the run does not record it).

    best_metric / best_epoch: the best value of the compared metric and its epoch (0-based here; the
    table shows it counted from 1, as the training console does; None for test metrics). final: the
    last epoch's FINAL_METRICS. test: summary.json's test metrics.
    evaluation: top1 / top5 / macro_f1 / ece of `<run>/evaluation/test/evaluation.json`.
    curves: one record per epoch (`epoch_metrics`), for the plots.
    """

    name: str
    run_dir: Path
    backbone: str | None = None
    image_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    epochs_completed: int | None = None
    planned_epochs: int | None = None
    label_level: str | None = None
    num_classes: int | None = None
    parameters: int | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    final: Mapping[str, float | None] = field(default_factory=dict)
    test: Mapping[str, float] = field(default_factory=dict)
    evaluation: Mapping[str, float] = field(default_factory=dict)
    seconds: float | None = None
    notes: tuple[str, ...] = ()
    curves: tuple[Mapping[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "backbone": self.backbone,
            "image_size": self.image_size,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "epochs_completed": self.epochs_completed,
            "planned_epochs": self.planned_epochs,
            "label_level": self.label_level,
            "num_classes": self.num_classes,
            "parameters": self.parameters,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "final": dict(self.final),
            "test": dict(self.test),
            "evaluation": dict(self.evaluation),
            "seconds": self.seconds,
            "notes": list(self.notes),
        }


def _read_mapping(path: Path, notes: list[str]) -> dict[str, Any]:
    """A run file's mapping: JSON, or YAML for .yaml files; {} with a note when it cannot be read
    ({} without one when a JSON file is not there: not every run writes every file)."""
    is_yaml = path.suffix == ".yaml"
    if not is_yaml and not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if is_yaml else json.loads(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        notes.append(f"{path.name} unreadable ({exc})")
        return {}
    return data if isinstance(data, dict) else {}


def _section(config: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = config.get(name)
    return value if isinstance(value, Mapping) else {}


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


NORMALIZATION_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def count_parameters(checkpoint: Path) -> int:
    """Number of trainable-weight values (parameters, not buffers) of the network in a carid checkpoint.

    The network is rebuilt from the checkpoint's metadata on PyTorch's "meta" device (shapes only,
    no memory, no weights read); when that fails, the stored tensors are counted without the
    normalization statistics (BatchNorm running mean / variance / count).
    """
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # an old-format file that cannot be memory-mapped
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        from carid.artifacts.checkpoint import CHECKPOINT_KEY, ModelMetadata
        from carid.models.network import build_network

        metadata = ModelMetadata.from_dict(state[CHECKPOINT_KEY], source=str(checkpoint))
        config = replace(metadata.model_config(), pretrained="none")
        with torch.device("meta"):
            network = build_network(config, num_classes=metadata.num_classes, with_box=metadata.with_box)
        return int(sum(parameter.numel() for parameter in network.parameters()))
    except Exception:  # an odd or older checkpoint: count what is stored instead
        weights = state.get("state_dict", {})
        return int(
            sum(
                tensor.numel()
                for key, tensor in weights.items()
                if key.startswith("network.") and not key.endswith(NORMALIZATION_BUFFERS)
            )
        )


def _best(records: Sequence[Mapping[str, float]], metric: str, mode: str) -> tuple[float | None, int | None]:
    points = [(record[metric], int(record["epoch"])) for record in records if metric in record]
    if not points:
        return None, None
    pick = (
        max(points, key=lambda p: (p[0], -p[1])) if mode == "max" else min(points, key=lambda p: (p[0], p[1]))
    )
    return float(pick[0]), pick[1]


def summarize_run(run_dir: Path | str, metric: str = "val/acc") -> RunSummary:
    """Read one run folder (see the module docstring); what is missing is noted, not guessed."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    config = _read_mapping(RunDir(run_dir).config, notes)
    model, train = _section(config, "model"), _section(config, "train")
    data = _section(config, "data")
    summary = _read_mapping(run_dir / "summary.json", notes)
    if not summary:
        notes.append("no summary.json (the run did not finish)")
    records = tuple(epoch_metrics(RunDir(run_dir).metrics))
    last = records[-1] if records else {}

    test = {str(k): float(v) for k, v in (summary.get("test_metrics") or {}).items() if _float(v) is not None}
    mode = metric_mode(metric)
    if metric.startswith("test/"):
        best, best_epoch = test.get(metric), None
    else:
        best, best_epoch = _best(records, metric, mode)
    if best is None:
        notes.append(f"{metric} not recorded")

    parameters = None
    for checkpoint in (RunDir(run_dir).best_checkpoint, RunDir(run_dir).last_checkpoint):
        name = checkpoint.name
        if checkpoint.is_file():
            try:
                parameters = count_parameters(checkpoint)
            except (OSError, RuntimeError, ValueError) as exc:
                notes.append(f"cannot count parameters in {name} ({exc})")
            break
    else:
        notes.append("no checkpoint")

    evaluation: dict[str, float] = {}
    evaluated = _read_mapping(run_dir / EVALUATION_JSON, notes).get("result") or {}
    if evaluated:
        top_k = evaluated.get("top_k_accuracy") or {}
        values = {
            "top1": top_k.get("top1"),
            "top5": top_k.get("top5"),
            "macro_f1": (evaluated.get("macro") or {}).get("f1"),
            "ece": (evaluated.get("calibration") or {}).get("ece"),
        }
        evaluation = {key: float(value) for key, value in values.items() if _float(value) is not None}

    size = model.get("image_size")
    epochs_completed = summary.get("epochs_completed")
    if epochs_completed is None and records:
        epochs_completed = int(last["epoch"]) + 1
    return RunSummary(
        name=str(summary.get("name") or run_dir.name),
        run_dir=run_dir,
        backbone=model.get("backbone"),
        image_size=int(size) if isinstance(size, int | float) else None,
        optimizer=train.get("optimizer"),
        lr=_float(summary.get("lr", train.get("lr"))),
        epochs_completed=None if epochs_completed is None else int(epochs_completed),
        planned_epochs=summary.get("planned_epochs", train.get("epochs")),
        label_level=summary.get("label_level", data.get("label_level")),
        num_classes=summary.get("num_classes"),
        parameters=parameters,
        best_metric=best,
        best_epoch=best_epoch,
        final={name: _float(last.get(name)) for name in FINAL_METRICS},
        test=test,
        evaluation=evaluation,
        seconds=_float(summary.get("seconds")),
        notes=tuple(notes),
        curves=records,
    )


# ----------------------------------------------------------------------------------------------
# The comparison


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return ""
    if kind == "int":
        return f"{int(value):,}"
    if kind == "lr":
        return f"{value:.2g}"
    if kind == "seconds":
        return f"{value / 60:.1f} min" if value >= 120 else f"{value:.0f} s"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@dataclass(frozen=True)
class ComparisonResult:
    """Runs side by side. best: index into `runs` of the best by `metric` (None if no run has it)."""

    metric: str
    mode: str
    runs: tuple[RunSummary, ...]
    best: int | None
    paths: Mapping[str, Path] = field(default_factory=dict)

    @property
    def best_run(self) -> RunSummary | None:
        return None if self.best is None else self.runs[self.best]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mode": self.mode,
            "best": None if self.best_run is None else self.best_run.name,
            "runs": [run.to_dict() for run in self.runs],
            "paths": {name: str(path) for name, path in self.paths.items()},
        }

    def columns(self) -> list[str]:
        """Column names of the table (test / evaluation columns only when some run has them)."""
        names = [
            "run",
            "backbone",
            "size",
            "optimizer",
            "lr",
            "epochs",
            "level",
            "classes",
            "params",
            f"best {self.metric}",
            "train loss",
            "train acc",
            "val loss",
            "val acc",
            "val IoU",
        ]
        if any("test/acc" in run.test for run in self.runs):
            names.append("test acc")
        if any("test/iou" in run.test for run in self.runs):
            names.append("test IoU")
        if any("top1" in run.evaluation for run in self.runs):
            names.append("eval top-1")
        return [*names, "time"]

    def rows(self) -> list[list[str]]:
        """The table as display strings, one row per run, in `columns()` order."""
        columns = self.columns()
        rows = []
        for run in self.runs:
            epochs = _fmt(run.epochs_completed)
            if run.planned_epochs is not None and run.planned_epochs != run.epochs_completed:
                epochs = f"{epochs}/{run.planned_epochs}"
            values = {
                "run": run.name,
                "backbone": _fmt(run.backbone),
                "size": _fmt(run.image_size),
                "optimizer": _fmt(run.optimizer),
                "lr": _fmt(run.lr, "lr"),
                "epochs": epochs,
                "level": _fmt(run.label_level),
                "classes": _fmt(run.num_classes),
                "params": _fmt(run.parameters, "int"),
                f"best {self.metric}": _fmt(run.best_metric)
                + (f" (ep {run.best_epoch + 1})" if run.best_epoch is not None else ""),  # counted from 1
                "train loss": _fmt(run.final.get("train/loss")),
                "train acc": _fmt(run.final.get("train/acc")),
                "val loss": _fmt(run.final.get("val/loss")),
                "val acc": _fmt(run.final.get("val/acc")),
                "val IoU": _fmt(run.final.get("val/iou")),
                "test acc": _fmt(run.test.get("test/acc")),
                "test IoU": _fmt(run.test.get("test/iou")),
                "eval top-1": _fmt(run.evaluation.get("top1")),
                "time": _fmt(run.seconds, "seconds"),
            }
            rows.append([values[name] for name in columns])
        return rows

    def rich_table(self, width: int | None = None) -> Any:
        """A `rich.table.Table` of `rows()`, the best run in bold green. With a terminal narrower than
        `WIDE_TERMINAL` characters only `NARROW_COLUMNS` are shown (the CSV and HTML have them all)."""
        from rich.table import Table

        columns = self.columns()
        keep = [
            i
            for i, name in enumerate(columns)
            if width is None or width >= WIDE_TERMINAL or name in NARROW_COLUMNS or name.startswith("best ")
        ]
        better = "higher" if self.mode == "max" else "lower"
        table = Table(title=f"Runs by {self.metric} ({better} is better)")
        for i in keep:
            table.add_column(columns[i], overflow="fold", no_wrap=columns[i] in ("size", "lr", "epochs"))
        for index, row in enumerate(self.rows()):
            cells = (console_text(row[i]) for i in keep)  # run names are user text, never markup
            table.add_row(*cells, style="bold green" if index == self.best else None)
        return table

    def csv_text(self) -> str:
        """Raw values, one row per run (empty cells for values a run does not record)."""
        fields = [
            "name",
            "run_dir",
            "backbone",
            "image_size",
            "optimizer",
            "lr",
            "epochs_completed",
            "planned_epochs",
            "label_level",
            "num_classes",
            "parameters",
            "metric",
            "best_metric",
            "best_epoch",
            *FINAL_METRICS,
        ]
        test_keys = sorted({key for run in self.runs for key in run.test})
        eval_keys = sorted({key for run in self.runs for key in run.evaluation})
        fields += test_keys + [f"evaluation/{key}" for key in eval_keys] + ["seconds", "is_best", "notes"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for index, run in enumerate(self.runs):
            row: dict[str, Any] = {key: value for key, value in run.to_dict().items() if key in fields}
            row.update(
                {"metric": self.metric, "run_dir": str(run.run_dir), "is_best": int(index == self.best)}
            )
            row.update({name: run.final.get(name) for name in FINAL_METRICS})
            row.update({key: run.test.get(key) for key in test_keys})
            row.update({f"evaluation/{key}": run.evaluation.get(key) for key in eval_keys})
            row["notes"] = "; ".join(run.notes)
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
        return buffer.getvalue()


def pick_best(runs: Sequence[RunSummary], mode: str) -> int | None:
    """Index of the best run by `best_metric` (ties: the first); None when no run has the metric."""
    scored = [(run.best_metric, index) for index, run in enumerate(runs) if run.best_metric is not None]
    if not scored:
        return None
    if mode == "max":
        return max(scored, key=lambda item: (item[0], -item[1]))[1]
    return min(scored, key=lambda item: (item[0], item[1]))[1]


def curves_figure(runs: Sequence[RunSummary], best: int | None = None) -> Figure:
    """Validation accuracy, validation loss (train loss dashed) and, when logged, validation IoU per
    epoch, one colour per run (the best run's line drawn thicker)."""
    with_iou = any("val/iou" in record for run in runs for record in run.curves)
    panels = [
        ("Validation accuracy", ("val/acc",), (0.0, 1.0)),
        ("Loss (train dashed)", ("val/loss", "train/loss"), None),
    ]
    if with_iou:
        panels.append(("Validation box IoU", ("val/iou",), (0.0, 1.0)))
    figure = Figure(figsize=(5.2 * len(panels), 4.4), layout="constrained")
    axes = figure.subplots(1, len(panels))
    colours = [f"C{index % 10}" for index in range(len(runs))]
    for axis, (title, names, limits) in zip(axes, panels, strict=True):
        for index, run in enumerate(runs):
            for name in names:
                points = [(record["epoch"], record[name]) for record in run.curves if name in record]
                if not points:
                    continue
                epochs, values = zip(*points, strict=True)
                style = "--" if name.startswith("train/") else "-"
                label = f"{run.name}{' (best)' if index == best else ''}" if style == "-" else None
                axis.plot(
                    epochs,
                    values,
                    style,
                    color=colours[index],
                    marker="o",
                    markersize=3,
                    linewidth=2.4 if index == best else 1.3,
                    label=label,
                )
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
        if limits:
            axis.set_ylim(*limits)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8)
    return figure


def compare_runs(
    run_dirs: Iterable[Path | str], metric: str = "val/acc", out_dir: Path | str | None = None
) -> ComparisonResult:
    """Summarize the runs (folders, or folders of runs), pick the best by `metric` and, with `out_dir`,
    write comparison.csv / .json / .html and curves.png there. Raises CompareError for a path that
    is not a run or when there is nothing to compare."""
    folders = expand_run_dirs(run_dirs)
    if not folders:
        raise CompareError("no runs to compare")
    runs = [summarize_run(folder, metric) for folder in folders]
    names = [run.name for run in runs]
    runs = [  # two runs of one name (e.g. from two run roots) get their parent folder in the name
        run if names.count(run.name) == 1 else replace(run, name=f"{run.run_dir.parent.name}/{run.name}")
        for run in runs
    ]
    mode = metric_mode(metric)
    best = pick_best(runs, mode)
    result = ComparisonResult(metric, mode, tuple(runs), best)
    if out_dir is None:
        return result
    return write_comparison(result, Path(out_dir))


def write_comparison(result: ComparisonResult, out_dir: Path) -> ComparisonResult:
    """Write the comparison files (see the module docstring); returns the result with their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "comparison.csv",
        "json": out_dir / "comparison.json",
        "html": out_dir / "comparison.html",
        "curves": out_dir / "curves.png",
    }
    curves = figure_png(curves_figure(result.runs, result.best))
    write_atomic(paths["curves"], curves)
    write_atomic(paths["csv"], result.csv_text().encode("utf-8"))
    result = replace(result, paths=paths)
    write_atomic(paths["json"], (json.dumps(result.to_dict(), indent=2) + "\n").encode("utf-8"))
    page = render_page(
        "carid.evaluation",
        COMPARE_TEMPLATE,
        title=f"Comparison of {len(result.runs)} runs by {result.metric}",
        metric=result.metric,
        mode=result.mode,
        best=None if result.best_run is None else result.best_run.name,
        columns=result.columns(),
        rows=result.rows(),
        best_index=-1 if result.best is None else result.best,
        notes=[(run.name, note) for run in result.runs for note in run.notes],
        curves_uri=data_uri(curves),
    )
    write_atomic(paths["html"], page.encode("utf-8"))
    return result
