"""The Samples table: what every reader produces and everything downstream consumes.

One row (`Sample`) per image: its path, image-level class label, zero or more boxes in absolute
xyxy pixels (`boxes.py` conventions), the image size when known, the split the source format
defines (if any) and `source`, a human-readable pointer ("cars_train_annos.mat row 7389",
"annotations/xmls/Abyssinian_1.xml") used in every error message about the sample.

Problems found while reading or checking are `Problem` records collected in the table rather than
raised, so that one bad file never stops the rest of the work and nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import numpy as np


class Severity(StrEnum):
    """How a problem affects the sample it names."""

    ERROR = "error"  # the sample is excluded from training/evaluation
    WARNING = "warning"  # the sample is kept (possibly repaired, e.g. a clipped box)
    INFO = "info"  # a fact worth knowing (an image with no box, a dataset-level note)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data, named precisely enough to find and fix it.

    `kind` is a stable machine-readable code (e.g. ``unreadable_image``, ``box_outside_image``),
    `source` the file (and row/line/field) where it was found, `path` the image it concerns.
    """

    kind: str
    message: str
    source: str
    severity: Severity = Severity.ERROR
    path: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "kind": self.kind,
            "severity": str(self.severity),
            "source": self.source,
            "path": self.path,
            "message": self.message,
        }

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


def _as_boxes(boxes: object) -> np.ndarray:
    array = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return array.reshape(-1, 4)


@dataclass(frozen=True, eq=False)
class Sample:
    """One image and its annotations.

    boxes: float64 array [N, 4], absolute xyxy pixels, N >= 0.
    box_labels: N labels, one per box (the object class in formats that have one; for car
        datasets usually equal to `label` or a generic "car").
    label: the image-level class, or None when the dataset has no classes (e.g. car frames).
    width/height: pixels, None until known (from the annotation or from opening the image).
    split: "train"/"val"/"test" when the source format defines it, else None.
    """

    path: Path
    label: str | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    box_labels: tuple[str, ...] = ()
    width: int | None = None
    height: int | None = None
    split: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        boxes = _as_boxes(self.boxes)
        object.__setattr__(self, "boxes", boxes)
        labels = tuple(self.box_labels)
        if not labels and len(boxes):
            labels = (self.label or "object",) * len(boxes)
        if len(labels) != len(boxes):
            raise ValueError(f"{self.source or self.path}: {len(boxes)} boxes but {len(labels)} box labels")
        object.__setattr__(self, "box_labels", labels)
        if not self.source:
            object.__setattr__(self, "source", str(self.path))

    @property
    def has_box(self) -> bool:
        return len(self.boxes) > 0

    def with_(self, **changes: object) -> Sample:
        """A copy with some fields changed (samples are immutable)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return (
            self.path == other.path
            and self.label == other.label
            and np.array_equal(self.boxes, other.boxes)
            and self.box_labels == other.box_labels
            and self.width == other.width
            and self.height == other.height
            and self.split == other.split
            and self.source == other.source
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass
class SampleTable:
    """All samples of a dataset plus what went wrong while reading it.

    classes: the ordered class list (index = class id used in training). Readers keep the
        dataset's own order when it has one (Stanford `cars_meta.mat`, COCO category ids),
        otherwise sorted names.
    problems: every problem found so far, reading and checking alike.
    """

    samples: list[Sample]
    classes: list[str]
    root: Path
    format: str
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    @property
    def has_boxes(self) -> bool:
        return any(s.has_box for s in self.samples)

    def class_counts(self) -> Counter[str]:
        return Counter(s.label for s in self.samples if s.label is not None)

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.ERROR]

    def excluded_paths(self) -> set[str]:
        """Paths of images that have an error-level problem and must not be used."""
        return {p.path for p in self.problems if p.severity is Severity.ERROR and p.path}

    def usable(self) -> SampleTable:
        """The samples without error-level problems; the problems travel along unchanged."""
        bad = self.excluded_paths()
        kept = [s for s in self.samples if str(s.path) not in bad]
        return SampleTable(kept, list(self.classes), self.root, self.format, list(self.problems))

    def with_samples(self, samples: Iterable[Sample]) -> SampleTable:
        return SampleTable(list(samples), list(self.classes), self.root, self.format, list(self.problems))

    def add_problems(self, problems: Iterable[Problem]) -> None:
        self.problems.extend(problems)

    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    # --- persistence: one CSV row per box-less sample or per sample with its boxes as JSON ---

    CSV_FIELDS: tuple[str, ...] = (
        "path",
        "label",
        "split",
        "width",
        "height",
        "boxes",
        "box_labels",
        "source",
    )

    def to_csv(self, path: Path, splits: Sequence[str] | None = None) -> None:
        """Write the table (optionally with an explicit split column) atomically.

        `boxes` is a JSON list of [x1, y1, x2, y2] in absolute pixels. A path whose name is not
        valid UTF-8 keeps its very bytes (surrogate escapes written back as the bytes they stand
        for), so that `from_csv` finds the same file: this CSV names files to open, it is no report.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.CSV_FIELDS)
            writer.writeheader()
            for i, sample in enumerate(self.samples):
                split = splits[i] if splits is not None else sample.split
                writer.writerow(
                    {
                        "path": str(sample.path),
                        "label": "" if sample.label is None else sample.label,
                        "split": split or "",
                        "width": "" if sample.width is None else sample.width,
                        "height": "" if sample.height is None else sample.height,
                        "boxes": json.dumps([[round(float(v), 3) for v in b] for b in sample.boxes]),
                        "box_labels": json.dumps(list(sample.box_labels)),
                        "source": sample.source,
                    }
                )
        tmp.replace(path)

    @classmethod
    def from_csv(
        cls, path: Path, classes: Sequence[str] | None = None, fmt: str = "samples-csv"
    ) -> SampleTable:
        """Read back a table written by `to_csv` (e.g. a saved split)."""
        path = Path(path)
        samples: list[Sample] = []
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            missing = {"path", "label", "split"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: not a carid samples CSV, missing column(s) {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                try:
                    samples.append(
                        Sample(
                            path=Path(row["path"]),
                            label=row["label"] or None,
                            boxes=json.loads(row.get("boxes") or "[]"),
                            box_labels=tuple(json.loads(row.get("box_labels") or "[]")),
                            width=int(row["width"]) if row.get("width") else None,
                            height=int(row["height"]) if row.get("height") else None,
                            split=row["split"] or None,
                            source=row.get("source") or f"{path.name} line {line}",
                        )
                    )
                except (ValueError, json.JSONDecodeError) as exc:
                    raise ValueError(f"{path} line {line}: {exc}") from exc
        names = list(classes) if classes is not None else sorted({s.label for s in samples if s.label})
        return cls(samples, names, path.parent, fmt)
