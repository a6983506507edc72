"""Tests for carid.artifacts.detector: the detector's model.json round trip and validation naming
the field and the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from carid.artifacts.bundle import METADATA_FILE, MODEL_FILE
from carid.artifacts.detector import (
    DETECTOR_FORMAT,
    DetectorBundle,
    DetectorBundleError,
    DetectorMetadata,
    is_detector_dir,
    write_detector_metadata,
)
from carid.preprocess import PreprocessSpec
from tests.artifacts.test_bundle import make_metadata as classifier_metadata
from tests.artifacts.test_bundle import write_bundle


def make_metadata(**changes: Any) -> DetectorMetadata:
    values: dict[str, Any] = {
        "preprocess": PreprocessSpec(image_size=(384, 640), resize_mode="letterbox").to_dict(),
        "score_threshold": 0.3,
        "nms_iou": 0.5,
        "max_detections": 100,
        "min_box_side": 4.0,
        "opset": 18,
        "dynamic_batch": False,
        "model_config": {"architecture": "fcos", "backbone": "tf_efficientnet_lite0"},
        "source_checkpoint": "/runs/d/checkpoints/best.ckpt",
        "source_sha256": "cd" * 32,
        "created": "2026-12-07T12:00:00Z",
        "parity": {"passed": True, "num_images": 8},
        "extra": {"run_name": "d"},
    }
    values.update(changes)
    return DetectorMetadata(**values)


def write_detector(folder: Path, data: dict[str, Any] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(b"not really onnx; DetectorBundle.load only checks the file is there")
    if data is None:
        write_detector_metadata(folder, make_metadata())
    else:
        (folder / METADATA_FILE).write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_metadata_round_trips_through_model_json(tmp_path: Path) -> None:
    folder = write_detector(tmp_path / "detector")
    bundle = DetectorBundle.load(folder)
    assert bundle.metadata == make_metadata()
    assert bundle.metadata.input_size == (640, 384) and bundle.model_path == folder / MODEL_FILE
    data = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    assert data["format"] == DETECTOR_FORMAT and data["class_names"] == ["car"]
    assert data["output_names"] == ["scores", "boxes"] and data["preprocess"]["resize_mode"] == "letterbox"
    assert DetectorBundle.load(folder / METADATA_FILE).metadata == bundle.metadata
    summary = bundle.metadata.summary()
    assert summary["input_size"] == [640, 384] and summary["architecture"] == "fcos"
    assert summary["parity_passed"] is True
    assert is_detector_dir(folder) and is_detector_dir(folder / METADATA_FILE)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("score_threshold", 1.5, r"field 'score_threshold' must be a number in \[0, 1\], got 1.5"),
        ("score_threshold", "high", "field 'score_threshold' must be a number in"),
        ("nms_iou", 0, r"field 'nms_iou' must be a number in \(0, 1\], got 0"),
        ("max_detections", 0, "field 'max_detections' must be a positive integer"),
        ("min_box_side", -1, "field 'min_box_side' must be a number >= 0"),
        ("output_names", ["logits", "box"], "field 'output_names' must be"),
        ("class_names", ["car", "car"], "field 'class_names' has repeated names"),
        ("preprocess", {"image_size": [64, 96]}, "field 'preprocess'.*missing preprocessing key"),
        ("version", 2, "field 'version' is 2; this carid reads version 1"),
    ],
)
def test_a_bad_field_is_named_with_the_file(tmp_path: Path, field: str, value: Any, message: str) -> None:
    data = make_metadata().to_dict()
    data[field] = value
    folder = write_detector(tmp_path / "detector", data)
    with pytest.raises(DetectorBundleError, match=message) as raised:
        DetectorBundle.load(folder)
    assert str(folder / METADATA_FILE) in str(raised.value)


def test_a_stretched_input_a_missing_field_or_model_file_is_refused(tmp_path: Path) -> None:
    stretch = make_metadata(preprocess=PreprocessSpec(image_size=(64, 96)).to_dict()).to_dict()
    with pytest.raises(DetectorBundleError, match="resize_mode 'stretch'; a detector's input is a letterbox"):
        DetectorBundle.load(write_detector(tmp_path / "stretch", stretch))
    partial = make_metadata().to_dict()
    del partial["nms_iou"], partial["max_detections"]
    with pytest.raises(DetectorBundleError, match="missing field\\(s\\) 'nms_iou', 'max_detections'"):
        DetectorBundle.load(write_detector(tmp_path / "partial", partial))
    folder = write_detector(tmp_path / "no-model")
    (folder / MODEL_FILE).unlink()
    with pytest.raises(DetectorBundleError, match=r"model\.onnx: the model file named by model\.json"):
        DetectorBundle.load(folder)
    with pytest.raises(DetectorBundleError, match="not a carid detector bundle"):
        DetectorBundle.load(tmp_path)


def test_a_classifier_bundle_is_named_as_one(tmp_path: Path) -> None:
    classifier = write_bundle(tmp_path / "classifier", classifier_metadata())
    with pytest.raises(DetectorBundleError, match=r"a classifier bundle .*not a detector"):
        DetectorBundle.load(classifier)
    assert not is_detector_dir(classifier) and not is_detector_dir(tmp_path / "nothing")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / METADATA_FILE).write_bytes(b"\xff\xfe not json")
    assert not is_detector_dir(tmp_path / "garbage")
