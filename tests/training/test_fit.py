"""`train`: a whole run on a synthetic boxed dataset, overrides, refits, the learning-rate finder, recipes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from carid.artifacts.checkpoint import CHECKPOINT_KEY
from carid.config import ConfigError, apply_overrides, load_config
from carid.data.readers import read_dataset
from carid.data.samples import Sample
from carid.data.split import load_split, save_split
from carid.models.checkpoint import load_for_inference
from carid.training.fit import RunResult, train, train_from_cli
from carid.training.plots import epoch_metrics
from tests.conftest import shared_dataset


class KeepModule(L.Callback):
    """Keeps a reference to the trained module."""

    module: L.LightningModule | None = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self.module = pl_module


def test_one_epoch_run_writes_the_run_dir_and_the_best_checkpoint_predicts_identically(tiny_config) -> None:
    config = tiny_config(name="e2e")
    keeper = KeepModule()
    result = train(config, progress=False, callbacks=[keeper])

    run_dir = result.run_dir
    assert run_dir == (Path(config.run_dir) / "e2e").resolve()
    for name in ("config.yaml", "split.csv", "metrics.csv", "curves.png", "summary.json", "checks.json"):
        assert (run_dir / name).is_file(), name
    assert (
        result.best_checkpoint == run_dir / "checkpoints" / "best.ckpt" and result.best_checkpoint.is_file()
    )
    assert (
        result.last_checkpoint == run_dir / "checkpoints" / "last.ckpt" and result.last_checkpoint.is_file()
    )
    assert load_config(run_dir / "config.yaml") == config

    split = load_split(run_dir / "split.csv")
    assert len(split) == 24 and {s.split for s in split} == {"train", "val", "test"}

    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "train/loss",
        "train/cls",
        "train/box_l1",
        "train/box_giou",
        "val/loss",
        "val/acc",
        "val/iou",
    ):
        assert column in header, column
    records = epoch_metrics(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in records] == [0]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["with_box"] is True and summary["num_classes"] == 3
    assert summary["monitor"] == "val/acc" and summary["best_score"] == pytest.approx(records[0]["val/acc"])
    assert result.metrics["val/acc"] == pytest.approx(records[0]["val/acc"])
    # the best checkpoint is evaluated on the held-out test split when training ends
    assert 0.0 <= summary["test_metrics"]["test/acc"] <= 1.0 and "test/iou" in summary["test_metrics"]
    assert json.loads(json.dumps(result.to_dict()))["best_checkpoint"] == str(result.best_checkpoint)

    # the whole checkpoint loads with weights_only=True and carries what prediction needs
    raw = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert raw[CHECKPOINT_KEY]["class_names"] == ["blue", "green", "red"]
    network, metadata = load_for_inference(result.best_checkpoint)
    assert metadata.with_box and metadata.label_level == "class"
    assert metadata.preprocess_spec().image_size == (32, 32)

    trained = keeper.module.network.eval()
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected, got = trained(images), network(images)
    assert torch.equal(expected.logits, got.logits)
    assert torch.equal(expected.box, got.box)


def test_cli_entry_names_the_run_after_the_config_file(boxed_dataset: Path, tmp_path: Path) -> None:
    from tests.training.conftest import tiny_config_tree

    tree = tiny_config_tree(boxed_dataset, tmp_path / "runs")
    config_path = tmp_path / "my-recipe.yaml"
    config_path.write_text(yaml.safe_dump(tree))
    settings = ["train.limit_train_batches=1", "train.limit_val_batches=1", "model.box_head='off'"]
    settings += ["train.optimizer=sgd", "train.schedule=onecycle", "train.early_stopping_patience=2"]
    result = train_from_cli(config_path, settings)
    assert isinstance(result, RunResult)
    assert result.run_dir.name == "my-recipe"
    # every state Lightning stores (scheduler, early stopping, ...) loads with weights_only=True
    raw = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert any("EarlyStopping" in key for key in raw["callbacks"]) and raw["lr_schedulers"]
    _, metadata = load_for_inference(result.last_checkpoint)
    assert metadata.with_box is False
    assert "val/iou" not in result.metrics


def test_overrides_are_validated(tiny_config) -> None:
    config = apply_overrides(tiny_config(), ["train.epochs=7", "train.freeze=3"])
    assert config.train.epochs == 7 and config.train.freeze == 3
    with pytest.raises(ConfigError, match="nonsense"):
        apply_overrides(config, ["train.nonsense=1"])


def test_incompatible_settings_are_refused(tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"cache_features needs train\.freeze"):
        train(tiny_config(train={"cache_features": True}), progress=False)
    with pytest.raises(ConfigError, match="does not work with DDP"):
        train(tiny_config(train={"unfreeze": [{"epoch": 1, "start": 0}], "strategy": "ddp"}), progress=False)


def test_fit_on_val_trains_on_train_and_val_and_keeps_the_last_epoch(tiny_config) -> None:
    result = train(tiny_config(name="refit", train={"epochs": 2, "fit_on_val": True}), progress=False)
    run_dir = result.run_dir
    saved = load_split(run_dir / "split.csv")
    counts = {name: sum(s.split == name for s in saved) for name in ("train", "val", "test")}
    assert counts["val"] > 0  # the saved split still tells which images were val

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["fit_on_val"] is True and summary["monitor"] is None
    expected = {"train": counts["train"] + counts["val"], "val": 0, "test": counts["test"]}
    assert summary["split_counts"] == expected
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/loss" in header and not any(column.startswith("val/") for column in header)
    # best.ckpt is the last epoch, not the one with the lowest (augmented) train loss
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert best["epoch"] == last["epoch"] == 1
    assert "test/acc" in summary["test_metrics"]

    with pytest.raises(ConfigError, match=r"fit_on_val.*early_stopping_patience"):
        train(tiny_config(train={"fit_on_val": True, "early_stopping_patience": 3}), progress=False)


def test_lr_finder_records_and_uses_its_suggestion(tiny_config) -> None:
    result = train(tiny_config(train={"lr_find": True}), progress=False)
    record = json.loads((result.run_dir / "lr_find.json").read_text())
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert record["lr"] and len(record["lr"]) == len(record["loss"])
    if record["suggestion"] is not None:
        assert summary["lr"] == pytest.approx(record["suggestion"])
    assert (result.run_dir / "lr_find.png").is_file()


@pytest.mark.shared_data
def test_a_few_real_car_photos(shared_datasets: Path, tiny_config, tmp_path: Path) -> None:
    """20 photos of car-models-5 (4 per class) at 64 px, one epoch."""
    root = shared_dataset(shared_datasets, "car-models-5")
    table = read_dataset(root)
    chosen: list[Sample] = []
    for name in table.classes:
        of_class = [s for s in table.samples if s.label == name][:4]
        chosen += [s.with_(split="train") for s in of_class[:3]] + [of_class[3].with_(split="val")]
    small = table.with_samples(chosen)
    split_csv = tmp_path / "few.csv"
    save_split(small, [s.split for s in chosen], split_csv)
    config = tiny_config(
        data={"path": None, "format": None, "split_csv": str(split_csv)},
        model={"image_size": 64},
        train={"batch_size": 5},
    )
    result = train(config, progress=False)
    assert len(table.classes) == 5
    _, metadata = load_for_inference(result.best_checkpoint)
    assert list(metadata.class_names) == table.classes and metadata.with_box is False
    with (result.run_dir / "split.csv").open() as handle:
        assert sum(1 for _ in csv.DictReader(handle)) == 20
    assert 0.0 <= result.metrics["val/acc"] <= 1.0


REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def _differences(tree: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Keys of `tree` whose value equals the default (recipes should only say what differs)."""
    same = []
    for key, value in tree.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict) and key != "backbone_args":
            same += _differences(value, default, f"{prefix}{key}.")
        elif value == (list(default) if isinstance(default, tuple) else default):
            same.append(prefix + key)
    return same


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipes_are_valid_and_minimal(recipe: Path) -> None:
    from carid.config import Config, to_dict
    from carid.models.network import build_network

    text = recipe.read_text()
    assert text.startswith("# ") and "Expected time" in text and f"carid train configs/{recipe.name}" in text
    config = load_config(recipe)
    assert not _differences(yaml.safe_load(text), to_dict(Config())), "keys equal to their defaults"
    assert config.data.path is not None
    if config.data.path.startswith("runs/"):  # a generated dataset: the header must say how to make it
        assert f"--out {config.data.path}" in text and "carid data " in text
    else:
        assert config.data.path.startswith("../shared/datasets/")
    freeze_points = [config.train.freeze, *(step.start for step in config.train.unfreeze)]
    if any(point not in ("none", "backbone") for point in freeze_points):
        model = config.model.__class__(**{**config.model.__dict__, "pretrained": "none"})
        backbone = build_network(model, num_classes=2, with_box=False).backbone
        for point in freeze_points:
            if point not in ("none", "backbone"):
                backbone.layer_index(point)


def test_recipe_set_is_complete() -> None:
    names = {path.stem for path in RECIPES}
    expected = {"stanford-cars", "stanford-bodytype", "car-models-5-transfer", "pets-localize"}
    expected |= {f"car-models-5-scratch-{step}" for step in ("base", "augment", "batchnorm", "dropout")}
    expected |= {"body-75px", "body-100px", "frozen-cache"}
    assert expected <= names


@pytest.mark.shared_data
def test_recipe_data_paths_exist(shared_datasets: Path) -> None:
    for recipe in RECIPES:
        path = load_config(recipe).data.path
        if path.startswith("runs/"):  # generated by the command in its header (see the test above)
            continue
        assert (REPO_ROOT / path).exists(), f"{recipe.name}: {path}"


def test_ema_checkpoints_hold_the_moving_average_and_the_raw_weights(tiny_config) -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        train(tiny_config(train={"ema_decay": 1.0}), progress=False)
    result = train(tiny_config(name="ema", train={"batch_size": 4, "ema_decay": 0.5}), progress=False)
    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert averaged.keys() == raw.keys()
    weights = [name for name, value in raw.items() if value.is_floating_point() and "running" not in name]
    assert any(not torch.equal(averaged[name], raw[name]) for name in weights)
    assert int(checkpoint["averaging_state"]["n_averaged"]) > 1
    network, _ = load_for_inference(result.best_checkpoint)  # inference loads the average
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, best[f"network.{name}"])


class LastOnDisk(L.Callback):
    """The epoch of checkpoints/last.ckpt on disk at the start of each epoch after the first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self.seen.append(torch.load(self.path, map_location="cpu", weights_only=False)["epoch"])


def test_last_checkpoint_is_the_last_epoch_even_when_an_earlier_one_was_best(tiny_config) -> None:
    """What a crashed run resumes from: the epoch before, not the best one."""
    config = tiny_config(name="last", train={"epochs": 3})
    watcher = LastOnDisk(Path(config.run_dir) / "last" / "checkpoints" / "last.ckpt")
    result = train(config, progress=False, callbacks=[watcher])
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    assert watcher.seen == [0, 1]
    assert best["epoch"] < 2  # this seeded run is best at its first epoch: last.ckpt must not copy it
    final = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert final["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 3
