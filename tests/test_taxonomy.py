"""Tests for carid.taxonomy: name parsing, the Stanford Cars names, levels, roll_up, JSON round trip."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carid.taxonomy import (
    BODY_TYPE_BY_MODEL,
    BODY_TYPES,
    UNKNOWN,
    CarName,
    Taxonomy,
    parse_car_name,
    roll_up,
)
from tests.conftest import shared_dataset

DOCS = Path(__file__).resolve().parents[1] / "docs" / "taxonomy.md"

# name -> (make, model, body type, year), decided by hand.
TRICKY_NAMES = {
    "Audi TTS Coupe 2012": ("Audi", "TTS", "Coupe", 2012),
    "Chevrolet Silverado 2500HD Regular Cab 2012": ("Chevrolet", "Silverado 2500HD", "Pickup", 2012),
    "Ram C/V Cargo Van Minivan 2012": ("Ram", "C/V", "Van", 2012),
    "AM General Hummer SUV 2000": ("AM General", "Hummer", "SUV", 2000),
    "Aston Martin V8 Vantage Convertible 2012": ("Aston Martin", "V8 Vantage", "Convertible", 2012),
    "Land Rover Range Rover SUV 2012": ("Land Rover", "Range Rover", "SUV", 2012),
    "Chevrolet Corvette ZR1 2012": ("Chevrolet", "Corvette ZR1", "Coupe", 2012),
    "Dodge Challenger SRT8 2011": ("Dodge", "Challenger SRT8", "Coupe", 2011),
    "Fiat 500 Abarth 2012": ("Fiat", "500 Abarth", "Hatchback", 2012),
    "FIAT 500 Abarth 2012": ("FIAT", "500 Abarth", "Hatchback", 2012),
    "Lamborghini Gallardo LP 570-4 Superleggera 2012": (
        "Lamborghini",
        "Gallardo LP 570-4 Superleggera",
        "Coupe",
        2012,
    ),
    "Chevrolet Express Cargo Van 2007": ("Chevrolet", "Express", "Van", 2007),
    "Ford F-150 Regular Cab 2012": ("Ford", "F-150", "Pickup", 2012),
    "Chrysler Town and Country Minivan 2012": ("Chrysler", "Town and Country", "Van", 2012),
    "Eagle Talon Hatchback 1998": ("Eagle", "Talon", "Hatchback", 1998),
    "Mercedes-Benz Sprinter Van 2012": ("Mercedes-Benz", "Sprinter", "Van", 2012),
    "smart fortwo Convertible 2012": ("smart", "fortwo", "Convertible", 2012),
    "Bugatti Veyron 16.4 Convertible 2009": ("Bugatti", "Veyron 16.4", "Convertible", 2009),
    "Ford E-Series Wagon Van 2012": ("Ford", "E-Series", "Van", 2012),
    "Nissan NV Passenger Van 2012": ("Nissan", "NV", "Van", 2012),
    "Ford Ranger SuperCab 2011": ("Ford", "Ranger", "Pickup", 2011),
    "Dodge Ram Pickup 3500 Quad Cab 2009": ("Dodge", "Ram Pickup 3500", "Pickup", 2009),
    "Rolls-Royce Phantom Drophead Coupe Convertible 2012": (
        "Rolls-Royce",
        "Phantom Drophead Coupe",
        "Convertible",
        2012,
    ),
    "Infiniti G Coupe IPL 2012": ("Infiniti", "G Coupe IPL", "Coupe", 2012),
    "Chevrolet HHR SS 2010": ("Chevrolet", "HHR SS", "Wagon", 2010),
    "Acura Integra Type R 2001": ("Acura", "Integra Type R", "Coupe", 2001),
    "Chrysler 300 SRT-8 2010": ("Chrysler", "300 SRT-8", "Sedan", 2010),
}


@pytest.mark.parametrize("name", sorted(TRICKY_NAMES))
def test_tricky_names_parse_to_hand_checked_parts(name: str) -> None:
    make, model, body_type, year = TRICKY_NAMES[name]
    assert parse_car_name(name) == CarName(name, make, model, body_type, year, parsed=True)


def test_exception_table_applies_to_any_year_and_case() -> None:
    entry = parse_car_name("dodge challenger srt8 2013")
    assert (entry.make, entry.model, entry.body_type, entry.year, entry.parsed) == (
        "dodge",
        "challenger srt8",
        "Coupe",
        2013,
        True,
    )


@pytest.mark.parametrize(
    ("name", "make", "model", "year"),
    [
        ("Hyundai Creta 2021", "Hyundai", "Creta", 2021),
        ("foo", "foo", "", None),
        ("Honda Jazz", "Honda", "Jazz", None),
        ("Land Rover Defender 1990", "Land Rover", "Defender", 1990),
        ("", UNKNOWN, "", None),
    ],
)
def test_unknown_names_fall_back(name: str, make: str, model: str, year: int | None) -> None:
    entry = parse_car_name(name)
    assert (entry.make, entry.model, entry.body_type, entry.year, entry.parsed) == (
        make,
        model,
        UNKNOWN,
        year,
        False,
    )


def test_partial_names_keep_what_they_say_but_are_not_parsed() -> None:
    no_year = parse_car_name("Toyota Yaris Hatchback")
    assert (no_year.body_type, no_year.year, no_year.parsed) == ("Hatchback", None, False)
    no_model = parse_car_name("Ford Van 2012")
    assert (no_model.model, no_model.body_type, no_model.parsed) == ("", "Van", False)


def test_taxonomy_lists_unparsed_names_and_labels_them_unknown() -> None:
    taxonomy = Taxonomy.from_class_names(["Audi TTS Coupe 2012", "Hyundai Creta 2021", "foo"])
    assert taxonomy.unparsed == ("Hyundai Creta 2021", "foo")
    assert taxonomy.labels("body_type") == ["Coupe", UNKNOWN, UNKNOWN]
    assert taxonomy.labels("year") == ["2012", "2021", UNKNOWN]
    assert taxonomy.values("year") == ["2012", "2021", UNKNOWN]
    summary = taxonomy.summary().to_dict()
    assert summary["unparsed"] == ["Hyundai Creta 2021", "foo"]
    assert summary["body_type_counts"] == {"Coupe": 1, UNKNOWN: 2}
    json.dumps(summary)


CLASSES = [
    "Audi TTS Coupe 2012",  # 0
    "BMW X3 SUV 2012",  # 1
    "Audi S4 Sedan 2007",  # 2
    "BMW M5 Sedan 2010",  # 3
    "audi A5 Coupe 2012",  # 4: lower-case make sorts beside "Audi"
]


def test_levels_values_and_index_matrix() -> None:
    taxonomy = Taxonomy.from_class_names(CLASSES)
    assert taxonomy.levels == ("class", "make", "body_type", "year")
    assert taxonomy.labels("class") == CLASSES
    assert taxonomy.values("class") == CLASSES
    assert taxonomy.labels("make") == ["Audi", "BMW", "Audi", "BMW", "audi"]
    assert taxonomy.values("make") == ["Audi", "audi", "BMW"]
    assert taxonomy.values("body_type") == ["Sedan", "SUV", "Coupe"]  # canonical order, not alphabetical
    assert taxonomy.values("year") == ["2007", "2010", "2012"]
    assert taxonomy.index_matrix("class").tolist() == [0, 1, 2, 3, 4]
    assert taxonomy.index_matrix("make").tolist() == [0, 2, 0, 2, 1]
    assert taxonomy.index_matrix("body_type").tolist() == [2, 1, 0, 0, 2]
    assert taxonomy.index_matrix("year").dtype == np.int64
    with pytest.raises(ValueError, match="unknown taxonomy level 'model'"):
        taxonomy.labels("model")


def test_roll_up_sums_class_probabilities_per_level_value() -> None:
    taxonomy = Taxonomy.from_class_names(CLASSES)
    probabilities = np.array(
        [
            [0.1, 0.2, 0.3, 0.15, 0.25],
            [0.0, 0.5, 0.0, 0.5, 0.0],
        ]
    )
    body = roll_up(probabilities, taxonomy, "body_type")  # Sedan = 2 + 3, SUV = 1, Coupe = 0 + 4
    np.testing.assert_allclose(body, [[0.45, 0.2, 0.35], [0.5, 0.5, 0.0]])
    make = roll_up(probabilities, taxonomy, "make")  # Audi = 0 + 2, audi = 4, BMW = 1 + 3
    np.testing.assert_allclose(make, [[0.4, 0.25, 0.35], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(roll_up(probabilities, taxonomy, "class"), probabilities)
    for level in taxonomy.levels:
        np.testing.assert_allclose(roll_up(probabilities, taxonomy, level).sum(axis=1), 1.0)
    single = roll_up(probabilities[0].astype(np.float32), taxonomy, "year")
    assert single.dtype == np.float32 and single.shape == (3,)
    with pytest.raises(ValueError, match=r"shape \[N, 5\]"):
        roll_up(np.ones((2, 4)), taxonomy, "make")


def test_roll_up_of_random_softmax_rows_sums_to_one() -> None:
    taxonomy = Taxonomy.from_class_names([*CLASSES, "Hyundai Creta 2021"])
    logits = np.random.default_rng(0).normal(size=(8, taxonomy.num_classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rolled = roll_up(probabilities, taxonomy, "body_type")
    assert rolled.shape == (8, 4)  # Sedan, SUV, Coupe, Unknown
    np.testing.assert_allclose(rolled.sum(axis=1), 1.0)


def test_to_dict_from_dict_round_trip_through_json() -> None:
    taxonomy = Taxonomy.from_class_names([*CLASSES, "Hyundai Creta 2021"])
    restored = Taxonomy.from_dict(json.loads(json.dumps(taxonomy.to_dict())))
    assert restored == taxonomy
    assert Taxonomy.from_dict({"classes": CLASSES}) == Taxonomy.from_class_names(CLASSES)


def test_from_dict_keeps_stored_entries_instead_of_reparsing() -> None:
    data = Taxonomy.from_class_names(CLASSES).to_dict()
    data["entries"][0]["body_type"] = "Hatchback"
    assert Taxonomy.from_dict(data).labels("body_type")[0] == "Hatchback"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda data: data.update(format="other"), "format is 'other'"),
        (lambda data: data.update(version=99), "version 99"),
        (lambda data: data.update(classes="Audi"), "'classes' must be a list"),
        (lambda data: data["entries"][1].pop("year"), "entry 1: missing field"),
        (lambda data: data["entries"][2].update(body_type="Truck"), "entry 2: body_type 'Truck'"),
        (lambda data: data["entries"][0].update(year="2012"), "entry 0: field 'year'"),
        (lambda data: data["entries"].pop(), "5 classes but 4 entries"),
        (lambda data: data["entries"].reverse(), "entry 0 is for"),
    ],
)
def test_from_dict_rejects_bad_data_with_a_clear_message(change, message: str) -> None:
    data = Taxonomy.from_class_names(CLASSES).to_dict()
    change(data)
    with pytest.raises(ValueError, match=message):
        Taxonomy.from_dict(data)


def test_from_class_names_rejects_duplicates_and_empty_names() -> None:
    with pytest.raises(ValueError, match="repeated: 'Audi TTS Coupe 2012'"):
        Taxonomy.from_class_names([CLASSES[0], CLASSES[1], CLASSES[0]])
    with pytest.raises(ValueError, match="class 1: class name must be a non-empty string"):
        Taxonomy.from_class_names([CLASSES[0], "  "])


def test_module_imports_without_torch_scipy_or_pandas() -> None:
    code = (
        "import sys, carid.taxonomy; "
        "print(sorted(m for m in ('torch', 'scipy', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_model_in_the_exception_table_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [f"{make} {model}" for make, model in BODY_TYPE_BY_MODEL if f"{make} {model}" not in text]
    assert not missing, f"docs/taxonomy.md does not explain: {missing}"


def _stanford_class_names(shared_datasets: Path) -> list[str]:
    """The class names of labels.csv in class_id order (1-based ids, one name per id)."""
    labels = shared_dataset(shared_datasets, "stanford-cars-crops") / "labels.csv"
    with labels.open(newline="", encoding="utf-8") as handle:
        by_id = {int(row["class_id"]): row["class_name"] for row in csv.DictReader(handle)}
    return [by_id[class_id] for class_id in sorted(by_id)]


@pytest.mark.shared_data
def test_all_stanford_names_parse_into_the_canonical_body_types(shared_datasets: Path) -> None:
    names = _stanford_class_names(shared_datasets)
    assert len(names) == 196
    taxonomy = Taxonomy.from_class_names(names)
    summary = taxonomy.summary()
    counts = dict(summary.body_type_counts)
    assert taxonomy.unparsed == (), f"unparsed: {taxonomy.unparsed}; body-type counts {counts}"
    assert set(taxonomy.labels("body_type")) <= set(BODY_TYPES), f"body-type counts {counts}"
    assert set(counts) == set(BODY_TYPES), f"every canonical type occurs; body-type counts {counts}"
    largest = sorted(counts, key=counts.__getitem__, reverse=True)[:3]
    assert {"Sedan", "SUV"} <= set(largest), f"Sedan and SUV among the largest; body-type counts {counts}"
    assert len(summary.make_counts) == 49, f"Stanford Cars has 49 makes; got {sorted(summary.make_counts)}"
    years = [int(year) for year in taxonomy.values("year")]
    assert (min(years), max(years)) == (1991, 2012)


@pytest.mark.shared_data
def test_every_exception_is_used_by_exactly_one_stanford_name(shared_datasets: Path) -> None:
    names = _stanford_class_names(shared_datasets)
    used = [
        (entry.make, entry.model)
        for entry in map(parse_car_name, names)
        if (entry.make, entry.model) in BODY_TYPE_BY_MODEL
    ]
    assert sorted(used) == sorted(BODY_TYPE_BY_MODEL)


@pytest.mark.shared_data
def test_devkit_meta_names_match_labels_csv(shared_datasets: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    meta = shared_dataset(shared_datasets, "stanford-cars-devkit") / "cars_meta.mat"
    meta_names = [str(name) for name in scipy_io.loadmat(meta, squeeze_me=True)["class_names"]]
    assert Taxonomy.from_class_names(meta_names) == Taxonomy.from_class_names(
        _stanford_class_names(shared_datasets)
    )


def test_roll_up_of_partial_names_keeps_what_each_name_says() -> None:
    # "Toyota Yaris Hatchback" says its body but no year; "Hyundai Creta 2021" its year but no body.
    names = ["Audi TTS Coupe 2012", "Toyota Yaris Hatchback", "Hyundai Creta 2021"]
    taxonomy = Taxonomy.from_class_names(names)
    probabilities = np.array([[0.2, 0.5, 0.3]])
    assert taxonomy.values("body_type") == ["Coupe", "Hatchback", UNKNOWN]
    np.testing.assert_allclose(roll_up(probabilities, taxonomy, "body_type"), [[0.2, 0.5, 0.3]])
    assert taxonomy.values("year") == ["2012", "2021", UNKNOWN]
    np.testing.assert_allclose(roll_up(probabilities, taxonomy, "year"), [[0.2, 0.3, 0.5]])
    assert taxonomy.values("make") == ["Audi", "Hyundai", "Toyota"]
    np.testing.assert_allclose(roll_up(probabilities, taxonomy, "make"), [[0.2, 0.3, 0.5]])
