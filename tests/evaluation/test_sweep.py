"""Sweeps: grid parsing, variant names, sweep files, a real 2x1 sweep and its resume after an interrupt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from carid.config import load_config
from carid.evaluation.sweep import (
    STATE_FILE,
    SweepError,
    check_grid_keys,
    expand_grid,
    load_sweep_file,
    parse_grid,
    run_sweep,
    split_top_level,
    variant_config,
    variant_name,
)
from carid.training.fit import train
from tests.training.conftest import draw_boxed_dataset, tiny_config_tree


def test_grid_items_are_parsed_as_yaml_values() -> None:
    grid = parse_grid(
        [
            "model.backbone=carid_vgg,resnet18",
            "model.image_size=32, 48",
            "train.lr=1e-3,0.01",
            "model.backbone_args.widths=[8,16],[16,32]",
            "augment.enabled=true,false",
        ]
    )
    assert grid == {
        "model.backbone": ["carid_vgg", "resnet18"],
        "model.image_size": [32, 48],
        "train.lr": [0.001, 0.01],
        "model.backbone_args.widths": [[8, 16], [16, 32]],
        "augment.enabled": [True, False],
    }
    assert split_top_level("a,'b,c',{x: 1, y: 2}") == ["a", "'b,c'", "{x: 1, y: 2}"]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["model.image_size"], r"--grid 'model\.image_size': expected key=value1,value2"),
        (["=32,48"], r"--grid '=32,48': the key before '=' is empty"),
        (["model.image_size=32,,48"], r"grid key 'model\.image_size': empty value"),
        (["model.image_size="], r"grid key 'model\.image_size': empty value"),
        (
            ["model.backbone_args.widths=[8,16"],
            r"grid key 'model\.backbone_args\.widths': .* unclosed bracket",
        ),
        (["train.lr=0.1", "train.lr=0.2"], r"grid key 'train\.lr': given twice"),
        (["train.optimizer=sgd,sgd"], r"grid key 'train\.optimizer': value 'sgd' is listed twice"),
        (["model.backbone=a: b: c"], r"grid key 'model\.backbone': 'a: b: c' is not a valid value"),
    ],
)
def test_grid_parsing_errors_name_the_key(items: list[str], message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_grid(items)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "model.backbon",
            r"grid key 'model\.backbon': 'backbon' is not a setting of model \(it has: backbone,",
        ),
        ("modle.backbone", r"grid key 'modle\.backbone': 'modle' is not a setting of the config"),
        ("model", r"grid key 'model': is a whole section"),
        (
            "model.image_size.x",
            r"grid key 'model\.image_size\.x': model\.image_size is a value, not a section",
        ),
    ],
)
def test_grid_keys_must_be_config_settings(key: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        check_grid_keys({key: [1, 2]})


def test_free_form_settings_accept_any_key_below_them() -> None:
    check_grid_keys({"model.backbone_args.widths": [[8, 16]], "train.optimizer": ["sgd"]})


def test_variant_names_are_deterministic_readable_and_distinct() -> None:
    grid = {"model.backbone": ["carid_vgg", "resnet18"], "model.image_size": [32, 48]}
    names = [variant.name for variant in expand_grid(grid)]
    assert names == [
        "sweep-backbone-carid_vgg-image_size-32",
        "sweep-backbone-carid_vgg-image_size-48",
        "sweep-backbone-resnet18-image_size-32",
        "sweep-backbone-resnet18-image_size-48",
    ]
    assert names == [variant.name for variant in expand_grid(grid)]
    # keys ending alike keep their section; lists are joined
    assert variant_name("s", {"train.lr": 0.1, "model.lr": [8, 16]}) == "s-train_lr-0.1-model_lr-8_16"
    long_name = variant_name("s", {"model.backbone": "x" * 200})
    assert len(long_name) <= 120 and long_name != variant_name("s", {"model.backbone": "x" * 199 + "y"})


def test_a_variant_config_replaces_the_base_values_of_its_keys(tmp_path: Path) -> None:
    base = load_config(overrides=["model.backbone_args={widths: [8, 16], blocks_per_stage: 2}"])
    grid = {"model.backbone_args": [{"widths": [4]}], "model.image_size": [48]}
    (variant,) = expand_grid(grid)
    config = variant_config(base, variant, tmp_path)
    assert config.model.backbone_args == {"widths": [4]}  # replaced, not merged
    assert (config.model.image_size, config.name, config.run_dir) == (48, variant.name, str(tmp_path))
    (through_a_value,) = expand_grid({"model.backbone_args.widths.first": [4]})
    with pytest.raises(SweepError, match=r"model\.backbone_args\.widths\.first: 'widths' is a value"):
        variant_config(base, through_a_value, tmp_path)


def test_a_sweep_file_gives_base_grid_overrides_and_name(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    path = tmp_path / "sweeps" / "sizes.yaml"
    path.parent.mkdir()
    path.write_text(
        "base: ../configs/tiny.yaml\nname: sizes\nmetric: val/loss\nset: [train.epochs=3]\n"
        "sweep:\n  model.image_size: [32, 48]\n  train.optimizer: [adamw]\n",
        encoding="utf-8",
    )
    spec = load_sweep_file(path)
    assert spec.base == path.parent / "../configs/tiny.yaml"
    assert spec.grid == {"model.image_size": [32, 48], "train.optimizer": ["adamw"]}
    assert (spec.overrides, spec.name, spec.metric) == (("train.epochs=3",), "sizes", "val/loss")

    path.write_text("sweep:\n  model.image_size: 32\n", encoding="utf-8")
    with pytest.raises(SweepError, match=r"sizes\.yaml: sweep\.model\.image_size: expected a list"):
        load_sweep_file(path)
    path.write_text("sweeps:\n  model.image_size: [32]\n", encoding="utf-8")
    with pytest.raises(SweepError, match=r"unknown key\(s\) \['sweeps'\]"):
        load_sweep_file(path)


class Recorder:
    """A train function that records its calls and trains for real (or fails for chosen names)."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail = fail

    def __call__(self, config: Any, resume: bool, progress: bool) -> Any:
        self.calls.append((config.name, resume))
        if config.name in self.fail:
            raise RuntimeError("out of memory (simulated)")
        return train(config, resume=resume, progress=progress)


def _state(out: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    return {variant["name"]: variant for variant in data["variants"]}


def test_a_2x1_sweep_runs_both_then_resumes_only_the_interrupted_one(tmp_path: Path) -> None:
    data = draw_boxed_dataset(tmp_path / "data")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_config_tree(data, tmp_path / "unused")), encoding="utf-8")
    grid = {"model.image_size": [32, 40], "train.optimizer": ["adamw"]}
    out = tmp_path / "sweep"

    first = Recorder()
    result = run_sweep(base, grid, out, train_fn=first)
    small, large = "sweep-image_size-32-optimizer-adamw", "sweep-image_size-40-optimizer-adamw"
    assert first.calls == [(small, False), (large, False)]
    assert [v.status for v in result.variants] == ["done", "done"]
    state = _state(out)
    assert {name: entry["status"] for name, entry in state.items()} == {small: "done", large: "done"}
    assert result.comparison is not None and len(result.comparison.runs) == 2
    assert (out / "comparison.csv").exists() and (out / "curves.png").exists()
    for name in (small, large):
        assert json.loads((out / name / "summary.json").read_text())["epochs_completed"] == 1

    # Simulate an interrupt during the second variant: it is "running", has a last.ckpt, no summary.
    raw = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    for entry in raw["variants"]:
        if entry["name"] == large:
            entry["status"] = "running"
    (out / STATE_FILE).write_text(json.dumps(raw), encoding="utf-8")
    (out / large / "summary.json").unlink()
    assert (out / large / "checkpoints" / "last.ckpt").exists()
    small_metrics = (out / small / "metrics.csv").read_text(encoding="utf-8")

    second = Recorder()
    resumed = run_sweep(base, grid, out, overrides=["train.epochs=2"], train_fn=second)
    assert second.calls == [(large, True)]
    assert resumed.skipped == (small,)
    assert [v.status for v in resumed.variants] == ["done", "done"]
    summary = json.loads((out / large / "summary.json").read_text(encoding="utf-8"))
    assert summary["resumed"] is True and summary["epochs_completed"] == 2
    assert (out / small / "metrics.csv").read_text(encoding="utf-8") == small_metrics
    assert _state(out)[large]["attempts"] == 2


def test_a_failed_variant_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    data = draw_boxed_dataset(tmp_path / "data", per_class=4)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_config_tree(data, tmp_path / "unused")), encoding="utf-8")
    out = tmp_path / "sweep"
    recorder = Recorder(fail=("sweep-optimizer-adamw",))
    result = run_sweep(base, {"train.optimizer": ["adamw", "sgd"]}, out, train_fn=recorder)
    assert [call[0] for call in recorder.calls] == ["sweep-optimizer-adamw", "sweep-optimizer-sgd"]
    failed, done = result.variants
    assert failed.status == "failed" and failed.error == "RuntimeError: out of memory (simulated)"
    assert done.status == "done"
    assert [run.name for run in result.comparison.runs] == ["sweep-optimizer-sgd"]
    assert _state(out)["sweep-optimizer-adamw"]["status"] == "failed"


def test_bad_grids_fail_before_anything_trains(tmp_path: Path) -> None:
    recorder = Recorder()
    with pytest.raises(SweepError, match=r"model\.imagesize"):
        run_sweep(None, {"model.imagesize": [32]}, tmp_path / "a", train_fn=recorder)
    with pytest.raises(SweepError, match=r"model\.image_size"):
        run_sweep(None, {"model.image_size": ["big"]}, tmp_path / "b", train_fn=recorder)
    assert recorder.calls == []
    assert not (tmp_path / "a").exists()


def test_an_existing_sweep_is_not_overwritten_without_resume(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    (out / STATE_FILE).write_text(json.dumps({"variants": []}), encoding="utf-8")
    with pytest.raises(SweepError, match="already holds a sweep"):
        run_sweep(None, {"train.optimizer": ["sgd"]}, out, resume=False, train_fn=Recorder())
