"""Tests for carid.scale.writer: shard files with the rows of `carid predict` (CSV byte for byte,
Parquet typed), what counts as a finished shard, the job record and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carid.runtime.predict_io import CSV_COLUMNS, write_predictions
from carid.runtime.predictor import Predictor
from carid.runtime.results import Prediction
from carid.scale.sources import Item, Plan, ScaleError, Shard
from carid.scale.writer import (
    FLOAT_COLUMNS,
    INTEGER_COLUMNS,
    JOB_FILE,
    MANIFEST_FILE,
    TEXT_COLUMNS,
    claim_folder,
    finished_shard,
    job_record,
    read_shard,
    shard_path,
    write_manifest,
    write_shard,
)
from tests.scale.conftest import write_photos


@pytest.fixture
def answered(tmp_path: Path, scale_bundle: Path) -> tuple[Shard, list[Prediction]]:
    photos = write_photos(tmp_path / "photos", 5)
    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_text("not a photo", encoding="utf-8")
    paths = [*map(str, photos[:2]), str(broken), *map(str, photos[2:])]
    shard = Shard(3, tuple(Item(path) for path in paths))
    return shard, Predictor.load(scale_bundle).predict(paths, top_k=3)


def test_csv_shard_is_what_carid_predict_writes(tmp_path: Path, answered) -> None:
    shard, predictions = answered
    record = write_shard(tmp_path / "out", shard, predictions, "csv")
    local = write_predictions(predictions, tmp_path / "local.csv")
    path = tmp_path / "out" / "shard-00003.csv"
    assert path.read_bytes() == local.read_bytes()
    assert (record.name, record.file, record.photos, record.rows, record.failed) == (
        "shard-00003",
        "shard-00003.csv",
        6,
        6,
        1,
    )
    assert finished_shard(tmp_path / "out", shard, "csv") == record


def test_parquet_shard_holds_the_same_rows_typed(tmp_path: Path, answered) -> None:
    import pyarrow.parquet as pq

    assert sorted((*TEXT_COLUMNS, *INTEGER_COLUMNS, *FLOAT_COLUMNS)) == sorted(CSV_COLUMNS)
    shard, predictions = answered
    record = write_shard(tmp_path / "out", shard, predictions, "parquet")
    local = read_shard(write_predictions(predictions, tmp_path / "local.csv"))
    path = tmp_path / "out" / "shard-00003.parquet"
    assert read_shard(path) == local
    schema = pq.read_schema(path)
    assert schema.names == list(CSV_COLUMNS)
    assert str(schema.field("car").type) == "int64" and str(schema.field("probability").type) == "double"
    table = pq.read_table(path).to_pylist()
    assert table[2]["probability"] is None and table[2]["error"].startswith(str(shard.paths[2]))
    assert finished_shard(tmp_path / "out", shard, "parquet") == record
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["shard-00003.parquet"], "no temporaries left"


def test_a_shard_is_finished_only_when_its_file_answers_its_photos(tmp_path: Path, answered) -> None:
    shard, predictions = answered
    out = tmp_path / "out"
    assert finished_shard(out, shard, "csv") is None
    write_shard(out, shard, predictions[:-1], "csv")
    assert finished_shard(out, shard, "csv") is None, "a photo missing"
    other = Shard(3, (*shard.items[1:], shard.items[0]))
    write_shard(out, other, [*predictions[1:], predictions[0]], "csv")
    assert finished_shard(out, shard, "csv") is None, "the photos in another order"
    shard_path(out, shard, "parquet").write_bytes(b"PAR1 damaged")
    assert finished_shard(out, shard, "parquet") is None
    with pytest.raises(ScaleError, match="not one of csv, parquet"):
        shard_path(out, shard, "json")


def test_job_record_refuses_to_mix_two_jobs(tmp_path: Path) -> None:
    plan = Plan(tuple(Item(f"p{i}.jpg") for i in range(5)), 2)
    record = job_record(plan, "csv", {"model": "/m", "top_k": 5})
    out = tmp_path / "out"
    out.mkdir()
    assert claim_folder(out, record) is False
    assert json.loads((out / JOB_FILE).read_text())["digest"] == plan.digest
    assert claim_folder(out, record) is True
    other = job_record(Plan(plan.items, 3), "parquet", {"model": "/m", "top_k": 5})
    with pytest.raises(ScaleError, match="another job \\(it differs in shard_format, shard_size\\)"):
        claim_folder(out, other)
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "shard-00000.csv").write_text("path\n", encoding="utf-8")
    with pytest.raises(ScaleError, match=r"holds shard files but no job\.json"):
        claim_folder(loose, record)


def test_manifest_totals(tmp_path: Path, answered) -> None:
    shard, predictions = answered
    first = write_shard(tmp_path, shard, predictions, "csv")
    second = write_shard(tmp_path, Shard(4, shard.items[:2]), predictions[:2], "csv")
    path = write_manifest(tmp_path, [first, second], {"backend": "onnx"}, {"engine": "ray", "workers": 2})
    manifest = json.loads(path.read_text())
    assert path.name == MANIFEST_FILE and manifest["columns"] == list(CSV_COLUMNS)
    assert (manifest["photos"], manifest["rows"], manifest["failed"], manifest["workers"]) == (8, 8, 1, 2)
    assert [entry["file"] for entry in manifest["shards"]] == ["shard-00003.csv", "shard-00004.csv"]
