"""The ensemble folder format: ensemble.json and its member bundles, read, validated and written.

An ensemble is M exported bundles with the same class names (e.g. the 75 px and the 100 px
body-type models), combined per class with weights W [M, C] (non-negative, each column summing to
1); how W is fitted is `carid.evaluation.ensemble_fit`, how a photo is answered is
`carid.runtime.ensemble`. The folder is self-contained (copy it anywhere):

    ENSEMBLE/ensemble.json
    ENSEMBLE/members/<name>/model.json + model.onnx      copies of the member bundles

    ensemble.json = {
      "format": "carid.ensemble", "version": 1, "name": "body-75-100",
      "mode": "mean" | "weighted" | "expert",
      "members": [{"name": "body-75px", "path": "members/body-75px", "image_size": [75, 75],
                   "with_box": false, "source": "/runs/body-75px/export"}, ...],
      "weights": [M] | [M, C],              W above; [M] is the same weight for every class
      "box_mode": "mean" | "best", "box_weights": [M],
      "class_names": [...],                 the first member's, in its order
      "label_level": "class" | "make" | "body_type" | "year", "taxonomy": {...} | null,
      "temperature": 1.0, "unknown_threshold": null | 0.42,
      "fit": {...} | null,                  how the weights were fitted (split, images, method, NLL)
      "validation": {...} | null,           each member's and the ensemble's scores on the fit split
      "calibration": {...} | null,          the temperature / threshold fit
      "notes": [...], "created": "...", "versions": {"carid": ...}
    }

NumPy and the slim carid modules only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from types import EllipsisType
from typing import Any

import numpy as np

from carid import __version__
from carid.artifacts.bundle import (
    BOX,
    ENSEMBLE_FILE,
    LOGITS,
    Bundle,
    BundleError,
    BundleMetadata,
    read_folder_json,
)
from carid.files import write_json
from carid.taxonomy import LEVELS

ENSEMBLE_FORMAT = "carid.ensemble"


ENSEMBLE_VERSION = 1


MEMBERS_DIR = "members"


MODES: tuple[str, ...] = ("mean", "weighted", "expert")


BOX_MODES: tuple[str, ...] = ("mean", "best")


MAX_LISTED = 6
DESCRIBED_FIELDS = (  # what `Ensemble.describe` (GET /model, evaluation.json) tells of an ensemble
    "name",
    "mode",
    "members",
    "weights",
    "box_mode",
    "box_weights",
    "temperature",
    "unknown_threshold",
)


class EnsembleError(BundleError):
    """An ensemble that cannot be built or used; the message names the file (and field) and the problem."""


def few_names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:MAX_LISTED])
    return (shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")) or "none"


def weight_matrix(weights: object, num_members: int, num_classes: int) -> np.ndarray:
    """Weights [M] (one per member) or [M, C] (per member and class) as float64 [M, C] whose columns
    sum to 1. ValueError for a wrong shape, a negative or non-finite weight, or an all-zero column."""
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim == 1:
        array = np.repeat(array[:, None], num_classes, axis=1)
    if array.shape != (num_members, num_classes):
        raise ValueError(
            f"weights must have shape [{num_members}] or [{num_members}, {num_classes}] "
            f"(members, classes), got {list(np.shape(weights))}"
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError("weights must be finite and >= 0")
    totals = array.sum(axis=0)
    if (totals <= 0).any():
        raise ValueError(f"the weights of class column {int(np.flatnonzero(totals <= 0)[0])} are all 0")
    return array / totals


def class_columns(reference: Sequence[str], names: Sequence[str], member: str) -> np.ndarray:
    """Column indices int64 [C]: `member_probabilities[:, columns]` is in the `reference` order.

    Raises EnsembleError naming the member and the classes that differ when the names are not the
    same set (the order may differ).
    """
    reference_set, names_set = set(reference), set(names)
    if reference_set != names_set or len(names) != len(reference):
        missing = [name for name in reference if name not in names_set]
        extra = [name for name in names if name not in reference_set]
        raise EnsembleError(
            f"{member}: its {len(names)} classes differ from the ensemble's {len(reference)}: missing "
            f"{few_names(missing)}; not in the ensemble {few_names(extra)}. Ensemble members must predict "
            "the same class names (in any order)"
        )
    index = {name: position for position, name in enumerate(names)}
    return np.array([index[name] for name in reference], dtype=np.int64)


@dataclass(frozen=True)
class EnsembleMember:
    """One member as ensemble.json lists it. path: relative to the ensemble folder (POSIX, inside it).
    image_size: (height, width) of its input. source: where the bundle was copied from."""

    name: str
    path: str
    image_size: tuple[int, int]
    with_box: bool
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "image_size": list(self.image_size),
            "with_box": self.with_box,
            "source": self.source,
        }


class _Fields:
    """Typed reads of ensemble.json fields; each failure is an EnsembleError naming file and field."""

    def __init__(self, source: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.data = data

    def fail(self, key: str, expected: str, value: Any = ...) -> EnsembleError:
        shown = self.data.get(key) if value is ... else value
        return EnsembleError(f"{self.source}: field {key!r} must be {expected}, got {shown!r}")

    def string(self, key: str, optional: bool = False) -> Any:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, "a non-empty string")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str | None = None) -> str:
        value = self.data.get(key, default)
        if value not in choices:
            raise self.fail(key, f"one of {', '.join(choices)}")
        return str(value)

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(key, "an object or null")
        return dict(value)

    def number(self, key: str, default: float | None) -> float | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, "a finite number")
        return float(value)


def _check_member_path(text: str, source: str, name: str) -> str:
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in text:
        raise EnsembleError(
            f"{source}: member {name!r} has path {text!r}; member paths must be relative paths inside "
            f"the ensemble folder (e.g. '{MEMBERS_DIR}/{name}')"
        )
    return path.as_posix()


def _read_members(fields: _Fields) -> tuple[EnsembleMember, ...]:
    items = fields.data.get("members")
    if not isinstance(items, list) or not items:
        raise fields.fail("members", "a non-empty list of members")
    members: list[EnsembleMember] = []
    for position, item in enumerate(items):
        where = _Fields(f"{fields.source} member {position}", item if isinstance(item, Mapping) else {})
        if not isinstance(item, Mapping):
            raise fields.fail("members", "a list of objects", item)
        name = where.string("name")
        size = item.get("image_size")
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        ):
            raise where.fail("image_size", "[height, width] in pixels")
        with_box = item.get("with_box")
        if not isinstance(with_box, bool):
            raise where.fail("with_box", "true or false")
        members.append(
            EnsembleMember(
                name=name,
                path=_check_member_path(where.string("path"), fields.source, name),
                image_size=(int(size[0]), int(size[1])),
                with_box=with_box,
                source=where.string("source", optional=True),
            )
        )
    names = [member.name for member in members]
    if len(set(names)) != len(names):
        raise fields.fail("members", "members with distinct names", names)
    return tuple(members)


def _read_weights(fields: _Fields, num_members: int, num_classes: int) -> tuple[Any, ...]:
    value = fields.data.get("weights")
    try:
        array = np.asarray(value, dtype=np.float64)
        weight_matrix(array, num_members, num_classes)
    except (TypeError, ValueError) as exc:
        raise fields.fail(
            "weights", f"[{num_members}] or [{num_members}, {num_classes}] weights >= 0 ({exc})"
        ) from None
    return as_tuple(array)


def as_tuple(array: np.ndarray) -> tuple[Any, ...]:
    if array.ndim == 1:
        return tuple(float(v) for v in array)
    return tuple(tuple(float(v) for v in row) for row in array)


@dataclass(frozen=True)
class EnsembleMetadata:
    """The contents of ensemble.json (see the module docstring for each field)."""

    name: str
    mode: str
    members: tuple[EnsembleMember, ...]
    weights: tuple[Any, ...]
    class_names: tuple[str, ...]
    box_weights: tuple[float, ...]
    box_mode: str = "mean"
    label_level: str = "class"
    taxonomy: dict[str, Any] | None = None
    temperature: float = 1.0
    unknown_threshold: float | None = None
    fit: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    created: str | None = None
    versions: dict[str, str] = field(default_factory=lambda: {"carid": __version__})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def weight_matrix(self) -> np.ndarray:
        """W float64 [M, C], columns summing to 1."""
        return weight_matrix(np.asarray(self.weights, dtype=np.float64), len(self.members), self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": ENSEMBLE_FORMAT,
            "version": ENSEMBLE_VERSION,
            "name": self.name,
            "mode": self.mode,
            "members": [member.to_dict() for member in self.members],
            "weights": [list(row) if isinstance(row, tuple) else row for row in self.weights],
            "box_mode": self.box_mode,
            "box_weights": list(self.box_weights),
            "class_names": list(self.class_names),
            "label_level": self.label_level,
            "taxonomy": self.taxonomy,
            "temperature": self.temperature,
            "unknown_threshold": self.unknown_threshold,
            "fit": self.fit,
            "validation": self.validation,
            "calibration": self.calibration,
            "notes": list(self.notes),
            "created": self.created,
            "versions": self.versions,
        }
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = ENSEMBLE_FILE) -> EnsembleMetadata:
        """Validate ensemble.json contents; EnsembleError names `source` and the field."""
        if not isinstance(data, Mapping):
            raise EnsembleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != ENSEMBLE_FORMAT:
            raise EnsembleError(
                f"{source}: field 'format' is {data.get('format')!r}, expected {ENSEMBLE_FORMAT!r}"
            )
        if data.get("version") != ENSEMBLE_VERSION:
            raise EnsembleError(
                f"{source}: field 'version' is {data.get('version')!r}; this carid reads "
                f"version {ENSEMBLE_VERSION}"
            )
        fields = _Fields(source, data)
        members = _read_members(fields)
        class_names = data.get("class_names")
        if (
            not isinstance(class_names, list)
            or not class_names
            or not all(isinstance(name, str) and name for name in class_names)
        ):
            raise fields.fail("class_names", "a non-empty list of non-empty strings")
        if len(set(class_names)) != len(class_names):
            raise fields.fail("class_names", "distinct names", "repeated names")
        box_weights = data.get("box_weights")
        try:
            boxes = np.asarray(box_weights, dtype=np.float64)
            valid = boxes.shape == (len(members),) and np.isfinite(boxes).all() and (boxes >= 0).all()
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise fields.fail("box_weights", f"{len(members)} numbers >= 0")
        temperature = fields.number("temperature", 1.0)
        if temperature is None or not temperature > 0:
            raise fields.fail("temperature", "a positive number")
        threshold = fields.number("unknown_threshold", None)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise fields.fail("unknown_threshold", "a number in [0, 1] or null")
        notes = data.get("notes") or []
        if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
            raise fields.fail("notes", "a list of strings")
        versions = fields.mapping("versions") or {}
        return cls(
            name=fields.string("name"),
            mode=fields.choice("mode", MODES),
            members=members,
            weights=_read_weights(fields, len(members), len(class_names)),
            class_names=tuple(class_names),
            box_weights=tuple(float(v) for v in boxes),
            box_mode=fields.choice("box_mode", BOX_MODES, default="mean"),
            label_level=fields.choice("label_level", LEVELS, default="class"),
            taxonomy=fields.mapping("taxonomy"),
            temperature=temperature,
            unknown_threshold=threshold,
            fit=fields.mapping("fit"),
            validation=fields.mapping("validation"),
            calibration=fields.mapping("calibration"),
            notes=tuple(notes),
            created=fields.string("created", optional=True),
            versions={str(key): str(value) for key, value in versions.items()},
        )


@dataclass(frozen=True, eq=False)
class Ensemble:
    """An ensemble folder: its metadata, its member bundles (loaded and checked) and, per member,
    the columns that put its probabilities in the ensemble's class order (int64 [C])."""

    path: Path
    metadata: EnsembleMetadata
    bundles: tuple[Bundle, ...]
    columns: tuple[np.ndarray, ...]

    @property
    def metadata_path(self) -> Path:
        return self.path / ENSEMBLE_FILE

    @property
    def with_box(self) -> bool:
        """Some member with a box head has a box weight."""
        return any(
            bundle.metadata.with_box and weight > 0
            for bundle, weight in zip(self.bundles, self.metadata.box_weights, strict=True)
        )

    def member_path(self, index: int) -> Path:
        return self.path / self.metadata.members[index].path

    @classmethod
    def load(cls, path: Path | str) -> Ensemble:
        """Read an ensemble folder (or its ensemble.json) and its member bundles.

        Raises EnsembleError naming the file (and field or member) and the problem: a member
        folder missing or not a bundle, member classes that differ from the ensemble's, ...
        """
        path = Path(path)
        folder = path.parent if path.name == ENSEMBLE_FILE else path
        metadata_path, data = read_folder_json(path, folder, ENSEMBLE_FILE, "carid ensemble", EnsembleError)
        metadata = EnsembleMetadata.from_dict(data, source=str(metadata_path))
        bundles, columns = [], []
        for member in metadata.members:
            where = f"{metadata_path}: member {member.name!r} ({member.path})"
            try:
                bundle = Bundle.load(folder / member.path)
            except BundleError as exc:
                raise EnsembleError(f"{where}: {exc}") from None
            columns.append(class_columns(metadata.class_names, bundle.metadata.class_names, where))
            if bundle.metadata.label_level != metadata.label_level:
                raise EnsembleError(
                    f"{where}: its classes are at level {bundle.metadata.label_level!r}, the ensemble's "
                    f"at {metadata.label_level!r}"
                )
            bundles.append(bundle)
        if bundles[0].metadata.class_names != metadata.class_names:
            raise EnsembleError(
                f"{metadata_path}: field 'class_names' must be the first member's class names in its order"
            )
        return cls(folder, metadata, tuple(bundles), tuple(columns))

    def predictor_metadata(self) -> BundleMetadata:
        """What `Predictor` needs of a bundle, for the ensemble: its classes, taxonomy, temperature
        and threshold; "preprocess" is the first member's (each member uses its own)."""
        meta = self.metadata
        first = self.bundles[0].metadata
        backbones = [
            f"{member.name} ({bundle.metadata.model_config.get('backbone') or '?'}, "
            f"{member.image_size[0]}x{member.image_size[1]})"
            for member, bundle in zip(meta.members, self.bundles, strict=True)
        ]
        with_box = self.with_box
        return BundleMetadata(
            class_names=meta.class_names,
            preprocess=dict(first.preprocess),
            with_box=with_box,
            label_level=meta.label_level,
            taxonomy=meta.taxonomy,
            temperature=meta.temperature,
            unknown_threshold=meta.unknown_threshold,
            output_names=(LOGITS, BOX) if with_box else (LOGITS,),
            embedding_dim=None,
            model_file=ENSEMBLE_FILE,
            model_config={"backbone": f"{meta.mode} ensemble of " + " + ".join(backbones)},
            versions=dict(meta.versions),
            created=meta.created,
            extra={"run_name": meta.name, "ensemble": self.describe()},
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: name, mode, members (name, input size, box head), weights."""
        full = self.metadata.to_dict()
        return {key: full[key] for key in DESCRIBED_FIELDS}


def write_ensemble_metadata(folder: Path | str, metadata: EnsembleMetadata) -> Path:
    """Write `folder/ensemble.json` atomically; returns its path."""
    path = Path(folder) / ENSEMBLE_FILE
    write_json(path, metadata.to_dict())
    return path


def update_ensemble_calibration(
    path: Path | str,
    temperature: float | None = None,
    unknown_threshold: float | EllipsisType | None = ...,
    calibration: dict[str, Any] | None = None,
) -> Ensemble:
    """Set an ensemble's temperature and/or unknown threshold (as `carid.artifacts.bundle.update_calibration`
    does for a bundle). temperature None keeps it; unknown_threshold ... keeps it, None removes it.
    calibration: the fit record to store beside them."""
    ensemble = Ensemble.load(path)
    changes: dict[str, Any] = {}
    if temperature is not None:
        changes["temperature"] = float(temperature)
    if unknown_threshold is not ...:
        changes["unknown_threshold"] = None if unknown_threshold is None else float(unknown_threshold)
    if calibration is not None:
        changes["calibration"] = calibration
    metadata = replace(ensemble.metadata, **changes)
    metadata = EnsembleMetadata.from_dict(metadata.to_dict(), source=f"{ensemble.metadata_path} (update)")
    write_ensemble_metadata(ensemble.path, metadata)
    return Ensemble.load(ensemble.path)
