"""Tests of carid.evaluation.report_pairs: the confused-pairs rows, box legend and the run's curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carid.artifacts.bundle import write_metadata
from carid.evaluation.metrics import evaluate_predictions
from carid.evaluation.report_pairs import box_legend, confused_pair_rows, run_folder, training_curves
from tests.artifacts.test_bundle import make_metadata, write_bundle


def test_pair_rows_count_both_directions() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([1, 1, 0, 0, 1, 2])  # 0 -> 1 twice, 1 -> 0 once
    probabilities = np.eye(3)[predicted] * 0.7 + 0.1
    rows = confused_pair_rows(evaluate_predictions(probabilities, labels, ("a", "b", "c")))
    assert [(r["true_name"], r["predicted_name"], r["count"], r["support"], r["back"]) for r in rows] == [
        ("a", "b", 2, 3, 1),
        ("b", "a", 1, 2, 2),
    ]
    assert rows[0]["share"] == "66.7%" and rows[0]["rank"] == 1


class _Boxes:
    def __init__(self, true_boxes: np.ndarray | None, pred_boxes: np.ndarray | None) -> None:
        self.true_boxes, self.pred_boxes = true_boxes, pred_boxes


def test_box_legend_names_only_the_boxes_there_are() -> None:
    box = np.array([[1.0, 1.0, 5.0, 5.0]])
    missing = np.full((1, 4), np.nan)
    assert box_legend(_Boxes(box, box)) == " (true box green, predicted box red)"
    assert box_legend(_Boxes(box, None)) == " (true box green)"
    assert box_legend(_Boxes(missing, box)) == " (predicted box red)"
    assert box_legend(_Boxes(None, None)) == ""


def _run(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("task: classify\n", encoding="utf-8")
    return folder


def test_the_run_folder_of_a_checkpoint_or_a_bundle(tmp_path: Path) -> None:
    run = _run(tmp_path / "run")
    assert run_folder({"kind": "checkpoint", "location": {"run_dir": str(run)}}) == run
    bundle = write_bundle(tmp_path / "bundle")
    write_metadata(bundle, make_metadata(source_checkpoint=str(run / "checkpoints" / "best.ckpt")))
    assert run_folder({"kind": "bundle", "path": str(bundle), "location": {"run_dir": None}}) == run.resolve()
    write_metadata(bundle, make_metadata(source_checkpoint=str(tmp_path / "gone" / "best.ckpt")))
    assert run_folder({"kind": "bundle", "path": str(bundle)}) is None
    assert run_folder({"kind": "bundle", "path": str(tmp_path / "not-a-bundle")}) is None
    assert run_folder({"kind": "ensemble", "path": str(bundle)}) is None


def test_no_curves_without_a_run_or_its_metrics(tmp_path: Path) -> None:
    assert training_curves(None) is None
    assert training_curves(tmp_path) is None  # not a run folder
    run = _run(tmp_path / "run")
    assert training_curves(run) is None  # a run without metrics.csv or curves.png
    (run / "metrics.csv").write_text("epoch,step,lr\n", encoding="utf-8")
    assert training_curves(run) is None  # nothing per epoch to draw
    (run / "curves.png").write_bytes(b"\x89PNG picture")
    figure = training_curves(run)
    assert figure is not None and figure.data == b"\x89PNG picture" and figure.name == "curves.png"
