from pathlib import Path

import pytest

from carid.config import (
    Config,
    ConfigError,
    load_config,
    parse_overrides,
    resolve_data_path,
    save_config,
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
