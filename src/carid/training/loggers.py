"""The loggers of a training run: metrics.csv written atomically and kept on resume, TensorBoard.

`ResumableCSVLogger` is Lightning's CSVLogger (metrics.csv directly in the run directory) whose
every save replaces the file whole (`AtomicMetricsWriter`) and which, on resume, keeps the rows of
the epochs the checkpoint completed (`checkpoint_progress` reads which).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from carid.config import ConfigError
from carid.files import write_atomic


class AtomicMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, but every save replaces metrics.csv whole through a temporary file.

    Lightning appends rows, and rewrites the file in place (truncate, then write) whenever a new
    column appears, which happens right after the first checkpoint when the epoch's train metrics
    arrive. A process killed inside that rewrite left a file without the rows it had finished.
    Here all rows stay in memory (a few per epoch) and each save writes them under a temporary
    name and renames it over metrics.csv, so the file on disk is always a complete earlier state
    (on resume too: the old file stays until the first save replaces it).
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir=log_dir)
        self._saved_rows: list[dict[str, Any]] = []

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes an old metrics.csv here; the first save replaces it instead."""

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self._saved_rows.extend(self.metrics)
        self.metrics = []
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(self._saved_rows)
        write_atomic(Path(self.metrics_file_path), buffer.getvalue().encode("utf-8"))


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger (metrics.csv directly in the run directory) that survives resuming.

    Lightning's CSV writer deletes an existing metrics.csv when it starts. On resume, the rows of
    the epochs the checkpoint completed are read first and written back ahead of the new ones;
    rows logged after the checkpoint (an interrupted epoch) are dropped, because that epoch runs
    again. Rows are flushed at every logging call, each flush replacing the file atomically
    (`AtomicMetricsWriter`), so an interrupted run loses nothing it finished.
    """

    def __init__(self, run_dir: Path, keep_through: tuple[int, int] | None = None) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)
        self._kept_rows: list[dict[str, str]] = []
        if keep_through is not None:
            self._kept_rows = _rows_through(Path(run_dir) / "metrics.csv", *keep_through)

    @property
    @rank_zero_experiment
    def experiment(self) -> AtomicMetricsWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = AtomicMetricsWriter(log_dir=self.log_dir)
            writer.metrics = [dict(row) for row in self._kept_rows]
            self._kept_rows = []
            self._experiment = writer
        return self._experiment


def _rows_through(metrics_csv: Path, last_epoch: int, global_step: int) -> list[dict[str, str]]:
    """Rows of epochs <= last_epoch (rows without an epoch: steps < global_step)."""
    if not metrics_csv.exists():
        return []
    kept = []
    with metrics_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            epoch, step = row.get("epoch") or "", row.get("step") or ""
            try:
                keep = int(float(epoch)) <= last_epoch if epoch else int(float(step)) < global_step
            except ValueError:
                keep = False
            if keep:
                kept.append({key: value for key, value in row.items() if key is not None})
    return kept


def checkpoint_progress(path: Path) -> tuple[int, int]:
    """(epoch, global_step) recorded in a Lightning checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return int(checkpoint.get("epoch", -1)), int(checkpoint.get("global_step", 0))


def resume_epoch(path: Path) -> int:
    """The epoch (0-based) a run resumed from this Lightning checkpoint trains first: the fit
    loop's count of processed epochs (what Lightning passes to a sampler's set_epoch), else epoch + 1."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", -1)) + 1


def tensorboard_logger(run_dir: Path) -> Logger:
    """TensorBoard event files under run_dir/tensorboard (`train.tensorboard`)."""
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "train.tensorboard: true needs the tensorboard package (pip install tensorboard)"
        ) from exc
