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
