"""Adding, removing and listing the classes enrolled in a bundle: what `carid enroll` does.

The file format (an arrays file + the model.json "enrolment" field, replaced together) is
`carid.artifacts.enrolment`; this module embeds the new photos with the bundle's own model (ONNX
Runtime) and updates it. Each change first removes what an earlier, killed `carid enroll` left in
the bundle folder (`remove_bundle_leftovers`).
Imports NumPy, Pillow and ONNX Runtime only (slim install).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carid.artifacts.bundle import EMBEDDING, Bundle
from carid.artifacts.enrolment import (
    MAX_LABEL_LENGTH,
    EnrolError,
    EnrolledClass,
    Enrolment,
    load_enrolment,
    remove_bundle_leftovers,
    require_enrolment,
    resolve_bundle,
    save_enrolment,
)
from carid.data.text import terminal_text
from carid.embedding import prototype_sum

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
    control = sorted({f"U+{ord(c):04X}" for c in cleaned if unicodedata.category(c) in ("Cc", "Cf")})
    if control:
        raise EnrolError(
            f"--label {terminal_text(cleaned)!r}: contains control characters ({', '.join(control)}); "
            "a class name is shown in terminals, pages and files"
        )
    return cleaned


def embed_photos(
    bundle: Bundle, photos: Sequence[Path | str], threads: int | None = None
) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings [N, D] of the readable photos, their names, "name: reason" of the skipped ones).

    The same file twice (same bytes) is used once. Runs the bundle's ONNX model.
    """
    from carid.runtime.backends import OnnxBackend
    from carid.runtime.inputs import prepare_image

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
    tell = say or (lambda _: None)
    bundle = resolve_bundle(model)
    for leftover in remove_bundle_leftovers(bundle.path):
        tell(leftover.describe())
    enrolment = require_enrolment(bundle)
    label = clean_label(label, bundle.metadata.class_names)
    if not photos:
        raise EnrolError(f"--label {label!r}: no photos given")
    embeddings, used, skipped = embed_photos(bundle, photos, threads=threads)
    for reason in skipped:
        tell(f"skipped {reason}")
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


def remove(
    model: Path | str, labels: Sequence[str], say: Callable[[str], None] | None = None
) -> tuple[str, ...]:
    """Remove enrolled classes by label; returns the classes left. EnrolError names unknown labels.
    say: told what an earlier, killed run left and this one removed."""
    tell = say or (lambda _: None)
    bundle = resolve_bundle(model)
    for leftover in remove_bundle_leftovers(bundle.path):
        tell(leftover.describe())
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
