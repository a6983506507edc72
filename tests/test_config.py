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
    with pytest.raises(ConfigError, match=r"--set train\.nonsense=1: invalid config\n  train\.nonsense"):
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


def test_a_misspelt_key_in_a_file_gets_a_did_you_mean_naming_the_file(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text("train:\n  epochz: 3\n  image_size: 64\nmodle: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["train.epochs=2"])
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid config\n")
    assert "train.epochz: unknown key (did you mean train.epochs?)" in message
    assert "train.image_size: unknown key (did you mean model.image_size or detect.image_size?)" in message
    assert "modle: unknown key (did you mean model?)" in message
    assert "--set" not in message  # the override was fine
    assert "carid config show" in (caught.value.hint or "")


def test_a_misspelt_set_key_is_blamed_on_the_set_option_not_the_file(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["data.seed=1", "train.lrr=0.1", "train.unfreeze=[{epoch: 1, strat: 2}]"])
    message = str(caught.value)
    assert "--set train.lrr=0.1: invalid config\n  train.lrr: unknown key (did you mean train.lr?)" in message
    assert "train.unfreeze.0.strat: unknown key (did you mean train.unfreeze.0.start?)" in message
    assert str(path) not in message
    with pytest.raises(ConfigError, match=r"--set check\.min_side=big: invalid config\n  check\.min_side"):
        load_config(path, ["check.min_side=big"])


def test_a_relative_data_path_in_a_config_file_is_found_from_another_folder(tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    dataset = tmp_path / "shared" / "datasets" / "cars"
    dataset.mkdir(parents=True)
    (project / "splits").mkdir()
    (project / "splits" / "split.csv").write_text("x\n")
    recipe = project / "configs" / "recipe.yaml"
    recipe.write_text(
        "data:\n  path: ../shared/datasets/cars\n  split_csv: splits/split.csv\n"
        "  train_extra: [../shared/datasets/cars, nowhere]\n"
    )
    monkeypatch.chdir(project)  # the project root: the path means what it always meant
    assert load_config(recipe).data.path == "../shared/datasets/cars"
    elsewhere = tmp_path / "elsewhere" / "deeper"  # ../shared is not beside it
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # found beside the config file's folder's parent
    config = load_config(recipe)
    assert config.data.path == str(dataset)
    assert config.data.split_csv == str(project / "splits" / "split.csv")
    assert config.data.train_extra == (str(dataset), "nowhere")  # found nowhere: left as written
    # a --set path is the user's own, relative to the current folder
    assert load_config(recipe, ["data.path=../x"]).data.path == "../x"


def test_a_missing_dataset_is_described_as_itself():
    with pytest.raises(ConfigError) as caught:
        resolve_data_path("../shared/datasets/car-models-5-missing/car-models-5")
    message = str(caught.value)
    assert "'car-models-5'" in message and "--data PATH" in message
    assert "Stanford" not in message and "relative path in a config file" in message
    with pytest.raises(ConfigError, match="To get Stanford Cars"):
        resolve_data_path("/nowhere/stanford-cars-crops")


def test_a_shipped_recipe_finds_its_shared_dataset_from_any_folder(
    tmp_path: Path, monkeypatch, shared_datasets: Path
):
    from tests.conftest import shared_dataset

    expected = shared_dataset(shared_datasets, "car-models-5")
    recipe = Path(__file__).resolve().parents[1] / "configs" / "car-models-5-transfer.yaml"
    monkeypatch.chdir(tmp_path)
    assert Path(load_config(recipe).data.path).resolve() == expected.resolve()
