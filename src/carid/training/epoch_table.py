"""The per-epoch record of a training run: one console row and one results.csv row per epoch.

In the manner of Ultralytics: after each epoch (its validation included) the run prints one row

    epoch    time  train_loss  val_loss   top1   top5    iou      eta  best
     3/20    4.1s      1.0312    0.9870  0.712  0.954  0.655     1:10     *

with the epoch (counted from 1) of `max_epochs`, its duration, the train and val loss, validation
top-1 / top-5 accuracy (a detector: `map50` and `map`, AP@0.5 and AP@[.5:.95]), the mean box IoU when
the model has a box head, the time left at the mean epoch time so far (an upper bound when early
stopping may end the run sooner), and `*` on the epochs that improved the monitored metric (the
epoch best.ckpt holds is the last starred one). Columns whose metric is not logged are left out.
On a terminal the rows are a Rich table printed through the progress bar's console, so the live bar
is not torn; otherwise (a file, a pipe, CI) each row is one plain line, flushed at once.

results.csv (beside metrics.csv in the run folder) gets the same epoch as one row: `epoch` (from 1),
`time` (seconds since the run started, summed over resumed sessions, as Ultralytics writes it),
`epoch_time`, then every epoch-level metric in Lightning's callback metrics (`train/*`, `val/*`, the
learning rates `lr-*`), sorted. The file is rewritten whole and atomically after each epoch; a
resumed run keeps the rows of the epochs its checkpoint completed. Lightning's metrics.csv (one row
per logging call) is still written: `carid compare` and the summary read it.

Written here because Lightning's progress bars show only the step loss, keep nothing in a log file
until a bar ends, and no Lightning logger writes one row per epoch.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar

from carid.files import write_atomic
from carid.training.console import duration, is_terminal, model_line, say

RESULTS_FILE = "results.csv"
LEADING = ("epoch", "time", "epoch_time")
# (header, metric, width, decimals) of the metric columns, in order; "val/map50" marks a detector
LOSSES = (("train_loss", "train/loss", 10, 4), ("val_loss", "val/loss", 9, 4))
CLASSIFY = (("top1", "val/acc", 6, 3), ("top5", "val/acc_top5", 6, 3))
DETECT = (("map50", "val/map50", 6, 3), ("map", "val/map", 6, 3))
BOX = (("iou", "val/iou", 6, 3),)
TIME_WIDTH = 7
ETA_WIDTH = 8


@dataclass(frozen=True)
class Column:
    """One console column: its header, the metric it shows (None: epoch, time, eta, best), its width
    and the decimals of its numbers."""

    header: str
    metric: str | None
    width: int
    decimals: int = 3


def table_columns(metrics: Collection[str], max_epochs: int, monitor: str | None) -> tuple[Column, ...]:
    """The columns of a run that logs `metrics`: losses, then top-1/top-5 (or mAP for a detector) and
    IoU, each only when logged."""
    epoch_width = max(5, 2 * len(str(max_epochs)) + 1)
    columns = [Column("epoch", None, epoch_width), Column("time", None, TIME_WIDTH)]
    scores = DETECT if "val/map50" in metrics else CLASSIFY
    for header, metric, width, decimals in (*LOSSES, *scores, *BOX):
        if metric in metrics:
            columns.append(Column(header, metric, width, decimals))
    columns.append(Column("eta", None, ETA_WIDTH))
    if monitor is not None:
        columns.append(Column("best", None, 4))
    return tuple(columns)


def row_cells(
    columns: Sequence[Column],
    metrics: Mapping[str, float],
    epoch: int,
    max_epochs: int,
    seconds: float,
    eta: float,
    improved: bool,
) -> list[str]:
    """The text of each column for one epoch ("-" for a metric this epoch did not log)."""
    cells = []
    for column in columns:
        if column.header == "epoch":
            cells.append(f"{epoch}/{max_epochs}")
        elif column.header == "time":
            cells.append(duration(seconds))
        elif column.header == "eta":
            cells.append(duration(eta))
        elif column.header == "best":
            cells.append("*" if improved else "")
        else:
            value = metrics.get(column.metric or "")
            cells.append("-" if value is None else f"{value:.{column.decimals}f}")
    return cells


def plain_line(columns: Sequence[Column], cells: Sequence[str]) -> str:
    """Cells right-aligned in their columns, two spaces apart (the header passes the headers)."""
    return "  ".join(cell.rjust(column.width) for column, cell in zip(columns, cells, strict=True)).rstrip()


def header_line(columns: Sequence[Column]) -> str:
    return plain_line(columns, [column.header for column in columns])


def read_results(path: Path) -> list[dict[str, float]]:
    """The rows of a results.csv as numbers (empty cells left out); [] when there is no file."""
    if not path.exists():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            record = {}
            for key, text in row.items():
                try:
                    value = float(text) if key is not None and text not in (None, "") else None
                except ValueError:
                    value = None
                if key is not None and value is not None:
                    record[key] = value
            if "epoch" in record:
                rows.append(record)
    return rows


def write_results(path: Path, rows: Sequence[Mapping[str, float]]) -> None:
    """All rows, columns `epoch`, `time`, `epoch_time`, then every metric any row has (sorted);
    numbers to 6 significant digits."""
    names = sorted({key for row in rows for key in row} - set(LEADING))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=[*LEADING, *names], restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: int(value) if key == "epoch" else f"{value:.6g}" for key, value in row.items()})
    write_atomic(path, buffer.getvalue().encode("utf-8"))


def epoch_metrics_now(trainer: L.Trainer) -> dict[str, float]:
    """The epoch-level scalar metrics Lightning holds now (the step-only progress-bar "loss" left out)."""
    metrics = {}
    for key, value in trainer.callback_metrics.items():
        if key == "loss" or "/" not in key:
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        number = float(value)
        if not math.isnan(number):
            metrics[key] = number
    return metrics


class EpochTable(Callback):
    """Print one row per epoch (see the module docstring) and keep results.csv.

    run_dir: where results.csv goes. monitor / mode: the metric best.ckpt is chosen by and whether
    higher ("max") or lower ("min") is better, for the `best` column. show: print the rows (and the
    model line when training starts); results.csv is written either way. terminal: Rich table or
    plain lines (None: ask `is_terminal`).
    """

    def __init__(
        self,
        run_dir: Path,
        monitor: str | None,
        mode: str = "max",
        show: bool = True,
        terminal: bool | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(run_dir) / RESULTS_FILE
        self.monitor = monitor
        self.mode = mode
        self.show = show
        self.terminal = terminal
        self.rows: list[dict[str, float]] = []
        self.columns: tuple[Column, ...] = ()
        self.best: float | None = None
        self._durations: list[float] = []
        self._offset = 0.0
        self._session_started = 0.0
        self._epoch_started = 0.0
        self._header_shown = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        completed = trainer.current_epoch  # > 0 on resume: the epochs the checkpoint finished
        self.rows = [row for row in read_results(self.path) if row["epoch"] <= completed] if completed else []
        self._offset = self.rows[-1].get("time", 0.0) if self.rows else 0.0
        self.best = None
        for row in self.rows:
            self._improves(row)
        self._session_started = time.perf_counter()
        if self.show:
            self._print_plain_or_rich(trainer, model_line(pl_module), style="dim")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        now = time.perf_counter()
        seconds = now - self._epoch_started
        self._durations.append(seconds)
        metrics = epoch_metrics_now(trainer)
        epoch = trainer.current_epoch + 1
        row = {"epoch": float(epoch), "time": round(self._offset + now - self._session_started, 2)}
        row |= {"epoch_time": round(seconds, 2), **metrics}
        improved = self._improves(row)
        self.rows = [kept for kept in self.rows if kept["epoch"] < epoch] + [row]
        write_results(self.path, self.rows)
        if not self.show:
            return
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else epoch
        eta = sum(self._durations) / len(self._durations) * max(0, max_epochs - epoch)
        if not self.columns:
            self.columns = table_columns(metrics, max_epochs, self.monitor)
        cells = row_cells(self.columns, metrics, epoch, max_epochs, seconds, eta, improved)
        self._print_row(trainer, cells)

    def _improves(self, row: Mapping[str, float]) -> bool:
        """Whether `row` beats the best monitored value so far (strictly, as ModelCheckpoint keeps)."""
        value = row.get(self.monitor) if self.monitor else None
        if value is None:
            return False
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best = value
        return better

    # --- printing --------------------------------------------------------------------------------

    def _uses_terminal(self) -> bool:
        if self.terminal is None:
            self.terminal = is_terminal()
        return self.terminal

    def _console(self, trainer: L.Trainer) -> Any:
        """The Rich console of the progress bar when there is one (printing through it keeps the
        live bar whole), else a console of our own."""
        bar = trainer.progress_bar_callback
        console = getattr(bar, "_console", None) if isinstance(bar, RichProgressBar) else None
        if console is None:
            from rich.console import Console

            console = Console()
        return console

    def _print_plain_or_rich(self, trainer: L.Trainer, line: str, style: str = "") -> None:
        if self._uses_terminal():
            self._console(trainer).print(line, style=style, markup=False, highlight=False, soft_wrap=True)
        else:
            say(line)

    def _print_row(self, trainer: L.Trainer, cells: Sequence[str]) -> None:
        if not self._uses_terminal():
            if not self._header_shown:
                say(header_line(self.columns))
            say(plain_line(self.columns, cells))
            self._header_shown = True
            return
        from rich.table import Table

        table = Table(box=None, show_header=not self._header_shown, header_style="bold", pad_edge=False)
        for column in self.columns:
            table.add_column(column.header, justify="right", min_width=column.width, max_width=column.width)
        table.add_row(*cells, style="bold green" if cells[-1] == "*" else None)
        self._console(trainer).print(table)
        self._header_shown = True
