"""The enrolment file format: a bundle's embedding space, score calibration and enrolled classes,
read and written (what `Predictor` and `carid enroll` share).

A bundle that can take new classes has, beside model.onnx and model.json, an arrays file
`enrolment-<sha256 prefix of its content>.npz` and the model.json field "enrolment" (the rest):

    "enrolment": {
      "file": "enrolment-3f9a0c1d2e4b5a6c.npz",     mean [D], projection [D, K], sums [M, K], counts [M]
      "space": {"images": 1000, "classes": 196, "shrinkage": 1.0, "dim": 1280, "fitted_on": "..."},
      "calibration": {"scale": 30.0, "bias": -7.9, "new_accuracy": 0.45, "known_retained": 0.91,
                      "simulated_classes": 20, "shots": 5},
      "classes": [{"label": "Hyundai Creta 2021", "photos": 5, "added": "2026-12-05T16:00:00Z",
                   "updated": "...", "sources": ["creta/1.jpg", ...]}]
    }

`carid export` writes the space and the calibration with no classes (`carid.enroll.prepare`); each
`carid enroll` (`carid.enroll.store`) adds a class (or photos to one). The two files change together
as one: `save_enrolment` writes the arrays to a new file (named after its content), then replaces
model.json (atomically) with a "file" field naming it, then deletes the old arrays file, holding the
bundle folder's lock (`carid.files.folder_lock`) throughout. A reader follows model.json's "file",
so it sees the old pair or the new pair, never a mix, whenever a writer is killed. Bundles written
before (a fixed `enrolment.npz`) are read the same way. `remove_bundle_leftovers` deletes what a
killed writer left: temporary files, and the arrays files model.json does not name.
The trained classes stay as they are: the model's logits are unchanged and the enrolled classes'
scores (`carid.embedding`) are appended to them, in the order of "classes".

Imports NumPy and Pillow only (slim install).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from carid.artifacts.bundle import METADATA_FILE, Bundle, BundleError, BundleMetadata, write_metadata
from carid.embedding import EmbeddingSpace, ScoreCalibration, prototypes
from carid.errors import CaridError
from carid.files import (
    GRACE_SECONDS,
    Leftover,
    folder_lock,
    remove_leftover,
    remove_stale_temporaries,
    stale_reason,
    write_atomic,
)

# The arrays file of bundles written before its name changed with each version (still read).
ENROLMENT_FILE = "enrolment.npz"
# Any arrays file: "enrolment-<16 hex digits of the content's sha256>.npz", or the old name.
ENROLMENT_FILE_PATTERN = re.compile(r"^enrolment(?:-[0-9a-f]{16})?\.npz$")
MAX_LABEL_LENGTH = 200
_ARRAYS = ("mean", "projection", "sums", "counts")


class EnrolError(CaridError, ValueError):
    """An enrolment that cannot be done as asked; the message names the file or label and the problem."""


@dataclass(frozen=True)
class EnrolledClass:
    """One enrolled class: its label, the sum of its photos' transformed embeddings and their count."""

    label: str
    sum: np.ndarray = field(repr=False)
    photos: int
    added: str
    updated: str
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "photos": self.photos,
            "added": self.added,
            "updated": self.updated,
            "sources": list(self.sources),
        }


@dataclass(frozen=True)
class Enrolment:
    """A bundle's embedding space, its score calibration and its enrolled classes."""

    space: EmbeddingSpace
    calibration: ScoreCalibration
    classes: tuple[EnrolledClass, ...] = ()
    space_info: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(item.label for item in self.classes)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Logits [N, M] of the enrolled classes for embeddings [N, D] (M may be 0)."""
        embeddings = np.asarray(embeddings)
        if not self.classes:
            return np.zeros((len(embeddings), 0), dtype=np.float64)
        protos = prototypes(np.stack([item.sum for item in self.classes]), self._counts())
        return self.calibration.logits(self.space.transform(embeddings) @ protos.T)

    def _counts(self) -> np.ndarray:
        return np.asarray([item.photos for item in self.classes], dtype=np.int64)

    def metadata_field(self, file_name: str) -> dict[str, Any]:
        """The model.json field "enrolment", naming `file_name` as the arrays file."""
        calibration = self.calibration
        return {
            "file": file_name,
            "space": dict(self.space_info),
            "calibration": {
                "scale": calibration.scale,
                "bias": calibration.bias,
                "new_accuracy": calibration.new_accuracy,
                "known_retained": calibration.known_retained,
                "simulated_classes": calibration.simulated_classes,
                "shots": calibration.shots,
            },
            "classes": [item.to_dict() for item in self.classes],
        }

    def summary(self) -> list[dict[str, Any]]:
        """Label, photo count and dates of each enrolled class (no file names: GET /model shows it)."""
        return [
            {"label": item.label, "photos": item.photos, "added": item.added, "updated": item.updated}
            for item in self.classes
        ]


# --- reading and writing ----------------------------------------------------------------------------


def enrolment_file(bundle: Bundle) -> Path | None:
    """The arrays file the bundle's model.json names (None when it has no "enrolment" field)."""
    info = bundle.metadata.enrolment
    return None if info is None else bundle.path / str(info.get("file", ENROLMENT_FILE))


def load_enrolment(bundle: Bundle) -> Enrolment | None:
    """The bundle's enrolment, or None when its model.json has no "enrolment" field.

    EnrolError names the file and the problem when the field and the arrays do not fit. When the
    arrays file is gone because `carid enroll` replaced the pair while this was reading, the bundle
    is read again.
    """
    try:
        return _load_enrolment(bundle)
    except _MissingArrays:
        try:
            again = Bundle.load(bundle.path)
        except BundleError:
            again = bundle
        if enrolment_file(again) == enrolment_file(bundle):
            raise
        return _load_enrolment(again)


class _MissingArrays(EnrolError):
    """The arrays file model.json names does not exist."""


def _load_enrolment(bundle: Bundle) -> Enrolment | None:
    info = bundle.metadata.enrolment
    if info is None:
        return None
    where = bundle.metadata_path
    file_name = info.get("file", ENROLMENT_FILE)
    if not isinstance(file_name, str) or Path(file_name).name != file_name:
        raise EnrolError(
            f"{where}: field 'enrolment.file' must be a file name in the bundle, got {file_name!r}"
        )
    path = bundle.path / file_name
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in _ARRAYS}
    except FileNotFoundError:
        raise _MissingArrays(f"{path}: missing (model.json field 'enrolment' refers to it)") from None
    except KeyError as exc:
        raise EnrolError(f"{path}: no array {exc} (expected {', '.join(_ARRAYS)})") from None
    except (OSError, ValueError) as exc:
        raise EnrolError(f"{path}: cannot read ({exc})") from None
    entries = info.get("classes") or []
    if not isinstance(entries, list):
        raise EnrolError(f"{where}: field 'enrolment.classes' must be a list, got {entries!r}")
    sums, counts = arrays["sums"], arrays["counts"]
    if len(entries) != len(sums) or len(entries) != len(counts):
        raise EnrolError(
            f"{where}: {len(entries)} classes in model.json but {len(sums)} prototypes and {len(counts)} "
            f"counts in {path}: the two files do not belong together",
            hint="an earlier carid could leave a bundle so when `carid enroll` was killed; re-export it "
            "with `carid export RUN --force`, then enrol its classes again",
        )
    try:
        space = EmbeddingSpace(arrays["mean"].astype(np.float32), arrays["projection"].astype(np.float32))
        calibration_info = info.get("calibration") or {}
        calibration = ScoreCalibration(
            scale=float(calibration_info["scale"]),
            bias=float(calibration_info["bias"]),
            new_accuracy=calibration_info.get("new_accuracy"),
            known_retained=calibration_info.get("known_retained"),
            simulated_classes=int(calibration_info.get("simulated_classes", 0)),
            shots=int(calibration_info.get("shots", 0)),
        )
        if len(sums) and sums.shape[1] != space.projection.shape[1]:
            raise ValueError(f"prototypes of dimension {sums.shape[1]}, space of {space.projection.shape[1]}")
        classes = tuple(
            EnrolledClass(
                label=str(entry["label"]),
                sum=np.asarray(sums[i], dtype=np.float64),
                photos=int(counts[i]),
                added=str(entry.get("added", "")),
                updated=str(entry.get("updated", entry.get("added", ""))),
                sources=tuple(str(s) for s in entry.get("sources", ())),
            )
            for i, entry in enumerate(entries)
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EnrolError(f"{where}: field 'enrolment' does not fit {file_name}: {exc}") from None
    clash = set(bundle.metadata.class_names) & {item.label for item in classes}
    if clash:
        raise EnrolError(f"{where}: enrolled class(es) {sorted(clash)} repeat trained class names")
    return Enrolment(space, calibration, classes, dict(info.get("space") or {}))


def save_enrolment(bundle: Bundle, enrolment: Enrolment) -> Bundle:
    """Replace the bundle's enrolment: the arrays to a new file, then model.json naming it (each
    atomically and flushed to the disk), then the old arrays file is deleted. A kill at any moment
    leaves the old pair or the new one (and at most files `remove_bundle_leftovers` deletes).

    Holds the bundle folder's lock; model.json is read again under it, so a change another process
    made to its other fields meanwhile (a calibration) is kept.
    """
    dim = enrolment.space.projection.shape[1]
    sums = np.stack([item.sum for item in enrolment.classes]) if enrolment.classes else np.zeros((0, dim))
    arrays = {
        "mean": enrolment.space.mean.astype(np.float32),
        "projection": enrolment.space.projection.astype(np.float32),
        "sums": sums.astype(np.float64),
        "counts": enrolment._counts(),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    file_name = f"enrolment-{hashlib.sha256(data).hexdigest()[:16]}.npz"
    with folder_lock(bundle.path):
        try:
            current = Bundle.load(bundle.path)
        except BundleError:
            current = bundle
        write_atomic(bundle.path / file_name, data, fsync=True)
        metadata = replace(current.metadata, enrolment=enrolment.metadata_field(file_name))
        metadata = BundleMetadata.from_dict(metadata.to_dict(), source=f"{bundle.metadata_path} (enrolment)")
        write_metadata(bundle.path, metadata, fsync=True)
        previous = enrolment_file(current)
        if previous is not None and previous.name != file_name and _arrays_file(previous, bundle.path):
            previous.unlink(missing_ok=True)
    return Bundle(bundle.path, metadata)


def _arrays_file(path: Path, folder: Path) -> bool:
    return path.parent == folder and ENROLMENT_FILE_PATTERN.match(path.name) is not None


def remove_bundle_leftovers(folder: Path | str, grace_seconds: float = GRACE_SECONDS) -> list[Leftover]:
    """Delete what killed writers left in a bundle folder: temporary files
    (`carid.files.remove_stale_temporaries`) and the arrays files model.json does not name. Those are
    removed under the folder's lock, when no `save_enrolment` is half-way; where the file system
    cannot lock, only once older than `grace_seconds`. A folder without a model.json that names an
    arrays file is left alone."""
    folder = Path(folder)
    if not (folder / METADATA_FILE).is_file():
        return []
    with folder_lock(folder) as locked:
        leftovers = remove_stale_temporaries(folder, grace_seconds=grace_seconds)
        try:
            current = enrolment_file(Bundle.load(folder))
        except BundleError:
            return leftovers
        if current is None:  # no enrolment: arrays files here were not written by carid enroll
            return leftovers
        for path in sorted(folder.glob("enrolment*.npz")):
            if path.name == current.name or not _arrays_file(path, folder):
                continue
            reason = "no writer is at work" if locked else stale_reason(path, None, grace_seconds)
            removed = None if reason is None else remove_leftover(path, f"not named by model.json; {reason}")
            if removed is not None:
                leftovers.append(removed)
    return leftovers


def resolve_bundle(path: Path | str) -> Bundle:
    """A bundle folder (or its model.json), or a run folder with an export; BundleError otherwise."""
    path = Path(path)
    if path.is_dir() and not (path / METADATA_FILE).is_file() and (path / "export" / METADATA_FILE).is_file():
        path = path / "export"
    return Bundle.load(path)


def require_enrolment(bundle: Bundle) -> Enrolment:
    enrolment = load_enrolment(bundle)
    if enrolment is None:
        raise EnrolError(
            f"{bundle.path}: this bundle cannot take new classes (model.json has no 'enrolment' field); "
            "re-export its run with `carid export RUN --force`, which fits the embedding space"
        )
    return enrolment
