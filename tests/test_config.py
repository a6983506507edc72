from pathlib import Path

import pytest

from carid.config import (
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    merge_trees,
    parse_overrides,
    read_yaml,
    resolve_data_path,
    save_config,
    set_dotted,
)


def test_defaults_and_overrides():
    config = load_config(
        overrides=["data.seed=7", "check.min_side=64", "train.unfreeze=[{epoch: 2, start: 70}]"]
    )
    assert config.data.seed == 7
    assert config.check.min_side == 64
    assert config.train.unfreeze[0].start == 70


def test_unknown_key_is_named(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sed: 3\n")
    with pytest.raises(ConfigError, match=r"data\.sed"):
        load_config(path)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"check\.min_side"):
        load_config(overrides=["check.min_side=big"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["data.seed"])


def test_not_a_mapping(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_save_and_reload_round_trip(tmp_path: Path):
    config = load_config(overrides=["data.val_fraction=0.2", "model.backbone_args={widths: [8, 16]}"])
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    assert isinstance(config, Config)


def test_resolve_data_path_missing_says_how_to_get_data(tmp_path: Path, monkeypatch):
    with pytest.raises(ConfigError, match="Stanford Cars"):
        resolve_data_path(tmp_path / "nothing")
    monkeypatch.setenv("CARID_DATA", str(tmp_path))
    assert resolve_data_path(None) == tmp_path


def test_bare_on_off_in_yaml_and_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  box_head: off\n")
    assert load_config(path).model.box_head == "off"
    assert load_config(overrides=["model.box_head=on"]).model.box_head == "on"


def test_override_through_a_value_is_refused():
    with pytest.raises(ConfigError, match=r"--set data\.seed\.x: 'seed' is a value, not a section"):
        parse_overrides(["data.seed=1", "data.seed.x=2"])


def test_merge_trees_merges_mappings_deeply_and_replaces_other_values():
    base = {"model": {"backbone": "a", "backbone_args": {"widths": [8], "blocks": 2}}, "name": "x"}
    update = {"model": {"backbone_args": {"widths": [16]}}, "name": None}
    assert merge_trees(base, update) == {
        "model": {"backbone": "a", "backbone_args": {"widths": [16], "blocks": 2}},
        "name": None,
    }
    assert base["model"]["backbone_args"]["widths"] == [8]  # the inputs are not changed


def test_set_dotted_replaces_and_creates_sections():
    tree = {"model": {"backbone_args": {"widths": [8], "blocks": 2}}}
    set_dotted(tree, "model.backbone_args", {"widths": [16]})
    set_dotted(tree, "train.epochs", 3)
    assert tree == {"model": {"backbone_args": {"widths": [16]}}, "train": {"epochs": 3}}
    with pytest.raises(ConfigError, match=r"train\.epochs\.x: 'epochs' is a value"):
        set_dotted(tree, "train.epochs.x", 1)


def test_apply_overrides_merges_like_load_config_and_validates():
    config = load_config(overrides=["model.backbone_args={widths: [8, 16], blocks_per_stage: 2}"])
    changed = apply_overrides(config, ["model.backbone_args={widths: [4]}", "train.epochs=3"])
    assert changed.model.backbone_args == {"widths": [4], "blocks_per_stage": 2}
    assert changed.train.epochs == 3 and config.train.epochs != 3
    assert apply_overrides(config, []) is config
    with pytest.raises(ConfigError, match=r"--set: invalid config\n  train\.nonsense"):
        apply_overrides(config, ["train.nonsense=1"])


def test_read_yaml_names_the_file_and_the_problem(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text("a: [1, 2]\n")
    assert read_yaml(good) == {"a": [1, 2]}
    with pytest.raises(ConfigError, match=r"gone\.yaml: sweep file not found"):
        read_yaml(tmp_path / "gone.yaml", "sweep file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        read_yaml(bad)
