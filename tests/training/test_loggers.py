"""`ResumableCSVLogger`: metrics.csv replaced whole on every save, and kept through a resume."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

from carid.training.loggers import ResumableCSVLogger


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_metrics_csv_is_replaced_whole_so_a_kill_mid_save_keeps_the_finished_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = ResumableCSVLogger(tmp_path)
    logger.log_metrics({"val/acc": 0.5, "epoch": 0}, step=3)
    assert [row["val/acc"] for row in _csv_rows(tmp_path / "metrics.csv")] == ["0.5"]

    # a new column (the epoch's train metrics, logged after the checkpoint) changes the header;
    # the process dies half-way through writing the file (carid.files.write_atomic's stream)
    fdopen = os.fdopen

    class DiesHalfWay:
        def __init__(self, stream: io.BufferedWriter) -> None:
            self.stream = stream

        def __enter__(self) -> DiesHalfWay:
            return self

        def __exit__(self, *exc: object) -> None:
            self.stream.close()

        def write(self, data: bytes) -> int:
            self.stream.write(data[: len(data) // 2])
            raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fdopen", lambda fd, mode: DiesHalfWay(fdopen(fd, mode)))
        with pytest.raises(KeyboardInterrupt):
            logger.log_metrics({"train/loss": 1.25, "epoch": 0}, step=3)
    assert [row["val/acc"] for row in _csv_rows(tmp_path / "metrics.csv")] == ["0.5"]

    logger.log_metrics({"val/acc": 0.75, "epoch": 1}, step=7)
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [(row["epoch"], row["val/acc"], row["train/loss"]) for row in rows] == [
        ("0", "0.5", ""),
        ("0", "", "1.25"),
        ("1", "0.75", ""),
    ]


def test_a_resumed_logger_keeps_the_rows_of_the_checkpointed_epochs(tmp_path: Path) -> None:
    first = ResumableCSVLogger(tmp_path)
    for epoch, step in ((0, 3), (1, 7), (2, 11)):
        first.log_metrics({"val/acc": epoch / 10, "epoch": epoch}, step=step)
    # the checkpoint finished epoch 1 (global step 8); epoch 2 runs again after the resume
    resumed = ResumableCSVLogger(tmp_path, keep_through=(1, 8))
    resumed.log_metrics({"val/acc": 0.9, "epoch": 2}, step=11)
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert [(row["epoch"], row["val/acc"]) for row in rows] == [("0", "0.0"), ("1", "0.1"), ("2", "0.9")]
