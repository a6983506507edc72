"""Enrolled classes in a bundle: read, score, add photos, remove; what `carid enroll` and
`Predictor` use.

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
`enroll` adds a class (or photos to one) and rewrites both files, the arrays first, each atomically.
The trained classes stay as they are: the model's logits are unchanged and the enrolled classes'
scores (`carid.enroll.space`) are appended to them, in the order of "classes".

Imports NumPy and Pillow only (slim install).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carid.artifacts.bundle import EMBEDDING, METADATA_FILE, Bundle, BundleMetadata, write_metadata
from carid.enroll.space import EmbeddingSpace, ScoreCalibration, prototype_sum, prototypes
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


# --- enrolling ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolResult:
    """What one `enroll` did: the class, the photos used and skipped (with the reason), all classes."""

    label: str
    added_photos: tuple[str, ...]
    skipped: tuple[str, ...]
    photos: int
    new_class: bool
    classes: tuple[str, ...]
    bundle: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "added_photos": list(self.added_photos),
            "skipped": list(self.skipped),
            "photos": self.photos,
            "new_class": self.new_class,
            "enrolled_classes": list(self.classes),
            "bundle": str(self.bundle),
        }


def clean_label(label: str, trained: Sequence[str]) -> str:
    """The label stripped of outer spaces; EnrolError when empty, too long or a trained class."""
    cleaned = " ".join(str(label).split())
    if not cleaned:
        raise EnrolError("--label: the class name is empty")
    if len(cleaned) > MAX_LABEL_LENGTH:
        raise EnrolError(f"--label: the class name is longer than {MAX_LABEL_LENGTH} characters")
    if cleaned in trained:
        raise EnrolError(f"--label {cleaned!r}: the model was trained on this class already")
    if cleaned == "unknown":
        raise EnrolError("--label 'unknown' is what the model answers when it does not know a car")
    return cleaned


def embed_photos(
    bundle: Bundle, photos: Sequence[Path | str], threads: int | None = None
) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings [N, D] of the readable photos, their names, "name: reason" of the skipped ones).

    The same file twice (same bytes) is used once. Runs the bundle's ONNX model.
    """
    from carid.runtime.predictor import OnnxBackend, prepare_image

    if EMBEDDING not in bundle.metadata.output_names:
        raise EnrolError(
            f"{bundle.path}: the model has no {EMBEDDING!r} output; re-export it with `carid export`"
        )
    spec = bundle.metadata.preprocess_spec()
    used, skipped, arrays, seen = [], [], [], {}
    for photo in photos:
        name = str(photo)
        try:
            digest = hashlib.sha256(Path(photo).read_bytes()).hexdigest()
        except OSError as exc:
            skipped.append(f"{name}: cannot read ({exc.strerror or exc})")
            continue
        if digest in seen:
            skipped.append(f"{name}: the same file as {seen[digest]}")
            continue
        prepared = prepare_image(Path(photo), spec, name)
        if prepared.error is not None:
            skipped.append(prepared.error)
            continue
        seen[digest] = name
        used.append(name)
        arrays.append(prepared.array)
    if not arrays:
        return np.zeros((0, bundle.metadata.embedding_dim or 0), dtype=np.float32), used, skipped
    backend = OnnxBackend(bundle.model_path, bundle.metadata.input_name, threads=threads)
    rows = [backend.run(np.stack(arrays[i : i + 16]))[EMBEDDING] for i in range(0, len(arrays), 16)]
    return np.concatenate(rows).astype(np.float32), used, skipped


def enroll(
    model: Path | str,
    label: str,
    photos: Sequence[Path | str],
    replace_photos: bool = False,
    threads: int | None = None,
    say: Callable[[str], None] | None = None,
) -> EnrolResult:
    """Add the class `label` from `photos` to the bundle (or add the photos to an enrolled class).

    replace_photos: an enrolled class forgets its earlier photos. Unreadable photos are skipped and
    listed; EnrolError when none can be used (nothing is written then).
    """
    bundle = resolve_bundle(model)
    enrolment = require_enrolment(bundle)
    label = clean_label(label, bundle.metadata.class_names)
    if not photos:
        raise EnrolError(f"--label {label!r}: no photos given")
    embeddings, used, skipped = embed_photos(bundle, photos, threads=threads)
    for reason in skipped:
        (say or (lambda _: None))(f"skipped {reason}")
    if not used:
        raise EnrolError(
            f"--label {label!r}: none of the {len(photos)} photos can be used; nothing was changed"
        )
    features = enrolment.space.transform(embeddings)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    classes = list(enrolment.classes)
    position = next((i for i, item in enumerate(classes) if item.label == label), None)
    if position is None or replace_photos:
        entry = EnrolledClass(
            label=label,
            sum=prototype_sum(features),
            photos=len(used),
            added=now if position is None else classes[position].added,
            updated=now,
            sources=tuple(used),
        )
    else:
        old = classes[position]
        entry = replace(
            old,
            sum=old.sum + prototype_sum(features),
            photos=old.photos + len(used),
            updated=now,
            sources=old.sources + tuple(used),
        )
    if position is None:
        classes.append(entry)
    else:
        classes[position] = entry
    updated = save_enrolment(bundle, replace(enrolment, classes=tuple(classes)))
    return EnrolResult(
        label=label,
        added_photos=tuple(used),
        skipped=tuple(skipped),
        photos=entry.photos,
        new_class=position is None,
        classes=tuple(item.label for item in classes),
        bundle=updated.path,
    )


def remove(model: Path | str, labels: Sequence[str]) -> tuple[str, ...]:
    """Remove enrolled classes by label; returns the classes left. EnrolError names unknown labels."""
    bundle = resolve_bundle(model)
    enrolment = require_enrolment(bundle)
    wanted = {" ".join(str(label).split()) for label in labels}
    missing = sorted(wanted - set(enrolment.labels))
    if missing:
        known = ", ".join(map(repr, enrolment.labels)) or "none"
        raise EnrolError(f"{bundle.path}: not enrolled: {', '.join(map(repr, missing))} (enrolled: {known})")
    kept = tuple(item for item in enrolment.classes if item.label not in wanted)
    save_enrolment(bundle, replace(enrolment, classes=kept))
    return tuple(item.label for item in kept)


def listing(model: Path | str) -> tuple[Bundle, Enrolment | None]:
    """The bundle and its enrolment (None when it cannot take new classes), for `carid enroll --list`."""
    bundle = resolve_bundle(model)
    return bundle, load_enrolment(bundle)
