"""Tests for carid.artifacts.bundle: model.json round trip, validation naming the field, calibration
updates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from carid.artifacts.bundle import (
    BUNDLE_FORMAT,
    METADATA_FILE,
    MODEL_FILE,
    Bundle,
    BundleError,
    BundleMetadata,
    update_calibration,
    write_metadata,
)
from carid.preprocess import PreprocessSpec
from carid.taxonomy import Taxonomy

CAR_CLASSES = ("Audi TTS Coupe 2012", "BMW X5 SUV 2007", "Ford F-150 Regular Cab 2012")


def make_metadata(**changes: Any) -> BundleMetadata:
    values: dict[str, Any] = {
        "class_names": CAR_CLASSES,
        "preprocess": PreprocessSpec(image_size=(32, 32), resize_mode="letterbox").to_dict(),
        "with_box": True,
        "taxonomy": Taxonomy.from_class_names(CAR_CLASSES).to_dict(),
        "output_names": ("logits", "box", "embedding"),
        "embedding_dim": 16,
        "opset": 18,
        "model_config": {"backbone": "carid_vgg", "image_size": 32},
        "source_checkpoint": "/runs/x/checkpoints/best.ckpt",
        "source_sha256": "ab" * 32,
        "created": "2025-01-31T12:00:00Z",
        "parity": {"passed": True, "num_images": 4},
        "extra": {"run_name": "x"},
    }
    values.update(changes)
    return BundleMetadata(**values)


def write_bundle(folder: Path, metadata: BundleMetadata | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(b"not really onnx; Bundle.load only checks the file is there")
    write_metadata(folder, metadata or make_metadata())
    return folder


def write_raw(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(b"x")
    (folder / METADATA_FILE).write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_round_trip_through_model_json(tmp_path: Path) -> None:
    metadata = make_metadata(temperature=1.7, unknown_threshold=0.25)
    folder = write_bundle(tmp_path / "bundle", metadata)
    bundle = Bundle.load(folder)
    assert bundle.metadata == metadata
    assert Bundle.load(folder / METADATA_FILE).metadata == metadata
    assert bundle.model_path == folder / MODEL_FILE
    data = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    assert data["format"] == BUNDLE_FORMAT and data["version"] == 1
    assert BundleMetadata.from_dict(data) == metadata
    assert bundle.metadata.preprocess_spec() == PreprocessSpec(image_size=(32, 32), resize_mode="letterbox")
    taxonomy = bundle.metadata.taxonomy_object()
    assert taxonomy is not None and taxonomy.classes == CAR_CLASSES
    assert bundle.metadata.has_embedding and bundle.metadata.num_classes == len(CAR_CLASSES)
    assert not list(folder.glob(".*.tmp")), "the atomic write left its temporary file"


def test_defaults_for_optional_fields(tmp_path: Path) -> None:
    minimal = {
        "format": BUNDLE_FORMAT,
        "version": 1,
        "class_names": ["a", "b"],
        "preprocess": PreprocessSpec(image_size=(16, 16)).to_dict(),
        "with_box": False,
        "input_name": "images",
        "output_names": ["logits"],
    }
    metadata = Bundle.load(write_raw(tmp_path / "b", minimal)).metadata
    assert metadata.temperature == 1.0 and metadata.unknown_threshold is None
    assert metadata.label_level == "class" and metadata.taxonomy is None and not metadata.has_embedding
    assert metadata.summary()["num_classes"] == 2 and metadata.summary()["parity_passed"] is None


def _valid() -> dict[str, Any]:
    return make_metadata().to_dict()


def _without(key: str) -> dict[str, Any]:
    data = _valid()
    del data[key]
    return data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_without("class_names"), "'class_names'"),
        (_without("preprocess"), "'preprocess'"),
        ({**_valid(), "format": "something.else"}, "'format'"),
        ({**_valid(), "version": 99}, "'version'"),
        ({**_valid(), "class_names": ["a", ""]}, "'class_names'"),
        ({**_valid(), "class_names": ["a", "a", "b"]}, "'class_names'"),
        ({**_valid(), "temperature": -1.0}, "'temperature'"),
        ({**_valid(), "temperature": "hot"}, "'temperature'"),
        ({**_valid(), "unknown_threshold": 1.5}, "'unknown_threshold'"),
        ({**_valid(), "with_box": "yes"}, "'with_box'"),
        ({**_valid(), "output_names": ["logits", "embedding"]}, "'output_names'"),
        ({**_valid(), "output_names": ["box"], "with_box": True}, "'output_names'"),
        ({**_valid(), "label_level": "colour"}, "'label_level'"),
        ({**_valid(), "embedding_dim": 0}, "'embedding_dim'"),
        ({**_valid(), "preprocess": {"image_size": [32, 32]}}, "preprocess"),
        ({**_valid(), "preprocess": {**_valid()["preprocess"], "resize_mode": "crop"}}, "resize_mode"),
        ({**_valid(), "class_names": ["Audi TTS Coupe 2012", "b", "c"]}, "'taxonomy'"),
        ({**_valid(), "input_name": ""}, "'input_name'"),
    ],
)
def test_invalid_fields_are_named(tmp_path: Path, data: dict[str, Any], field: str) -> None:
    folder = write_raw(tmp_path / "bundle", data)
    with pytest.raises(BundleError) as caught:
        Bundle.load(folder)
    message = str(caught.value)
    assert field in message
    assert str(folder / METADATA_FILE) in message


def test_unreadable_or_incomplete_bundles(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such file or folder"):
        Bundle.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a carid model bundle"):
        Bundle.load(tmp_path / "empty")
    broken = write_bundle(tmp_path / "broken")
    (broken / METADATA_FILE).write_text('{"format": "carid.bundle",\n "version": }', encoding="utf-8")
    with pytest.raises(BundleError, match=r"not valid JSON \(line 2"):
        Bundle.load(broken)
    no_model = write_bundle(tmp_path / "no-model")
    (no_model / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match=r"model\.onnx.*missing"):
        Bundle.load(no_model)
    with pytest.raises(BundleError, match="expected a JSON object"):
        BundleMetadata.from_dict([1, 2])  # type: ignore[arg-type]


def test_update_calibration_rewrites_only_what_is_given(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "bundle")
    updated = update_calibration(folder, temperature=2.5)
    assert updated.metadata.temperature == 2.5 and updated.metadata.unknown_threshold is None
    updated = update_calibration(folder, unknown_threshold=0.4)
    reread = Bundle.load(folder).metadata
    assert reread.temperature == 2.5 and reread.unknown_threshold == 0.4
    assert reread.class_names == CAR_CLASSES and reread.parity == make_metadata().parity
    before = (folder / METADATA_FILE).read_text(encoding="utf-8")
    with pytest.raises(BundleError, match="'unknown_threshold'"):
        update_calibration(folder, unknown_threshold=3.0)
    assert (folder / METADATA_FILE).read_text(encoding="utf-8") == before
    cleared = update_calibration(folder, unknown_threshold=None)
    assert cleared.metadata.unknown_threshold is None and cleared.metadata.temperature == 2.5
    point = {"target_precision": 0.9, "min_coverage": 0.6, "val_precision": 0.84, "val_coverage": 0.6}
    stored = update_calibration(folder, unknown_threshold=0.3, operating_point=point)
    assert (
        Bundle.load(folder).metadata.extra["operating_point"]
        == point
        == stored.metadata.extra["operating_point"]
    )
    assert {k: v for k, v in stored.metadata.extra.items() if k != "operating_point"} == make_metadata().extra


def test_from_checkpoint_metadata_keeps_the_checkpoint_fields() -> None:
    checkpoint = {
        "version": 1,
        "class_names": ["Audi", "BMW"],
        "preprocess": PreprocessSpec(image_size=(24, 24)).to_dict(),
        "model": {"backbone": "carid_vgg"},
        "with_box": False,
        "label_level": "make",
        "taxonomy": None,
        "carid_version": "9.9",
        "extra": {"run_name": "r"},
    }
    metadata = BundleMetadata.from_checkpoint_metadata(
        checkpoint, output_names=("logits", "embedding"), embedding_dim=8, source_checkpoint="x.ckpt"
    )
    assert metadata.class_names == ("Audi", "BMW") and metadata.label_level == "make"
    assert metadata.model_config == {"backbone": "carid_vgg"} and metadata.versions == {"carid": "9.9"}
    assert metadata.temperature == 1.0 and metadata.unknown_threshold is None
    assert BundleMetadata.from_dict(metadata.to_dict()) == metadata


def test_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'lightning', 'timm', 'albumentations', 'onnx'):\n"
        "    sys.modules[name] = None\n"
        "import carid.artifacts.bundle\n"
        "loaded = [n for n in ('torch', 'lightning', 'timm') if sys.modules.get(n) is not None]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
