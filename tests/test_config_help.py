"""carid.config_help: help parsed from docstrings, types and defaults, did-you-mean, relative paths."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from carid.config import Config, TrainConfig
from carid.config_help import (
    KeyHelp,
    describe,
    field_help,
    locate_relative,
    missing_data_message,
    section_summary,
    suggest_key,
)


@dataclass(frozen=True)
class Inner:
    """Inner settings.

    Second paragraph, not the summary.

    alpha: the first key, whose help goes on
        over two lines.
    beta, gamma: shared by two keys.
    delta: one meaning; epsilon: another meaning.
    alpha may also carry a note.
    not_a_field: ignored.
    """

    alpha: int = 1
    beta: float = 0.5
    gamma: tuple[int, ...] = ()
    delta: bool = True
    epsilon: str | None = None
    zeta: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    """Outer.

    name: a name.
    """

    inner: Inner = field(default_factory=Inner)
    name: str = "x"


def test_field_help_reads_key_lines_continuations_shared_and_inline_keys() -> None:
    helps = field_help(Inner)
    assert helps["alpha"] == "the first key, whose help goes on over two lines. alpha may also carry a note."
    assert helps["beta"] == helps["gamma"] == "shared by two keys."
    assert helps["delta"] == "one meaning"
    assert helps["epsilon"] == "another meaning."
    assert "zeta" not in helps and "not_a_field" not in helps
    assert section_summary(Inner) == "Inner settings."


def test_describe_lists_nested_keys_with_types_and_yaml_defaults() -> None:
    keys = {item.key: item for item in describe(Outer)}
    assert list(keys) == [
        "inner.alpha",
        "inner.beta",
        "inner.gamma",
        "inner.delta",
        "inner.epsilon",
        "inner.zeta",
        "name",
    ]
    assert keys["inner.gamma"] == KeyHelp("inner.gamma", "tuple[int, ...]", "[]", "shared by two keys.")
    assert (keys["inner.delta"].type, keys["inner.delta"].default) == ("bool", "true")
    assert (keys["inner.epsilon"].type, keys["inner.epsilon"].default) == ("str | None", "null")
    assert keys["inner.zeta"].type == "Literal['a', 'b']" and keys["inner.zeta"].help == ""


def test_describe_config_lists_every_leaf_key_with_the_help_of_its_docstring() -> None:
    described = {item.key: item for item in describe(Config)}
    for section in dataclasses.fields(Config):
        value = getattr(Config(), section.name)
        if dataclasses.is_dataclass(value):
            for leaf in dataclasses.fields(value):
                assert f"{section.name}.{leaf.name}" in described
        else:
            assert section.name in described
    assert described["train.lr"].help == field_help(TrainConfig)["lr"] != ""
    assert (described["train.lr"].type, described["train.lr"].default) == ("float", str(TrainConfig.lr))


def test_suggest_key_prefers_the_same_name_elsewhere_then_a_close_name() -> None:
    assert suggest_key(Config, ("train", "lrr")) == "train.lr"
    assert suggest_key(Config, ("train", "image_size")) == "model.image_size or detect.image_size"
    assert suggest_key(Config, ("modle",)) == "model"
    assert suggest_key(Config, ("train", "unfreeze", 0, "epoc")) == "train.unfreeze.0.epoch"
    assert suggest_key(Config, ("train", "qqqqqqqq")) is None


def test_locate_relative_tries_the_current_folder_then_the_file_folder_and_its_parents(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "data" / "set").mkdir(parents=True)
    config_dir = tmp_path / "project" / "configs"
    config_dir.mkdir(parents=True)
    (config_dir / "local").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert locate_relative("local", config_dir) == str(config_dir / "local")
    assert locate_relative("data/set", config_dir) == str(tmp_path / "data" / "set")
    assert locate_relative("configs", config_dir) == "configs"  # exists from here: unchanged
    assert locate_relative("missing", config_dir) == "missing"
    assert locate_relative(str(tmp_path / "abs"), config_dir) == str(tmp_path / "abs")


def test_missing_data_message_fits_the_dataset() -> None:
    frames = missing_data_message("/x/car-frames")
    assert frames.startswith("/x/car-frames: no such file or directory.") and "'car-frames'" in frames
    assert "Stanford" not in frames and "relative path" not in frames
    assert "To get Stanford Cars" in missing_data_message(None)
