"""`carid enroll` and `carid predict` as a user meets them: what a bundle or a photo folder holds is
shown as text, never obeyed as rich markup or terminal control characters (issue 23)."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from carid.cli import app
from carid.errors import CaridError
from carid.runtime.predictor import Predictor
from tests.conftest import write_image
from tests.data.bad_entries import UNDECODABLE_SHOWN, fifo, undecodable_file

runner = CliRunner()


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they need: the consoles' width is fixed when carid.cli.app is imported."""
    app_module = importlib.import_module("carid.cli.app")  # the module, not the `carid.cli.app` Typer
    for console in (app_module.console, app_module.err_console):
        monkeypatch.setattr(console, "_width", 300)


EVIL = "Evil\x1b[31m\nCar [bold red]BIG[/bold red]\x07"
EVIL_SHOWN = "Evil\\x1b[31m\\nCar [bold red]BIG[/bold red]\\x07"


def _fake_listing(labels: list[str]):
    classes = [
        SimpleNamespace(label=label, photos=3, added="2024-01-01", updated="2024-01-02") for label in labels
    ]
    bundle = SimpleNamespace(path=Path("bundles/[b]x"), metadata=SimpleNamespace(num_classes=5))
    return lambda model: (bundle, SimpleNamespace(classes=classes))


def test_enroll_list_shows_labels_escaped(monkeypatch: pytest.MonkeyPatch, wide: None) -> None:
    monkeypatch.setattr("carid.enroll.store.listing", _fake_listing([EVIL, "plain"]))
    result = runner.invoke(app, ["enroll", "bundle", "--list"])
    assert result.exit_code == 0, result.output
    assert EVIL_SHOWN in result.output and "plain" in result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "bundles/[b]x" in result.output


def test_enroll_remove_and_errors_show_labels_escaped(monkeypatch: pytest.MonkeyPatch, wide: None) -> None:
    monkeypatch.setattr("carid.enroll.store.listing", _fake_listing([]))
    monkeypatch.setattr("carid.enroll.store.remove", lambda model, labels: ())
    result = runner.invoke(app, ["enroll", "bundle", "--remove", EVIL])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "removed Evil\\x1b[31m" in result.output

    def refuse(model, labels):
        raise CaridError(f"--remove {labels[0]!s}: no such enrolled class")

    monkeypatch.setattr("carid.enroll.store.remove", refuse)
    result = runner.invoke(app, ["enroll", "bundle", "--remove", EVIL])
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "--remove Evil\\x1b[31m" in result.output


@pytest.mark.timeout(120)
def test_predict_shows_names_as_text_and_writes_every_row(tmp_path: Path, monkeypatch, wide: None) -> None:
    from tests.runtime.test_predictor import stub_predictor

    predictor, _ = stub_predictor()
    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, *args, **kwargs: predictor))
    photos = tmp_path / "photos"
    good = write_image(photos / "[bold red]BIG.jpg")
    undecodable_file(photos, good.read_bytes())
    pipe = fifo(photos / "x.jpg")
    result = runner.invoke(app, ["predict", "stub", str(photos), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert "[bold red]BIG.jpg" in result.output and UNDECODABLE_SHOWN in result.output
    assert "2 of 3 photos predicted" in result.output
    rows = {row["path"]: row for row in csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8"))}
    assert set(rows) == {str(good), str(photos / UNDECODABLE_SHOWN), str(pipe)}
    assert "not a regular file" in rows[str(pipe)]["error"]


def test_predict_engine_ray_passes_its_options_and_names_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    from carid.scale import ray_engine
    from carid.scale.writer import ShardRecord

    calls: list[dict] = []

    def fake_run(model, paths, out, on_shard=None, **options):
        calls.append({"model": model, "paths": paths, "out": out, **options})
        record = ShardRecord("shard-00000", "shard-00000.csv", 3, 3, 1)
        on_shard(record, 1, 1)
        return SimpleNamespace(
            photos=3, failed=1, seconds=1.5, workers=2, resumed=(), out=out, manifest=out / "manifest.json"
        )

    monkeypatch.setattr(ray_engine, "run_ray_predict", fake_run)
    options = ["--engine", "ray", "--address", "auto", "--workers", "2", "--shard-size", "64", "--top-k", "3"]
    result = runner.invoke(app, ["predict", "b", "photos/", *options, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert calls == [
        {
            "model": Path("b"),
            "paths": ["photos/"],
            "out": tmp_path / "o",
            "backend": "auto",
            "workers": 2,
            "top_k": 3,
            "address": "auto",
            "shard_size": 64,
        }
    ]
    assert "2 of 3 photos predicted in 1.50 s with 2 Ray worker(s)" in result.output
    assert "shard-00000.csv: 3 photos (1 of 1 shards)" in result.output
    for extra, message in (
        ([], "--engine ray needs --out DIR"),
        (["--out", "o", "--annotate", "a"], "--annotate works with --engine local only"),
    ):
        result = runner.invoke(app, ["predict", "b", "p", "--engine", "ray", *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(app, ["predict", "b", "p", "--engine", "spark", "--out", "o"])
    assert result.exit_code == 2 and "--engine spark: expected local or ray" in result.output
