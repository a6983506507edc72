"""The model bundle format: a folder with `model.onnx` and `model.json`, read and written here.

`carid export` writes a bundle; `carid.runtime.predictor.Predictor` (and `carid serve`) read one. Everything
the predictor needs besides the ONNX graph is in `model.json`, so a bundle predicts without the
training config, the checkpoint or torch:

    {
      "format": "carid.bundle", "version": 1,
      "class_names": ["Audi TTS Coupe 2012", ...],      output order of the logits
      "label_level": "class",                           or "make", "body_type", "year"
      "taxonomy": {...} | null,                         `Taxonomy.to_dict()` (label_level "class")
      "preprocess": {...},                              `PreprocessSpec.to_dict()`
      "with_box": true,
      "temperature": 1.0,                               logits are divided by it before the softmax
      "unknown_threshold": null | 0.42,                 top-1 probability below it -> "unknown"
      "input_name": "images",                           float32 [batch, 3, H, W], normalized
      "output_names": ["logits", "box", "embedding"],   [B, C], [B, 4] normalized xyxy, [B, D]
      "embedding_dim": 1280 | null,
      "dynamic_batch": true,
      "opset": 18 | null,
      "model_file": "model.onnx",
      "model_config": {...},                            the `ModelConfig` the network was built from
      "versions": {"carid": ..., "torch": ..., "onnx": ..., "onnxruntime": ...},
      "source_checkpoint": "/runs/x/checkpoints/best.ckpt" | null,
      "source_sha256": "..." | null,
      "created": "2025-01-31T12:00:00Z" | null,
      "parity": {...} | null,                           the export's PyTorch-vs-ONNX check
      "extra": {...},                                   run name, dataset, ...
      "enrolment": {...} | null                         classes added without retraining: the
                                                        embedding space, score calibration and
                                                        enrolled classes (`carid.artifacts.enrolment`)
    }

`Bundle.load(path)` validates every field and names the field and the file in its errors.
`update_calibration` rewrites the temperature and unknown threshold of an existing bundle (what the
calibration step does after fitting them). Files are written atomically (temporary name, then rename).

This module needs NumPy and Pillow only (through `carid.preprocess`): the slim install imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import EllipsisType
from typing import Any

from carid import __version__
from carid.errors import CaridError
from carid.files import folder_lock, write_json
from carid.preprocess import PreprocessSpec
from carid.taxonomy import LEVELS, Taxonomy

BUNDLE_FORMAT = "carid.bundle"
BUNDLE_VERSION = 1
METADATA_FILE = "model.json"
MODEL_FILE = "model.onnx"
# An ensemble of bundles is a folder with this file instead (`carid.evaluation.ensemble`).
ENSEMBLE_FILE = "ensemble.json"
INPUT_NAME = "images"
LOGITS, BOX, EMBEDDING = "logits", "box", "embedding"

_REQUIRED = ("format", "version", "class_names", "preprocess", "with_box", "input_name", "output_names")


class BundleError(CaridError, ValueError):
    """A bundle that cannot be used; the message names the file (and field) and the problem."""


@dataclass(frozen=True)
class BundleMetadata:
    """The contents of `model.json` (see the module docstring for each field's meaning and format)."""

    class_names: tuple[str, ...]
    preprocess: dict[str, Any]
    with_box: bool
    label_level: str = "class"
    taxonomy: dict[str, Any] | None = None
    temperature: float = 1.0
    unknown_threshold: float | None = None
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = (LOGITS,)
    embedding_dim: int | None = None
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
    enrolment: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_embedding(self) -> bool:
        return EMBEDDING in self.output_names

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess, source=f"{METADATA_FILE} field 'preprocess'")

    def taxonomy_object(self) -> Taxonomy | None:
        """The parsed `Taxonomy` (class-level bundles whose class names parsed), else None."""
        return None if self.taxonomy is None else Taxonomy.from_dict(self.taxonomy)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, in the field order of the module docstring."""
        data = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "class_names": list(self.class_names),
            "label_level": self.label_level,
            "taxonomy": self.taxonomy,
            "preprocess": self.preprocess,
            "with_box": self.with_box,
            "temperature": self.temperature,
            "unknown_threshold": self.unknown_threshold,
            "input_name": self.input_name,
            "output_names": list(self.output_names),
            "embedding_dim": self.embedding_dim,
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
            "enrolment": self.enrolment,
        }
        return json.loads(json.dumps(data))

    def summary(self) -> dict[str, Any]:
        """The short description the CLI, the API and the web page show (no taxonomy, no parity detail)."""
        return {
            "num_classes": self.num_classes,
            "label_level": self.label_level,
            "with_box": self.with_box,
            "has_embedding": self.has_embedding,
            "image_size": list(self.preprocess.get("image_size", [])),
            "resize_mode": self.preprocess.get("resize_mode"),
            "temperature": self.temperature,
            "unknown_threshold": self.unknown_threshold,
            "backbone": self.model_config.get("backbone"),
            "created": self.created,
            "source_checkpoint": self.source_checkpoint,
            "parity_passed": None if self.parity is None else self.parity.get("passed"),
            "can_enrol": self.enrolment is not None,
            "precision": str((self.extra.get("quantization") or {}).get("precision", "fp32")),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = METADATA_FILE) -> BundleMetadata:
        """Validate and read `model.json` contents; BundleError names `source` and the field."""
        if not isinstance(data, Mapping):
            raise BundleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise BundleError(f"{source}: missing field(s) {', '.join(repr(key) for key in missing)}")
        if data["format"] != BUNDLE_FORMAT:
            raise BundleError(f"{source}: field 'format' is {data['format']!r}, expected {BUNDLE_FORMAT!r}")
        if data["version"] != BUNDLE_VERSION:
            raise BundleError(
                f"{source}: field 'version' is {data['version']!r}; this carid reads version {BUNDLE_VERSION}"
            )
        check = _Checker(source, data)
        class_names = check.strings("class_names", non_empty=True)
        if len(set(class_names)) != len(class_names):
            raise BundleError(f"{source}: field 'class_names' has repeated names")
        label_level = check.choice("label_level", LEVELS, default="class")
        with_box = check.boolean("with_box")
        output_names = check.strings("output_names", non_empty=True)
        if LOGITS not in output_names:
            raise BundleError(f"{source}: field 'output_names' must include {LOGITS!r}, got {output_names}")
        if with_box != (BOX in output_names):
            raise BundleError(
                f"{source}: field 'output_names' {output_names} does not match 'with_box': {with_box}"
            )
        metadata = cls(
            class_names=tuple(class_names),
            preprocess=check.mapping("preprocess"),
            with_box=with_box,
            label_level=label_level,
            taxonomy=check.mapping("taxonomy", optional=True),
            temperature=check.positive_number("temperature", default=1.0),
            unknown_threshold=check.probability("unknown_threshold"),
            input_name=check.string("input_name"),
            output_names=tuple(output_names),
            embedding_dim=check.positive_int("embedding_dim"),
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
            enrolment=check.mapping("enrolment", optional=True),
        )
        try:
            PreprocessSpec.from_dict(metadata.preprocess, source="field 'preprocess'")
        except ValueError as exc:
            raise BundleError(f"{source}: {exc}") from None
        if metadata.taxonomy is not None:
            try:
                taxonomy = metadata.taxonomy_object()
            except ValueError as exc:
                raise BundleError(f"{source}: field 'taxonomy': {exc}") from None
            if taxonomy is not None and taxonomy.classes != metadata.class_names:
                raise BundleError(
                    f"{source}: field 'taxonomy' has other classes than 'class_names' "
                    "(they must be the same names in the same order)"
                )
        return metadata

    @classmethod
    def from_checkpoint_metadata(
        cls,
        checkpoint: Mapping[str, Any],
        output_names: Sequence[str],
        embedding_dim: int | None = None,
        source_checkpoint: str | None = None,
    ) -> BundleMetadata:
        """Bundle metadata from a checkpoint's carid metadata (`ModelMetadata.to_dict()`, plain types).

        Used by the exporter (which then adds versions, parity, ...) and by the torch predictor.
        """
        return cls(
            class_names=tuple(checkpoint["class_names"]),
            preprocess=dict(checkpoint["preprocess"]),
            with_box=bool(checkpoint["with_box"]),
            label_level=str(checkpoint.get("label_level", "class")),
            taxonomy=checkpoint.get("taxonomy"),
            output_names=tuple(output_names),
            embedding_dim=embedding_dim,
            model_config=dict(checkpoint.get("model") or {}),
            versions={"carid": str(checkpoint.get("carid_version", __version__))},
            source_checkpoint=source_checkpoint,
            extra=dict(checkpoint.get("extra") or {}),
        )


class _Checker:
    """Typed reads of model.json fields; each failure is a BundleError naming the file and field."""

    def __init__(self, source: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.data = data

    def _fail(self, key: str, expected: str) -> BundleError:
        return BundleError(f"{self.source}: field {key!r} must be {expected}, got {self.data.get(key)!r}")

    def string(self, key: str, default: str | None = None, optional: bool = False) -> Any:
        value = self.data.get(key, default)
        if value is None and (optional or default is not None):
            return default
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string")
        return value

    def strings(self, key: str, non_empty: bool = False) -> list[str]:
        value = self.data.get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self._fail(key, "a list of non-empty strings")
        if non_empty and not value:
            raise self._fail(key, "a non-empty list of strings")
        return list(value)

    def boolean(self, key: str, default: bool | None = None) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.data.get(key, default)
        if value not in choices:
            raise self._fail(key, f"one of {', '.join(choices)}")
        return str(value)

    def mapping(self, key: str, optional: bool = False) -> Any:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, Mapping):
            raise self._fail(key, "an object" + (" or null" if optional else ""))
        return dict(value)

    def _number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return math.nan
        return float(value)

    def positive_number(self, key: str, default: float) -> float:
        value = self._number(key)
        if value is None:
            return default
        if not value > 0:  # NaN fails too
            raise self._fail(key, "a positive number")
        return value

    def probability(self, key: str) -> float | None:
        value = self._number(key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise self._fail(key, "a number in [0, 1] or null")
        return value

    def positive_int(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self._fail(key, "a positive integer or null")
        return value


@dataclass(frozen=True)
class Bundle:
    """A bundle folder and its validated metadata."""

    path: Path
    metadata: BundleMetadata

    @property
    def model_path(self) -> Path:
        return self.path / self.metadata.model_file

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_FILE

    @classmethod
    def load(cls, path: Path | str) -> Bundle:
        """Read a bundle folder (or its model.json); BundleError names the file and the problem."""
        path = Path(path)
        folder = path.parent if path.name == METADATA_FILE or path.is_file() else path
        metadata_path, data = read_folder_json(path, folder, METADATA_FILE, "carid model bundle", BundleError)
        metadata = BundleMetadata.from_dict(data, source=str(metadata_path))
        bundle = cls(path=folder, metadata=metadata)
        if not bundle.model_path.is_file():
            raise BundleError(
                f"{bundle.model_path}: the model file named by {METADATA_FILE} field 'model_file' is missing"
            )
        return bundle


def write_metadata(folder: Path | str, metadata: BundleMetadata, fsync: bool = False) -> Path:
    """Write `folder/model.json` atomically (temporary file, then rename); returns its path.
    fsync: flush it to the disk before the rename (when another file must not outlive it)."""
    path = Path(folder) / METADATA_FILE
    write_json(path, metadata.to_dict(), fsync=fsync)
    return path


def read_folder_json(
    path: Path, folder: Path, file_name: str, what: str, error: type[ValueError]
) -> tuple[Path, Any]:
    """Parse `folder/file_name` of a bundle-like folder given as `path`; `error` names the problem.

    Returns (the JSON file's path, its parsed content).
    """
    metadata_path = folder / file_name
    if not path.exists():
        raise error(f"{path}: no such file or folder")
    if not metadata_path.is_file():
        raise error(f"{folder}: not a {what} (no {file_name})")
    try:
        return metadata_path, json.loads(metadata_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{metadata_path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{metadata_path}: cannot read ({exc})") from None


def update_calibration(
    path: Path | str,
    temperature: float | None = None,
    unknown_threshold: float | EllipsisType | None = ...,
    operating_point: Mapping[str, Any] | None = None,
) -> Bundle:
    """Set a bundle's temperature and/or unknown threshold; what the calibration step calls.

    temperature: None keeps the current one. unknown_threshold: ... (the default) keeps the current
    one, None removes it (never answer "unknown"). operating_point: what the threshold was chosen
    for and gives on validation (target precision, least coverage, precision, coverage), kept in
    `extra["operating_point"]`. The new values are validated like the rest of
    model.json before the file is replaced. Holds the bundle folder's lock, as `carid enroll` does,
    so neither undoes the other's change.
    """
    changes: dict[str, Any] = {}
    if temperature is not None:
        changes["temperature"] = float(temperature)
    if unknown_threshold is not ...:
        changes["unknown_threshold"] = None if unknown_threshold is None else float(unknown_threshold)
    bundle = Bundle.load(path)
    with folder_lock(bundle.path):
        bundle = Bundle.load(bundle.path)
        if operating_point is not None:
            changes["extra"] = {**bundle.metadata.extra, "operating_point": dict(operating_point)}
        metadata = replace(bundle.metadata, **changes)
        metadata = BundleMetadata.from_dict(metadata.to_dict(), source=f"{bundle.metadata_path} (update)")
        write_metadata(bundle.path, metadata)
    return Bundle(bundle.path, metadata)
