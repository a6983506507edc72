"""The Stanford Cars crops layout: ``labels.csv`` + ``images/`` read as a SampleTable, without cross-checks.

Crops: ``labels.csv`` (``fname,class_id,class_name``, class_id 1-based) and ``images/``; no boxes
(the crop is the box); classes ordered by class_id. What both Stanford readers need of the crops
(`stanford_crops` reads them, `_stanford_cross_check` compares them with the devkit's boxes for
either reader), so that neither reader imports the other.
"""

from __future__ import annotations

import csv
from pathlib import Path

from carid.data.readers._common import (
    class_name_conflict,
    csv_header,
    list_images,
    missing_listed_image,
    relative_path,
)
from carid.data.readers._registry import DatasetError
from carid.data.readers._stanford_devkit import BOX_FIELDS
from carid.data.samples import Problem, Sample, SampleTable, Severity

FORMAT = "stanford-crops"
CROP_LABELS = "labels.csv"
CROP_COLUMNS = ("fname", "class_id")


def labels_file(path: Path) -> Path | None:
    """The crops' labels.csv at `path` (the file or its folder), None when `path` is not a crops layout."""
    path = Path(path)
    file = path if path.is_file() else path / CROP_LABELS
    if not file.is_file() or file.suffix.lower() != ".csv":
        return None
    names = set(csv_header(file))
    if set(CROP_COLUMNS) <= names and not set(BOX_FIELDS) & names:
        return file
    return None


def sniff_stanford_crops(path: Path) -> int:
    """2 for a folder with ``labels.csv`` (fname,class_id[,class_name]) or that CSV itself."""
    return 2 if labels_file(Path(path)) is not None else 0


def read_crops_table(path: Path) -> SampleTable:
    """The crops at `path` (folder or labels.csv) as a SampleTable, with the reading problems only
    (`read_stanford_crops` without the cross-check)."""
    path = Path(path).resolve()
    labels = labels_file(path)
    if labels is None:
        candidate = path if path.is_file() else path / CROP_LABELS
        if not candidate.is_file():
            raise DatasetError(f"{path}: no {CROP_LABELS} found, not a Stanford Cars crops folder")
        have = set(csv_header(candidate))
        missing = [name for name in CROP_COLUMNS if name not in have]
        raise DatasetError(
            f"{candidate}: missing column(s) {', '.join(missing) or 'none'}; "
            "expected fname,class_id,class_name"
        )
    root = labels.parent
    image_folder = root / "images" if (root / "images").is_dir() else root
    problems: list[Problem] = []
    images = list_images(
        image_folder, root, problems, place="among the crops", skip=lambda file: file == labels
    )

    names_of_id: dict[int, str] = {}
    rows: list[tuple[str, int, str]] = []  # fname, class id, source
    seen: dict[str, str] = {}
    with labels.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
        has_names = "class_name" in reader.fieldnames
        for row in reader:
            source = f"{CROP_LABELS} line {reader.line_num}"
            fname = (row.get("fname") or "").strip()
            image = image_folder / fname
            if not fname:
                problems.append(Problem("bad_row", "empty fname", source, Severity.ERROR))
                continue
            try:
                class_id = int((row.get("class_id") or "").strip())
            except ValueError:
                problems.append(
                    Problem(
                        "bad_row",
                        f"{fname}: class_id {row.get('class_id')!r} is not an integer",
                        source,
                        Severity.ERROR,
                        str(image),
                    )
                )
                continue
            if fname in seen:
                problems.append(
                    Problem(
                        "duplicate_row",
                        f"{fname} is listed again (first at {seen[fname]}); ignored",
                        source,
                        Severity.WARNING,
                        str(image),
                    )
                )
                continue
            seen[fname] = source
            name = (row.get("class_name") or "").strip() if has_names else ""
            if name:
                subject = f"class_id {class_id} is named"
                conflict = class_name_conflict(
                    names_of_id, class_id, name, subject, "elsewhere", source, str(image)
                )
                if conflict is not None:
                    problems.append(conflict)
            rows.append((fname, class_id, source))
    if not has_names:
        problems.append(
            Problem(
                "no_class_names",
                "no class_name column: classes are named by their id ('class 1', ...)",
                CROP_LABELS,
                Severity.WARNING,
            )
        )
    class_ids = sorted({class_id for _, class_id, _ in rows})
    label_of = {class_id: names_of_id.get(class_id, f"class {class_id}") for class_id in class_ids}
    samples: list[Sample] = []
    for fname, class_id, source in rows:
        missing = missing_listed_image(fname, image_folder, images, "crop", source)
        if missing is not None:
            problems.append(missing)
            continue
        image = image_folder / fname
        samples.append(Sample(image, label_of[class_id], source=source))
    for name in sorted(set(images) - set(seen)):
        problems.append(
            Problem(
                "unlisted_image",
                f"not listed in {CROP_LABELS}, so it has no label; skipped",
                relative_path(images[name], root),
                Severity.WARNING,
                str(images[name]),
            )
        )
    classes = [label_of[class_id] for class_id in class_ids]
    table = SampleTable(samples, classes, root, FORMAT, problems)
    return table
