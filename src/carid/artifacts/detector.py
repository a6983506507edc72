"""The detector bundle format: a folder with `model.onnx` and `model.json` whose format is
"carid.detector", read and written here.

`carid export` writes one for a run trained with `task: detect`; `carid.runtime.detection.Detector`
reads it. model.json holds everything the post-processing needs, so a detector bundle finds cars
without the training config, the checkpoint or torch:

    {
      "format": "carid.detector", "version": 1,
      "class_names": ["car"],                   what the scores are the probability of
      "preprocess": {...},                      `PreprocessSpec.to_dict()`: the network input size
                                                [height, width], mean/std and the letterbox rule
                                                (resize_mode "letterbox", interpolation, pad_value)
      "score_threshold": 0.5,                   the operating threshold: a box scoring above it is a car
      "nms_iou": 0.5,                           class-agnostic NMS: a box overlapping a better one by
                                                more than this IoU is dropped
      "max_detections": 100,                    at most this many cars per photo
      "min_box_side": 4.0,                      boxes narrower or lower than this many network-input
                                                pixels (after clipping to the input) are dropped
      "input_name": "images",                   float32 [batch, 3, H, W], normalized
      "output_names": ["scores", "boxes"],      [B, A] in [0, 1]; [B, A, 4] xyxy network-input pixels
      "dynamic_batch": true,
      "opset": 18 | null,
      "model_file": "model.onnx",
      "model_config": {...},                    the detector config the network was built from
      "versions": {"carid": ..., "torch": ..., "onnxruntime": ...},
      "source_checkpoint": "/runs/x/checkpoints/best.ckpt" | null,
      "source_sha256": "..." | null,
      "created": "2025-01-31T12:00:00Z" | null,
      "parity": {...} | null,                   the export's check: graph and final detections
      "extra": {...}
    }

A detector bundle shares the file names of a classifier bundle (`carid.artifacts.bundle`); the
"format" field tells them apart (`is_detector_dir`). `DetectorBundle.load(path)` validates every
field and names the field and the file in its errors. Torch-free (NumPy and Pillow, through
`carid.preprocess`): the slim install imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carid import __version__
from carid.artifacts.bundle import (
    INPUT_NAME,
    METADATA_FILE,
    MODEL_FILE,
    BundleError,
    _Checker,
    read_folder_json,
)
from carid.files import write_json
from carid.preprocess import PreprocessSpec

DETECTOR_FORMAT = "carid.detector"
DETECTOR_VERSION = 1
SCORES, BOXES = "scores", "boxes"
CAR = "car"

_REQUIRED = (
    "format",
    "version",
    "class_names",
    "preprocess",
    "score_threshold",
    "nms_iou",
    "max_detections",
    "input_name",
    "output_names",
)


class DetectorBundleError(BundleError):
    """A detector bundle that cannot be used; the message names the file (and field) and the problem."""


@dataclass(frozen=True)
class DetectorMetadata:
    """The contents of a detector's `model.json` (see the module docstring for each field)."""

    preprocess: dict[str, Any]
    score_threshold: float
    nms_iou: float
    max_detections: int
    min_box_side: float = 0.0
    class_names: tuple[str, ...] = (CAR,)
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = (SCORES, BOXES)
    dynamic_batch: bool = True
    opset: int | None = None
    model_file: str = MODEL_FILE
    model_config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=lambda: {"carid": __version__})
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    created: str | None = None
    parity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess, source=f"{METADATA_FILE} field 'preprocess'")

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the network input in pixels."""
        spec = self.preprocess_spec()
        return spec.width, spec.height

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, in the field order of the module docstring."""
        data = {
            "format": DETECTOR_FORMAT,
            "version": DETECTOR_VERSION,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess,
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "max_detections": self.max_detections,
            "min_box_side": self.min_box_side,
            "input_name": self.input_name,
            "output_names": list(self.output_names),
            "dynamic_batch": self.dynamic_batch,
            "opset": self.opset,
            "model_file": self.model_file,
            "model_config": self.model_config,
            "versions": self.versions,
            "source_checkpoint": self.source_checkpoint,
            "source_sha256": self.source_sha256,
            "created": self.created,
            "parity": self.parity,
            "extra": self.extra,
        }
        return json.loads(json.dumps(data))

    def summary(self) -> dict[str, Any]:
        """The short description the CLI and reports show (no parity detail)."""
        width, height = self.input_size
        return {
            "kind": "detector",
            "class_names": list(self.class_names),
            "input_size": [width, height],
            "score_threshold": self.score_threshold,
            "nms_iou": self.nms_iou,
            "max_detections": self.max_detections,
            "architecture": self.model_config.get("architecture"),
            "backbone": self.model_config.get("backbone"),
            "created": self.created,
            "source_checkpoint": self.source_checkpoint,
            "parity_passed": None if self.parity is None else self.parity.get("passed"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = METADATA_FILE) -> DetectorMetadata:
        """Validate and read model.json contents; DetectorBundleError names `source` and the field."""
        if not isinstance(data, Mapping):
            raise DetectorBundleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise DetectorBundleError(f"{source}: missing field(s) {', '.join(repr(key) for key in missing)}")
        if data["format"] != DETECTOR_FORMAT:
            raise DetectorBundleError(
                f"{source}: field 'format' is {data['format']!r}, expected {DETECTOR_FORMAT!r}"
            )
        if data["version"] != DETECTOR_VERSION:
            raise DetectorBundleError(
                f"{source}: field 'version' is {data['version']!r}; "
                f"this carid reads version {DETECTOR_VERSION}"
            )
        check = _DetectorChecker(source, data)
        class_names = check.strings("class_names", non_empty=True)
        if len(set(class_names)) != len(class_names):
            raise DetectorBundleError(f"{source}: field 'class_names' has repeated names")
        output_names = check.strings("output_names", non_empty=True)
        if tuple(output_names) != (SCORES, BOXES):
            raise DetectorBundleError(
                f"{source}: field 'output_names' must be [{SCORES!r}, {BOXES!r}], got {output_names}"
            )
        metadata = cls(
            preprocess=check.mapping("preprocess"),
            score_threshold=check.fraction("score_threshold", low_open=False),
            nms_iou=check.fraction("nms_iou", low_open=True),
            max_detections=check.required_positive_int("max_detections"),
            min_box_side=check.non_negative("min_box_side"),
            class_names=tuple(class_names),
            input_name=check.string("input_name"),
            output_names=tuple(output_names),
            dynamic_batch=check.boolean("dynamic_batch", default=True),
            opset=check.positive_int("opset"),
            model_file=check.string("model_file", default=MODEL_FILE),
            model_config=check.mapping("model_config", optional=True) or {},
            versions={str(k): str(v) for k, v in (check.mapping("versions", optional=True) or {}).items()},
            source_checkpoint=check.string("source_checkpoint", optional=True),
            source_sha256=check.string("source_sha256", optional=True),
            created=check.string("created", optional=True),
            parity=check.mapping("parity", optional=True),
            extra=check.mapping("extra", optional=True) or {},
        )
        try:
            spec = PreprocessSpec.from_dict(metadata.preprocess, source="field 'preprocess'")
        except ValueError as exc:
            raise DetectorBundleError(f"{source}: {exc}") from None
        if spec.resize_mode != "letterbox":
            raise DetectorBundleError(
                f"{source}: field 'preprocess' has resize_mode {spec.resize_mode!r}; a detector's input "
                "is a letterbox of the photo"
            )
        return metadata


class _DetectorChecker(_Checker):
    """`carid.artifacts.bundle`'s typed field reads, failing with `DetectorBundleError`."""

    def _fail(self, key: str, expected: str) -> BundleError:
        return DetectorBundleError(
            f"{self.source}: field {key!r} must be {expected}, got {self.data.get(key)!r}"
        )

    def fraction(self, key: str, low_open: bool) -> float:
        """A number in [0, 1] ((0, 1] with low_open)."""
        value = self._number(key)
        if value is None or not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
            raise self._fail(key, "a number in (0, 1]" if low_open else "a number in [0, 1]")
        return value

    def required_positive_int(self, key: str) -> int:
        value = self.positive_int(key)
        if value is None:
            raise self._fail(key, "a positive integer")
        return value

    def non_negative(self, key: str) -> float:
        value = self._number(key)
        if value is None:
            return 0.0
        if not value >= 0 or not math.isfinite(value):
            raise self._fail(key, "a number >= 0")
        return value


@dataclass(frozen=True)
class DetectorBundle:
    """A detector bundle folder and its validated metadata."""

    path: Path
    metadata: DetectorMetadata

    @property
    def model_path(self) -> Path:
        return self.path / self.metadata.model_file

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_FILE

    @classmethod
    def load(cls, path: Path | str) -> DetectorBundle:
        """Read a detector bundle folder (or its model.json); DetectorBundleError names the file and
        the problem (a classifier bundle is named as one)."""
        path = Path(path)
        folder = path.parent if path.name == METADATA_FILE or path.is_file() else path
        metadata_path, data = read_folder_json(
            path, folder, METADATA_FILE, "carid detector bundle", DetectorBundleError
        )
        if isinstance(data, Mapping) and data.get("format") == "carid.bundle":
            raise DetectorBundleError(
                f"{metadata_path}: a classifier bundle (format 'carid.bundle'), not a detector; load it "
                "with carid.runtime.predictor.Predictor"
            )
        metadata = DetectorMetadata.from_dict(data, source=str(metadata_path))
        bundle = cls(path=folder, metadata=metadata)
        if not bundle.model_path.is_file():
            raise DetectorBundleError(
                f"{bundle.model_path}: the model file named by {METADATA_FILE} field 'model_file' is missing"
            )
        return bundle


def write_detector_metadata(folder: Path | str, metadata: DetectorMetadata) -> Path:
    """Write `folder/model.json` atomically; returns its path."""
    path = Path(folder) / METADATA_FILE
    write_json(path, metadata.to_dict())
    return path


def is_detector_dir(path: Path | str) -> bool:
    """A folder (or its model.json) whose model.json says format "carid.detector"; never raises."""
    path = Path(path)
    metadata = path if path.name == METADATA_FILE else path / METADATA_FILE
    try:
        data = json.loads(metadata.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, Mapping) and data.get("format") == DETECTOR_FORMAT
