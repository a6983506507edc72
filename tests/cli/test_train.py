"""`carid train`: config errors and missing data reported before training starts, `--data`."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from carid.cli import app
from carid.config import load_config

runner = CliRunner()


def _recipe(folder: Path, tree: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_misspelt_set_key_names_the_set_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _recipe(tmp_path, {"train": {"epochs": 1}})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(recipe), "--set", "train.lrr=0.1"])
    assert result.exit_code == 2
    assert "--set train.lrr=0.1: invalid config" in result.output
    assert "train.lrr: unknown key (did you mean train.lr?)" in result.output
    assert str(recipe) not in result.output
    bad_file = _recipe(tmp_path / "other", {"train": {"epochz": 1}})
    result = runner.invoke(app, ["train", str(bad_file)])
    assert result.exit_code == 2
    assert f"{bad_file}: invalid config" in result.output and "did you mean train.epochs?" in result.output


def test_missing_recipe_data_is_described_as_that_dataset(tmp_path: Path, monkeypatch) -> None:
    recipe = _recipe(tmp_path / "configs", {"data": {"path": "../nowhere/datasets/car-models-5"}})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2
    assert "../nowhere/datasets/car-models-5: no such file or directory" in result.output
    assert "'car-models-5'" in result.output and "--data PATH" in result.output
    assert "Stanford" not in result.output


def test_train_data_sets_data_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = tmp_path / "my-data"
    dataset.mkdir()
    tree = {"data": {"path": "../nowhere/car-models-5"}, "train": {"epochs": 1}}
    recipe = _recipe(tmp_path / "configs", tree)
    seen = {}

    def fake_train(config, **options):
        seen.update(config=config, **options)
        return SimpleNamespace(run_dir=tmp_path / "runs", best_checkpoint=None, metrics={"val/acc": 0.5})

    # the command's only call into training, stood in for (the training itself is tested in tests/training)
    monkeypatch.setitem(sys.modules, "carid.training.fit", SimpleNamespace(train=fake_train))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(recipe), "--data", str(dataset), "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    assert seen["config"] == load_config(recipe, [f"data.path={dataset}", "train.epochs=2"])
    assert seen["default_name"] == "recipe" and seen["resume"] is False
    assert "val/acc: 0.5000" in result.output
    missing = runner.invoke(app, ["train", str(recipe), "--data", str(tmp_path / "gone")])
    assert missing.exit_code == 2 and "gone: no such file or directory" in missing.output
