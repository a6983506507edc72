"""`compare_runs` over two tiny runs that differ in image size and optimizer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from carid.config import Config, from_dict
from carid.evaluation.compare import (
    CompareError,
    compare_runs,
    expand_run_dirs,
    metric_mode,
    summarize_run,
)
from carid.models.checkpoint import load_for_inference
from carid.training.fit import train
from carid.training.plots import epoch_metrics
from tests.training.conftest import draw_boxed_dataset, tiny_config_tree


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 px with AdamW and 40 px with SGD, two epochs each, in one runs/ folder."""
    root = tmp_path_factory.mktemp("compare")
    data = draw_boxed_dataset(root / "data")
    runs = []
    for name, size, optimizer in (("small-adamw", 32, "adamw"), ("large-sgd", 40, "sgd")):
        tree = tiny_config_tree(
            data,
            root / "runs",
            name=name,
            model={"image_size": size},
            train={"epochs": 2, "optimizer": optimizer},
        )
        runs.append(train(from_dict(Config, tree), progress=False).run_dir)
    return runs[0], runs[1]


def _best_by_hand(runs: tuple[Path, ...], metric: str, mode: str) -> tuple[int, list[float]]:
    values = []
    for run in runs:
        points = [record[metric] for record in epoch_metrics(run / "metrics.csv") if metric in record]
        values.append(max(points) if mode == "max" else min(points))
    pick = max if mode == "max" else min
    best_value = pick(values)
    return values.index(best_value), values


@pytest.mark.parametrize("metric", ["val/loss", "val/acc", "train/loss"])
def test_the_best_run_is_picked_by_the_metric_and_its_mode(two_runs: tuple[Path, Path], metric: str) -> None:
    result = compare_runs(two_runs, metric=metric)
    expected, values = _best_by_hand(two_runs, metric, metric_mode(metric))
    assert result.best == expected
    assert [run.best_metric for run in result.runs] == pytest.approx(values)


def test_the_table_reads_each_runs_settings(two_runs: tuple[Path, Path]) -> None:
    result = compare_runs(two_runs)
    small, large = result.runs
    assert (small.name, small.image_size, small.optimizer) == ("small-adamw", 32, "adamw")
    assert (large.name, large.image_size, large.optimizer) == ("large-sgd", 40, "sgd")
    for run, folder in zip(result.runs, two_runs, strict=True):
        network, metadata = load_for_inference(folder / "checkpoints" / "best.ckpt")
        assert run.parameters == sum(p.numel() for p in network.parameters())
        assert run.num_classes == metadata.num_classes
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        assert run.test == pytest.approx(summary["test_metrics"])
        assert run.epochs_completed == summary["epochs_completed"] == 2
        last = epoch_metrics(folder / "metrics.csv")[-1]
        assert run.final["val/loss"] == pytest.approx(last["val/loss"])
    columns = result.columns()
    assert "test acc" in columns and "params" in columns
    assert all(len(row) == len(columns) for row in result.rows())


def test_files_are_written_with_the_best_highlighted_and_curves_drawn(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    result = compare_runs(two_runs, metric="val/loss", out_dir=tmp_path / "cmp")
    with result.paths["csv"].open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == ["small-adamw", "large-sgd"]
    assert [int(row["is_best"]) for row in rows] == [int(i == result.best) for i in range(2)]
    assert rows[0]["image_size"] == "32" and rows[1]["optimizer"] == "sgd"
    saved = json.loads(result.paths["json"].read_text(encoding="utf-8"))
    assert saved["best"] == result.best_run.name and saved["mode"] == "min"
    html = result.paths["html"].read_text(encoding="utf-8")
    assert html.count('class="best"') == 1 and "data:image/png;base64," in html
    with Image.open(result.paths["curves"]) as image:
        assert image.format == "PNG" and image.width > 800


def test_a_folder_of_runs_expands_and_bad_paths_are_named(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    parent = two_runs[0].parent
    assert expand_run_dirs([parent]) == sorted(run.resolve() for run in two_runs)
    assert expand_run_dirs([two_runs[0], parent]) == [two_runs[0].resolve(), two_runs[1].resolve()]
    with pytest.raises(CompareError, match="nowhere: no such folder"):
        expand_run_dirs([tmp_path / "nowhere"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompareError, match="empty: not a run folder"):
        compare_runs([empty])


def test_a_run_without_summary_or_checkpoint_is_compared_with_notes(tmp_path: Path) -> None:
    run = tmp_path / "half"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  backbone: resnet18\n  image_size: 64\ntrain:\n  lr: 0.01\n")
    (run / "metrics.csv").write_text("epoch,step,val/acc,val/loss\n0,3,0.25,1.5\n1,7,0.5,1.2\n")
    summary = summarize_run(run, metric="val/acc")
    assert (summary.backbone, summary.image_size, summary.lr) == ("resnet18", 64, 0.01)
    assert summary.best_metric == 0.5 and summary.best_epoch == 1
    shown = compare_runs([run], metric="val/acc").rows()
    assert any("(ep 2)" in cell for row in shown for cell in row), shown  # counted from 1, as training prints
    assert summary.epochs_completed == 2 and summary.parameters is None
    assert any("summary.json" in note for note in summary.notes)
    assert any("no checkpoint" in note for note in summary.notes)
    missing = summarize_run(run, metric="val/iou")
    assert missing.best_metric is None and any("val/iou not recorded" in n for n in missing.notes)
    assert compare_runs([run], metric="val/iou").best is None


def test_metric_mode_is_inferred_from_the_name() -> None:
    assert metric_mode("val/loss") == "min"
    assert metric_mode("val/box_giou_loss") == "min"
    assert metric_mode("val/acc") == "max"
    assert metric_mode("test/iou") == "max"


def test_a_narrow_terminal_gets_the_main_columns_only(two_runs: tuple[Path, Path]) -> None:
    result = compare_runs(two_runs)
    wide = [column.header for column in result.rich_table().columns]
    narrow = [column.header for column in result.rich_table(width=100).columns]
    assert wide == result.columns()
    assert "params" in wide and "params" not in narrow
    assert narrow[0] == "run" and "best val/acc" in narrow


def test_run_names_in_the_terminal_table_are_text_not_markup(tmp_path: Path) -> None:
    from rich.console import Console

    run = tmp_path / "[bold red]BIG"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  backbone: resnet18\n")
    (run / "metrics.csv").write_text("epoch,step,val/acc\n0,3,0.25\n")
    console = Console(record=True, width=300, color_system=None)
    console.print(compare_runs([run], metric="val/acc").rich_table())
    assert "[bold red]BIG" in console.export_text()
