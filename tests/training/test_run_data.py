"""`prepare_labels`: the classes of a run at each label level."""

from __future__ import annotations

from pathlib import Path

import pytest

from carid.config import ConfigError
from carid.data.samples import Sample, SampleTable
from carid.training.run_data import prepare_labels


def test_label_level_maps_classes_through_the_taxonomy(tmp_path: Path) -> None:
    names = ["Audi TTS Coupe 2012", "BMW M3 Coupe 2012", "Ford F-150 Regular Cab 2012"]
    samples = [Sample(tmp_path / f"{i}.jpg", names[i % 3], split="train") for i in range(6)]
    table = SampleTable(samples, names, tmp_path, "test")
    prepared = prepare_labels(table, "body_type")
    assert prepared.classes == ["Coupe", "Pickup"]
    assert [prepared.label_of(s) for s in samples[:3]] == ["Coupe", "Coupe", "Pickup"]
    assert prepared.taxonomy is None
    by_class = prepare_labels(table, "class")
    assert by_class.classes == names and by_class.taxonomy["classes"] == names
    with pytest.raises(ConfigError, match="needs at least two"):
        prepare_labels(table, "year")  # every class is a 2012 model


def _folder(root: Path, labels: tuple[str, ...], count: int, seed: int) -> Path:
    from tests.conftest import write_image

    for label in labels:
        for i in range(count):
            write_image(root / label / f"{label}_{i:02d}.jpg", size=(40, 40), seed=seed + i)
    return root


def test_train_extra_joins_the_training_split_only(tmp_path: Path) -> None:
    from carid.config import CheckConfig, Config, DataConfig
    from carid.data.split import load_split
    from carid.training.run_data import load_run_data

    main = _folder(tmp_path / "main", ("audi", "bmw"), 10, seed=0)
    extra = _folder(tmp_path / "extra", ("bmw", "fiat"), 4, seed=100)
    config = Config(
        data=DataConfig(path=str(main), train_extra=(str(extra),), exclude=("fiat_03.jpg",)),
        check=CheckConfig(workers=1),
    )
    run = tmp_path / "run"
    table = load_run_data(config, run, reuse_split=False, write=True, progress=False)
    extra_rows = [s for s in table.samples if s.path.is_relative_to(extra)]
    assert len(extra_rows) == 7 and {s.split for s in extra_rows} == {"train"}
    assert {s.split for s in table.samples if s.path.is_relative_to(main)} == {"train", "val", "test"}
    assert table.classes == ["audi", "bmw", "fiat"]
    # the run's split.csv lists them, so a resumed run trains on the same samples
    again = load_split(run / "split.csv")
    assert sorted(str(s.path) for s in again.samples) == sorted(str(s.path) for s in table.samples)
    with pytest.raises(ConfigError, match=r"train_extra: .*nowhere: no such"):
        load_run_data(
            Config(data=DataConfig(path=str(main), train_extra=(str(tmp_path / "nowhere"),))),
            tmp_path / "run2",
            reuse_split=False,
            write=False,
            progress=False,
        )
