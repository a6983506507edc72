"""The per-epoch table and results.csv: the row format, one row per epoch, and what a run prints."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from carid.training.epoch_table import (
    header_line,
    plain_line,
    read_results,
    row_cells,
    table_columns,
    write_results,
)
from carid.training.fit import train

# "  2/3     1.7s      2.1454     1.8588   0.333   0.667      2.6s     *"
ROW = re.compile(
    r"^\s*(\d+)/(\d+)\s+(\d+\.\d)s\s+\d+\.\d{4}\s+\d+\.\d{4}\s+\d\.\d{3}(\s+\d\.\d{3})*\s+\S+(\s+\*)?$"
)


def test_a_classifier_row_shows_losses_top1_top5_iou_eta_and_the_best_mark() -> None:
    logged = {"train/loss": 1.03125, "val/loss": 0.987, "val/acc": 0.7125, "val/acc_top5": 0.954}
    columns = table_columns({*logged, "val/iou", "lr-AdamW/heads"}, 20, "val/acc")
    headers = [column.header for column in columns]
    assert headers == ["epoch", "time", "train_loss", "val_loss", "top1", "top5", "iou", "eta", "best"]
    cells = row_cells(columns, logged, 3, 20, 4.12, 3 * 60 + 7, improved=True)
    assert cells == ["3/20", "4.1s", "1.0312", "0.9870", "0.713", "0.954", "-", "3:07", "*"]
    line, header = plain_line(columns, cells), header_line(columns)
    # every cell ends where its header ends: the columns line up in a log file
    ends = [match.end() for match in re.finditer(r"\S+", header)]
    assert [match.end() for match in re.finditer(r"\S+", line)] == ends
    assert "\n" not in line and len(line) < 110


def test_a_detector_row_shows_map50_and_map_instead_of_top1() -> None:
    logged = {"train/loss": 1.5, "val/loss": 1.25, "val/map50": 0.61, "val/map": 0.352}
    columns = table_columns(logged, 12, "val/map50")
    assert [column.header for column in columns] == [
        "epoch", "time", "train_loss", "val_loss", "map50", "map", "eta", "best"
    ]  # fmt: skip
    cells = row_cells(columns, logged, 12, 12, 3725.0, 0.0, improved=False)
    assert cells == ["12/12", "1:02:05", "1.5000", "1.2500", "0.610", "0.352", "0.0s", ""]
    assert table_columns({"train/loss"}, 5, None)[-1].header == "eta"  # no monitor: no best column


def test_results_csv_round_trips_one_row_per_epoch(tmp_path: Path) -> None:
    rows = [{"epoch": 1.0, "time": 2.5, "epoch_time": 2.5, "val/acc": 0.5}]
    rows.append({"epoch": 2.0, "time": 5.0, "epoch_time": 2.5, "val/acc": 0.75, "train/trainable_params": 7})
    write_results(tmp_path / "results.csv", rows)
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header == "epoch,time,epoch_time,train/trainable_params,val/acc"
    assert read_results(tmp_path / "results.csv") == rows
    assert read_results(tmp_path / "missing.csv") == []


def test_a_run_logged_to_a_file_prints_one_readable_line_per_epoch(
    tiny_config, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    epochs = 3
    caplog.set_level(logging.INFO)
    config = tiny_config(
        name="table", model={"box_head": "off"}, train={"epochs": epochs, "lr": 0.03, "test_after_fit": False}
    )
    result = train(config, progress=True)  # pytest captures stdout: not a terminal, so plain lines
    captured = capsys.readouterr()
    out = captured.out
    lines = out.splitlines()

    assert lines[0] == f"run folder: {result.run_dir}"  # named at the start, not only at the end
    assert lines[1].startswith("model: CarNet, ") and "parameters" in lines[1]
    header = next(line for line in lines if line.lstrip().startswith("epoch "))
    assert header.split() == ["epoch", "time", "train_loss", "val_loss", "top1", "eta", "best"]
    rows = [line for line in lines if ROW.match(line)]
    assert [ROW.match(line).group(1, 2) for line in rows] == [(str(e), str(epochs)) for e in range(1, 4)]
    everything = out + captured.err + caplog.text
    for noise in ("FLOPs", "litlogger", "litmodels", "💡", "LeafSpec"):
        assert noise not in everything, noise
    assert "━" not in out  # no live bar, whose frames a log file would hold

    # results.csv: exactly one row per epoch, with the val columns
    with (result.run_dir / "results.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["epoch"] for row in table] == ["1", "2", "3"]
    assert {"time", "epoch_time", "train/loss", "val/loss", "val/acc"} <= set(table[0])
    assert all(row["val/acc"] != "" for row in table)
    assert (result.run_dir / "metrics.csv").is_file()  # still written for `carid compare`

    # the summary's best epoch is an integer and the one best.ckpt holds (counted from 1)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    stored = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["epoch"]
    assert isinstance(summary["best_epoch"], int) and summary["best_epoch"] == stored + 1
    assert result.metrics["best_epoch"] == summary["best_epoch"] and "epoch" not in result.metrics
    accuracies = [float(row["val/acc"]) for row in table]
    assert summary["best_epoch"] == accuracies.index(max(accuracies)) + 1
    starred = [int(ROW.match(line).group(1)) for line in rows if line.rstrip().endswith("*")]
    assert starred[-1] == summary["best_epoch"]

    # curves.png: loss and accuracy only, no empty IoU panel for a run without boxes (500 px a panel)
    with Image.open(result.run_dir / "curves.png") as image:
        assert image.width == 2 * 500
