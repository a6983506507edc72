"""The pipeline folder format: building, reading, the crop rule, and the errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carid.artifacts.pipeline import (
    PIPELINE_FILE,
    CropRule,
    Pipeline,
    PipelineError,
    build_pipeline,
    is_pipeline_dir,
)


def fake_bundle(folder: Path, fmt: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"format": fmt}), encoding="utf-8")
    (folder / "model.onnx").write_bytes(b"graph")
    return folder


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Path, Path]:
    return fake_bundle(tmp_path / "det", "carid.detector"), fake_bundle(tmp_path / "cls", "carid.bundle")


def test_build_copies_both_parts_and_reads_back(parts: tuple[Path, Path], tmp_path: Path) -> None:
    detector, identifier = parts
    built = build_pipeline(detector, identifier, tmp_path / "pipe", crop=CropRule(margin=0.1), max_cars=5)
    assert is_pipeline_dir(built.path)
    assert (built.detector / "model.onnx").read_bytes() == b"graph"
    assert json.loads((built.identifier / "model.json").read_text())["format"] == "carid.bundle"
    again = Pipeline.load(built.path / PIPELINE_FILE)
    assert again.crop == CropRule(margin=0.1) and again.max_cars == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_build_refuses_to_replace_without_force_and_replaces_with_it(
    parts: tuple[Path, Path], tmp_path: Path
) -> None:
    detector, identifier = parts
    out = tmp_path / "pipe"
    build_pipeline(detector, identifier, out)
    with pytest.raises(PipelineError, match="exists already") as caught:
        build_pipeline(detector, identifier, out, crop=CropRule(margin=0.2))
    assert caught.value.hint == "pass --force to replace it"
    assert Pipeline.load(out).crop.margin == 0.0
    assert Pipeline.load(
        build_pipeline(detector, identifier, out, crop=CropRule(margin=0.2), overwrite=True).path
    )


def test_swapped_parts_are_refused_with_the_folder_named(parts: tuple[Path, Path], tmp_path: Path) -> None:
    detector, identifier = parts
    with pytest.raises(PipelineError, match=r"cls: not a detector bundle .*'carid.bundle'"):
        build_pipeline(identifier, detector, tmp_path / "pipe")
    with pytest.raises(PipelineError, match="a detector bundle cannot be the identifier"):
        build_pipeline(detector, detector, tmp_path / "pipe")
    with pytest.raises(PipelineError, match="no such folder"):
        build_pipeline(tmp_path / "missing", identifier, tmp_path / "pipe")
    assert not (tmp_path / "pipe").exists()


def test_an_ensemble_folder_is_an_identifier(parts: tuple[Path, Path], tmp_path: Path) -> None:
    detector, _ = parts
    ensemble = tmp_path / "ens"
    ensemble.mkdir()
    (ensemble / "ensemble.json").write_text("{}", encoding="utf-8")
    assert (
        build_pipeline(detector, ensemble, tmp_path / "pipe").identifier.joinpath("ensemble.json").is_file()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "field 'format' must be 'carid.pipeline'"),
        ({"version": 9}, "field 'version' is 9"),
        ({"crop": {"margin": 3}}, "crop margin must be between 0 and 1"),
        ({"crop": {"colour": 1}}, r"unknown field\(s\) \['colour'\]"),
        ({"max_cars": 0}, "'max_cars' must be a positive integer"),
        ({"detector": "elsewhere"}, "field 'detector' must be 'detector'"),
    ],
)
def test_bad_fields_are_named(parts: tuple[Path, Path], tmp_path: Path, change: dict, message: str) -> None:
    built = build_pipeline(*parts, tmp_path / "pipe")
    data = json.loads(built.metadata_path.read_text())
    data.update(change)
    built.metadata_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PipelineError, match=message):
        Pipeline.load(built.path)


def test_unreadable_json_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not a pipeline folder"):
        Pipeline.load(tmp_path)
    (tmp_path / PIPELINE_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(PipelineError, match="cannot read it"):
        Pipeline.load(tmp_path)


def test_crop_rule_margin_square_and_clipping() -> None:
    assert CropRule().region((10.2, 20.0, 50.0, 40.0), 100, 100) == (10, 20, 50, 40)
    assert CropRule(margin=0.25).region((10.0, 20.0, 50.0, 40.0), 100, 100) == (0, 15, 60, 45)
    assert CropRule(square=True).region((10.0, 20.0, 50.0, 40.0), 100, 100) == (10, 10, 50, 50)
    assert CropRule(margin=0.5).region((0.0, 0.0, 100.0, 100.0), 100, 100) == (0, 0, 100, 100)
    # a box beyond the photo still gives at least one pixel inside it
    left, top, right, bottom = CropRule().region((150.0, 150.0, 160.0, 160.0), 100, 100)
    assert 0 <= left < right <= 100 and 0 <= top < bottom <= 100
