"""COCO JSON reader (format name ``coco``): ``images``, ``annotations`` (bbox [x, y, w, h]), ``categories``.

Where the JSON files are: the given .json file, or the folder's ``*.json``, ``annotations/*.json``,
or ``{train,val,valid,test}/*.json`` (the Roboflow export, ``_annotations.coco.json``). The split
comes from the split folder or the file name (``instances_val2017.json`` -> val), else None.
Images are found by their ``file_name`` relative to the JSON's folder, its ``images/``, the
folder above, or ``<above>/<name>`` and ``<above>/images/<name>`` where ``<name>`` is the JSON's
stem without ``instances_`` (the COCO layout ``annotations/instances_train2017.json`` +
``train2017/``). Each candidate folder is listed once.

Boxes are converted with `boxes.from_xywh` and checked against the image size the JSON gives
(`_common.check_boxes`: clipped with a WARNING, an empty box excludes the image). ``iscrowd`` boxes
mark a crowd region, not one object: they are left out with a WARNING per image. Classes are the
category names in category-id order; the image label is the category of its only class or of its
largest box (WARNING ``mixed_object_classes``). Images without annotations are samples without
box (INFO ``no_box``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from carid import boxes as box_ops
from carid.data.readers._common import (
    SPLIT_NAMES,
    check_boxes,
    class_name_conflict,
    label_of_largest_box,
    list_files,
    relative_path,
)
from carid.data.readers._registry import DatasetError, register_reader
from carid.data.samples import Problem, Sample, SampleTable, Severity

FORMAT = "coco"
SNIFF_BYTES = 1 << 16  # sniff reads the start of a JSON file, never the whole of it


def _looks_like_coco(file: Path) -> bool:
    try:
        with file.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return False
    return b'"images"' in head and (b'"annotations"' in head or b'"categories"' in head)


def _json_files(path: Path) -> list[Path]:
    """COCO JSON files for `path` (see the module docstring for where they are looked for)."""
    if path.is_file():
        return [path] if path.suffix.lower() == ".json" and _looks_like_coco(path) else []
    if not path.is_dir():
        return []
    folders = [path, path / "annotations"] + [path / name for name in SPLIT_NAMES]
    found: list[Path] = []
    for folder in folders:
        found += sorted(
            f for n, f in list_files(folder).items() if n.lower().endswith(".json") and _looks_like_coco(f)
        )
    return found


def sniff_coco(path: Path) -> int:
    """2 for a COCO JSON file (images + annotations/categories keys) or a folder holding one."""
    return 2 if _json_files(Path(path)) else 0


def _split_of(file: Path) -> str | None:
    folder = file.parent.name.lower()
    if folder in SPLIT_NAMES:
        return SPLIT_NAMES[folder]
    stem = file.stem.lower()
    for word, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if word in stem:
            return split
    return None


@dataclass
class _ImageFinder:
    """Finds an image file name among candidate folders, listing each folder once."""

    folders: list[Path]
    listings: dict[Path, frozenset[str]]

    @classmethod
    def for_json(cls, file: Path) -> _ImageFinder:
        here, above = file.parent, file.parent.parent
        name = file.stem.removeprefix("instances_")
        folders: list[Path] = []
        for folder in (here, here / "images", above, above / "images", above / name, above / "images" / name):
            if folder not in folders:
                folders.append(folder)
        return cls(folders, {})

    def find(self, file_name: str) -> Path | None:
        relative = Path(file_name)
        for folder in self.folders:
            if len(relative.parts) > 1:
                if (folder / relative).is_file():
                    return folder / relative
                continue
            if folder not in self.listings:
                self.listings[folder] = frozenset(list_files(folder))
            if file_name in self.listings[folder]:
                return folder / file_name
        return None


def _load(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{file}: cannot read as JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{file}: no 'images' list; not a COCO annotation file")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise DatasetError(f"{file}: {key!r} is not a list")
    return data


def _read_file(
    file: Path, root: Path, categories: dict[int, str], samples: list[Sample], problems: list[Problem]
) -> None:
    data = _load(file)
    relative = relative_path(file, root)
    split = _split_of(file)
    for category in data.get("categories", []):
        try:
            category_id, name = int(category["id"]), str(category["name"])
        except (KeyError, TypeError, ValueError):
            problems.append(
                Problem(
                    "bad_annotation",
                    f"category {category!r} lacks an integer id or a name; skipped",
                    relative,
                    Severity.WARNING,
                )
            )
            continue
        subject = f"category {category_id} is"
        conflict = class_name_conflict(categories, category_id, name, subject, "in an earlier file", relative)
        if conflict is not None:
            problems.append(conflict)

    by_image: dict[object, list[dict]] = defaultdict(list)
    image_ids = {image.get("id") for image in data["images"] if isinstance(image, dict)}
    for number, annotation in enumerate(data.get("annotations", []), start=1):
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        if image_id not in image_ids:
            annotation_id = annotation.get("id") if isinstance(annotation, dict) else "?"
            problems.append(
                Problem(
                    "bad_annotation",
                    f"annotation {number} (id {annotation_id}) "
                    f"refers to image_id {image_id!r}, which is not in 'images'; skipped",
                    relative,
                    Severity.WARNING,
                )
            )
            continue
        by_image[image_id].append(annotation)

    finder = _ImageFinder.for_json(file)
    for number, image in enumerate(data["images"], start=1):
        if not isinstance(image, dict) or not image.get("file_name"):
            problems.append(Problem("bad_annotation", f"image entry {number} has no file_name", relative))
            continue
        file_name = str(image["file_name"])
        source = f"{relative} image id {image.get('id')}"
        path = finder.find(file_name)
        if path is None:
            expected = finder.folders[0] / file_name
            problems.append(
                Problem(
                    "missing_file",
                    f"image {file_name} not found beside {file.name} "
                    f"(looked in {', '.join(str(f) for f in finder.folders)})",
                    source,
                    Severity.ERROR,
                    str(expected),
                )
            )
            continue
        try:
            width = int(image["width"]) if image.get("width") else None
            height = int(image["height"]) if image.get("height") else None
        except (TypeError, ValueError):
            width = height = None
        if width is None or height is None:
            width = height = None
            problems.append(
                Problem(
                    "missing_field",
                    "no usable width/height; the image size is unknown",
                    source,
                    Severity.WARNING,
                    str(path),
                )
            )
        sample = _sample(
            path, width, height, split, source, by_image.get(image.get("id"), []), categories, problems
        )
        if sample is not None:
            samples.append(sample)


def _sample(
    path: Path,
    width: int | None,
    height: int | None,
    split: str | None,
    source: str,
    annotations: list[dict],
    categories: dict[int, str],
    problems: list[Problem],
) -> Sample | None:
    raw: list[list[float]] = []
    labels: list[str] = []
    crowd = 0
    for annotation in annotations:
        where = f"{source} annotation id {annotation.get('id')}"
        if annotation.get("iscrowd"):
            crowd += 1
            continue
        try:
            values = [float(v) for v in annotation["bbox"]]
            if len(values) != 4:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            problems.append(
                Problem(
                    "bad_annotation",
                    f"bbox {annotation.get('bbox')!r} is not [x, y, width, height]",
                    where,
                    Severity.ERROR,
                    str(path),
                )
            )
            return None
        category = categories.get(annotation.get("category_id"))  # type: ignore[arg-type]
        if category is None:
            problems.append(
                Problem(
                    "unknown_class",
                    f"category_id {annotation.get('category_id')!r} is not in 'categories'",
                    where,
                    Severity.ERROR,
                    str(path),
                )
            )
            return None
        raw.append(values)
        labels.append(category)
    if crowd:
        problems.append(
            Problem(
                "crowd_box",
                f"{crowd} iscrowd annotation(s) left out (a crowd region is not one object)",
                source,
                Severity.WARNING,
                str(path),
            )
        )
    boxes = box_ops.from_xywh(raw) if raw else box_ops.as_boxes([])
    checked = check_boxes(boxes, width, height, source=source, path=path, labels=labels)
    problems.extend(checked.problems)
    if not checked.usable:
        return None
    label, label_problems = label_of_largest_box(labels, checked.boxes, source=source, path=path)
    problems.extend(label_problems)
    if not labels:
        problems.append(
            Problem("no_box", "no annotation: a sample without box", source, Severity.INFO, str(path))
        )
    return Sample(
        path,
        label,
        boxes=checked.boxes,
        box_labels=tuple(labels),
        width=width,
        height=height,
        split=split,
        source=source,
    )


@register_reader(FORMAT, "COCO JSON: images + annotations (bbox x,y,w,h) + categories", sniff_coco)
def read_coco(path: Path) -> SampleTable:
    """Read one COCO JSON file, or every COCO JSON of a folder, into a SampleTable."""
    path = Path(path).resolve()
    files = _json_files(path)
    if not files:
        if path.is_file() and path.suffix.lower() == ".json":
            _load(path)  # raises the precise reason
        raise DatasetError(f"{path}: no COCO JSON file (with 'images' and 'annotations') found")
    root = path if path.is_dir() else path.parent
    categories: dict[int, str] = {}
    samples: list[Sample] = []
    problems: list[Problem] = []
    for file in files:
        _read_file(file, root, categories, samples, problems)
    classes = [categories[key] for key in sorted(categories)]
    return SampleTable(samples, classes, root, FORMAT, problems)
