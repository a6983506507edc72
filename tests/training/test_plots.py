"""Training curves: one record per epoch from either CSV, and only the panels a run logged."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from carid.training.plots import epoch_metrics, plot_curves


def test_metrics_csv_rows_fold_into_one_record_per_epoch(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,lr-AdamW/heads,train/loss,val/acc\n,0,0.1,,\n0,3,,2.0,\n0,3,,,0.5\n1,7,,1.5,0.75\n"
    )
    assert epoch_metrics(path) == [
        {"epoch": 0.0, "step": 3.0, "train/loss": 2.0, "val/acc": 0.5},
        {"epoch": 1.0, "step": 7.0, "train/loss": 1.5, "val/acc": 0.75},
    ]


def test_only_logged_panels_are_drawn(tmp_path: Path) -> None:
    detector = tmp_path / "results.csv"
    detector.write_text("epoch,time,epoch_time,train/loss,val/map50,val/map\n1,2,2,2.0,0.5,0.3\n")
    png = plot_curves(detector, tmp_path / "curves.png")
    assert png is not None
    with Image.open(png) as image:
        assert image.width == 1000  # 500 px a panel: loss and mAP; no empty accuracy or IoU panel
    assert plot_curves(tmp_path / "missing.csv", tmp_path / "none.png") is None
