"""YOLO txt reader (format name ``yolo``): ``images/`` + ``labels/``, one ``cls cx cy w h`` line per box.

Layouts: ``images/`` + ``labels/``; ``images/<split>/`` + ``labels/<split>/``; or
``<split>/images/`` + ``<split>/labels/`` (Roboflow), with split folders train / val / valid / test.
The label file of ``images/a/x.jpg`` is ``labels/a/x.txt``; an image without one (or with an
empty one) is a sample without box (INFO ``no_box``), as YOLO treats it: a background image.

Class names come from ``data.yaml`` / ``dataset.yaml`` (``names:`` as a list or an id -> name
mapping), else ``classes.txt`` / ``obj.names`` (one per line); without them classes are
``class 0``, ``class 1``, ... (WARNING ``no_class_names``).

Coordinates are fractions of the image size, so converting them to pixels needs the size: this
reader reads it from the image header (Pillow open without decoding, via `images.probe_image`,
which applies EXIF orientation as YOLO tools do). It is the one reader that opens images, and only
those with boxes; an unreadable header is an ERROR naming the image. A malformed line or a class
id out of range is an ERROR naming the label file and line; like any ERROR it keeps the image out
of the table (its other boxes alone would mislabel it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from carid import boxes as box_ops
from carid.data.readers._common import (
    SPLIT_NAMES,
    check_boxes,
    label_of_largest_box,
    list_files,
    list_subfolders,
    non_image_file,
    relative_path,
)
from carid.data.readers._registry import DatasetError, register_reader
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.images import ImageError, is_image_file, probe_image

FORMAT = "yolo"
YAML_FILES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
NAMES_FILES = ("classes.txt", "obj.names", "classes.names")


@dataclass(frozen=True)
class _Part:
    """One images folder and its labels folder (the whole set, or one split)."""

    split: str | None
    images: Path
    labels: Path


def _parts(root: Path) -> list[_Part]:
    images, labels = root / "images", root / "labels"
    if images.is_dir() and labels.is_dir():
        splits = [f for f in list_subfolders(images) if f.name.lower() in SPLIT_NAMES]
        if splits:
            return [_Part(SPLIT_NAMES[f.name.lower()], f, labels / f.name) for f in splits]
        return [_Part(None, images, labels)]
    parts = []
    for folder in list_subfolders(root):
        if (
            folder.name.lower() in SPLIT_NAMES
            and (folder / "images").is_dir()
            and (folder / "labels").is_dir()
        ):
            parts.append(_Part(SPLIT_NAMES[folder.name.lower()], folder / "images", folder / "labels"))
    return parts


def _holds_txt(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(e.name.endswith(".txt") for e in entries)


def sniff_yolo(path: Path) -> int:
    """2 for images/ + labels/ folders (whole or per split) holding .txt files or beside a names file."""
    path = Path(path)
    if not path.is_dir():
        return 0
    parts = _parts(path)
    if not parts:
        return 0
    if any(_holds_txt(part.labels) for part in parts):
        return 2
    return 2 if any((path / name).is_file() for name in (*YAML_FILES, *NAMES_FILES)) else 0


def _class_names(root: Path, problems: list[Problem]) -> list[str] | None:
    for name in YAML_FILES:
        file = root / name
        if not file.is_file():
            continue
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            problems.append(Problem("bad_annotation", f"cannot parse ({exc})", name, Severity.WARNING))
            continue
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, list):
            return [str(n) for n in names]
        if isinstance(names, dict):
            try:
                by_id = {int(k): str(v) for k, v in names.items()}
            except (TypeError, ValueError):
                by_id = {}
            if by_id and sorted(by_id) == list(range(len(by_id))):
                return [by_id[i] for i in range(len(by_id))]
        problems.append(
            Problem(
                "bad_annotation",
                "no usable 'names:' (a list, or ids 0..n-1 -> names)",
                name,
                Severity.WARNING,
            )
        )
    for name in NAMES_FILES:
        file = root / name
        if file.is_file():
            return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


@dataclass(frozen=True)
class _Lines:
    """The parsed lines of one label file: class ids [N], normalized cxcywh [N, 4]."""

    class_ids: list[int]
    boxes: np.ndarray
    broken: bool


def _read_label_file(
    file: Path, root: Path, image: Path, names: list[str] | None, problems: list[Problem]
) -> _Lines:
    relative = relative_path(file, root)
    class_ids: list[int] = []
    values: list[list[float]] = []
    broken = False
    text = file.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        source = f"{relative} line {number}"
        try:
            if len(tokens) != 5:
                raise ValueError(f"{len(tokens)} values")
            class_id = int(tokens[0])
            numbers = [float(t) for t in tokens[1:]]
            if not all(np.isfinite(numbers)):
                raise ValueError("not finite")
        except ValueError:
            problems.append(
                Problem(
                    "bad_label_line",
                    f"expected 'class cx cy w h' (an integer and four numbers), got {line.strip()!r}",
                    source,
                    Severity.ERROR,
                    str(image),
                )
            )
            broken = True
            continue
        if class_id < 0 or (names is not None and class_id >= len(names)):
            known = f"0..{len(names) - 1}" if names is not None else "0 or more"
            problems.append(
                Problem(
                    "unknown_class",
                    f"class id {class_id} is not in {known}",
                    source,
                    Severity.ERROR,
                    str(image),
                )
            )
            broken = True
            continue
        class_ids.append(class_id)
        values.append(numbers)
    return _Lines(class_ids, box_ops.as_boxes(values), broken)


def _label_files(folder: Path) -> dict[str, Path]:
    return {f.stem: f for n, f in list_files(folder).items() if n.endswith(".txt")}


def _report_unread_folders(root: Path, parts: list[_Part], problems: list[Problem]) -> None:
    """Sub-folders of the image folders that are not splits are not read: say so."""
    read = {part.images for part in parts}
    containers = {part.images for part in parts}
    if any(part.images.parent == root / "images" for part in parts):  # the images/<split>/ layout
        containers.add(root / "images")
    for container in sorted(containers):
        for folder in list_subfolders(container):
            if folder not in read:
                problems.append(
                    Problem(
                        "unexpected_folder",
                        "sub-folder of an image folder is not read (YOLO images sit directly in "
                        "images/ or images/<split>/)",
                        relative_path(folder, root),
                        Severity.WARNING,
                    )
                )


@register_reader(
    FORMAT, "YOLO txt: images/ + labels/ (cls cx cy w h, normalized) + data.yaml names", sniff_yolo
)
def read_yolo(path: Path) -> SampleTable:
    """Read a YOLO dataset folder into a SampleTable."""
    root = Path(path).resolve()
    parts = _parts(root) if root.is_dir() else []
    if not parts:
        raise DatasetError(
            f"{path}: no images/ and labels/ folders (or <split>/images + <split>/labels) found"
        )
    problems: list[Problem] = []
    names = _class_names(root, problems)
    if names is None:
        problems.append(
            Problem(
                "no_class_names",
                f"no {', '.join(YAML_FILES[:2])} or {', '.join(NAMES_FILES[:2])}: "
                "classes are named by id ('class 0', ...)",
                ".",
                Severity.WARNING,
            )
        )
    _report_unread_folders(root, parts, problems)
    pending: list[tuple[Path, _Part, Path | None, _Lines | None, str]] = []
    seen_ids: set[int] = set()
    for part in parts:
        labels = _label_files(part.labels)
        used: set[str] = set()
        for _name, image in sorted(list_files(part.images).items()):
            if not is_image_file(image):
                problems.append(non_image_file(image, root, "in the image folder"))
                continue
            label_file = labels.get(image.stem)
            if label_file is None:
                pending.append((image, part, None, None, relative_path(image, root)))
                continue
            used.add(image.stem)
            lines = _read_label_file(label_file, root, image, names, problems)
            seen_ids.update(lines.class_ids)
            pending.append((image, part, label_file, lines, relative_path(label_file, root)))
        for stem in sorted(set(labels) - used):
            problems.append(
                Problem(
                    "orphan_label",
                    f"no image named {stem}.* in {relative_path(part.images, root)}/ for this label file",
                    relative_path(labels[stem], root),
                    Severity.WARNING,
                )
            )
    classes = names if names is not None else [f"class {i}" for i in range(max(seen_ids, default=-1) + 1)]

    samples: list[Sample] = []
    for image, part, label_file, lines, source in pending:
        if lines is not None and lines.broken:
            continue
        if lines is None or not lines.class_ids:
            why = "no label file" if label_file is None else "empty label file"
            problems.append(
                Problem("no_box", f"{why}: a sample without box", source, Severity.INFO, str(image))
            )
            samples.append(Sample(image, None, split=part.split, source=source))
            continue
        try:
            info = probe_image(image, name=relative_path(image, root), decode=False)
        except ImageError as exc:
            problems.append(
                Problem(
                    exc.kind,
                    f"cannot read the image size to place its boxes ({exc.reason})",
                    source,
                    Severity.ERROR,
                    str(image),
                )
            )
            continue
        box_labels = [classes[i] for i in lines.class_ids]
        pixels = box_ops.from_cxcywh_normalized(lines.boxes, info.width, info.height)
        checked = check_boxes(pixels, info.width, info.height, source=source, path=image, labels=box_labels)
        problems.extend(checked.problems)
        if not checked.usable:
            continue
        label, label_problems = label_of_largest_box(box_labels, checked.boxes, source=source, path=image)
        problems.extend(label_problems)
        samples.append(
            Sample(
                image,
                label,
                boxes=checked.boxes,
                box_labels=tuple(box_labels),
                width=info.width,
                height=info.height,
                split=part.split,
                source=source,
            )
        )
    return SampleTable(samples, list(classes), root, FORMAT, problems)
