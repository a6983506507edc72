"""Tests for carid.artifacts.run_dir: the run folder's layout, and `locate` (what a path names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from carid.artifacts.run_dir import (
    ModelPathError,
    RunDir,
    bundle_run_dir,
    is_run_dir,
    locate,
    run_split_csv,
)


def fake_run(root: Path, best: bool = True, export: bool = False) -> Path:
    """A run folder as `carid train` leaves it, with empty files where nothing reads them."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("name: fake\n", encoding="utf-8")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "last.ckpt").write_bytes(b"")
    if best:
        (root / "checkpoints" / "best.ckpt").write_bytes(b"")
    if export:
        (root / "export").mkdir()
        (root / "export" / "model.json").write_text("{}", encoding="utf-8")
    return root


def test_locate_recognises_bundles_and_rejects_other_paths(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text("{}", encoding="utf-8")
    assert locate(bundle).kind == "bundle"
    assert locate(bundle / "model.json").path == bundle.resolve()

    with pytest.raises(ModelPathError, match="no such file"):
        locate(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelPathError, match=r"empty: not a run folder"):
        locate(empty)
    text = tmp_path / "notes.txt"
    text.write_text("x", encoding="utf-8")
    with pytest.raises(ModelPathError, match=r"notes\.txt: not a model"):
        locate(text)


def test_a_run_folder_without_best_gives_its_last_checkpoint_with_a_note(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", best=False)
    location = locate(run)
    assert location.kind == "checkpoint"
    assert location.path == (run / "checkpoints" / "last.ckpt").resolve()
    assert location.note is not None and "last.ckpt" in location.note


def test_prefer_bundle_gives_a_runs_export_and_keeps_the_run(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", export=True)
    assert locate(run).kind == "checkpoint"
    location = locate(run, prefer="bundle")
    assert (location.kind, location.path, location.run_dir) == (
        "bundle",
        run.resolve() / "export",
        run.resolve(),
    )
    without_export = fake_run(tmp_path / "bare")
    assert locate(without_export, prefer="bundle").kind == "checkpoint"


def test_an_ensemble_folder_and_its_json_are_ensembles(tmp_path: Path) -> None:
    folder = tmp_path / "ens"
    folder.mkdir()
    (folder / "ensemble.json").write_text("{}", encoding="utf-8")
    assert locate(folder).kind == "ensemble"
    assert locate(folder / "ensemble.json").path == folder.resolve()


def test_is_run_dir_needs_a_config_and_checkpoints_or_metrics(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    assert not is_run_dir(folder)
    (folder / "config.yaml").write_text("x: 1\n", encoding="utf-8")
    assert not is_run_dir(folder)
    (folder / "metrics.csv").write_text("epoch\n0\n", encoding="utf-8")
    assert is_run_dir(folder)
    assert not is_run_dir(folder / "config.yaml")


def test_the_run_of_a_checkpoint_and_of_an_exported_bundle(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", export=True)
    assert RunDir.of_checkpoint(run / "checkpoints" / "best.ckpt") == RunDir(run.resolve())
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"")
    assert RunDir.of_checkpoint(loose) is None

    class FakeMetadata:
        source_checkpoint = str(run / "checkpoints" / "best.ckpt")

    class FakeBundle:
        path = tmp_path / "elsewhere"
        metadata = FakeMetadata()

    assert bundle_run_dir(FakeBundle()) == run.resolve()  # type: ignore[arg-type]
    FakeMetadata.source_checkpoint = ""
    assert bundle_run_dir(FakeBundle()) is None  # type: ignore[arg-type]


def test_run_split_csv_is_the_first_run_that_still_has_one(tmp_path: Path) -> None:
    first = fake_run(tmp_path / "a")
    second = fake_run(tmp_path / "b")
    assert run_split_csv([None, first, second]) is None
    (second / "split.csv").write_text("path,class,split\n", encoding="utf-8")
    assert run_split_csv([None, first, second]) == second / "split.csv"
    assert RunDir(second).split_or_none() == second / "split.csv"
    assert RunDir(first).split_or_none() is None
