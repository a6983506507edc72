"""The enrolment file format: a bundle's embedding space, score calibration and enrolled classes,
read and written (what `Predictor` and `carid enroll` share).

A bundle that can take new classes has, beside model.onnx and model.json, the file
`enrolment.npz` (arrays) and the model.json field "enrolment" (the rest):

    "enrolment": {
      "file": "enrolment.npz",                      mean [D], projection [D, K], sums [M, K], counts [M]
      "space": {"images": 1000, "classes": 196, "shrinkage": 1.0, "dim": 1280, "fitted_on": "..."},
      "calibration": {"scale": 30.0, "bias": -7.9, "new_accuracy": 0.45, "known_retained": 0.91,
                      "simulated_classes": 20, "shots": 5},
      "classes": [{"label": "Hyundai Creta 2021", "photos": 5, "added": "2026-12-05T16:00:00Z",
                   "updated": "...", "sources": ["creta/1.jpg", ...]}]
    }

`carid export` writes the space and the calibration with no classes (`carid.enroll.prepare`); each
`carid enroll` (`carid.enroll.store`) adds a class (or photos to one) and rewrites both files, the
arrays first, each atomically.
The trained classes stay as they are: the model's logits are unchanged and the enrolled classes'
scores (`carid.embedding`) are appended to them, in the order of "classes".

Imports NumPy and Pillow only (slim install).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from carid.artifacts.bundle import METADATA_FILE, Bundle, BundleMetadata, write_metadata
from carid.embedding import EmbeddingSpace, ScoreCalibration, prototypes
from carid.errors import CaridError
from carid.files import write_atomic

ENROLMENT_FILE = "enrolment.npz"
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

    def metadata_field(self) -> dict[str, Any]:
        calibration = self.calibration
        return {
            "file": ENROLMENT_FILE,
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


def load_enrolment(bundle: Bundle) -> Enrolment | None:
    """The bundle's enrolment, or None when its model.json has no "enrolment" field.

    EnrolError names the file and the problem when the field and the arrays do not fit.
    """
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
        raise EnrolError(f"{path}: missing (model.json field 'enrolment' refers to it)") from None
    except KeyError as exc:
        raise EnrolError(f"{path}: no array {exc} (expected {', '.join(_ARRAYS)})") from None
    except (OSError, ValueError) as exc:
        raise EnrolError(f"{path}: cannot read ({exc})") from None
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
        entries = info.get("classes") or []
        sums, counts = arrays["sums"], arrays["counts"]
        if len(entries) != len(sums) or len(entries) != len(counts):
            raise ValueError(
                f"{len(entries)} classes in model.json but {len(sums)} prototypes in {file_name}"
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
    """Write enrolment.npz, then model.json with the new "enrolment" field (each atomically)."""
    dim = enrolment.space.projection.shape[1]
    sums = np.stack([item.sum for item in enrolment.classes]) if enrolment.classes else np.zeros((0, dim))
    arrays = {
        "mean": enrolment.space.mean.astype(np.float32),
        "projection": enrolment.space.projection.astype(np.float32),
        "sums": sums.astype(np.float64),
        "counts": enrolment._counts(),
    }
    path = bundle.path / ENROLMENT_FILE
    write_atomic(path, lambda stream: np.savez(stream, **arrays))
    metadata = replace(bundle.metadata, enrolment=enrolment.metadata_field())
    metadata = BundleMetadata.from_dict(metadata.to_dict(), source=f"{bundle.metadata_path} (enrolment)")
    write_metadata(bundle.path, metadata)
    return Bundle(bundle.path, metadata)


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
