"""CSV box reader (format name ``csv-boxes``): ``image_id,xmin,ymin,xmax,ymax[,label]``, one row per box.

Coordinates are float pixels, already xyxy in carid's convention. An image may have several rows
(several boxes); a row whose four coordinates are empty lists an image with no box. Images are
in ``images/`` beside the CSV, else in the CSV's folder; a folder may hold several box CSVs
(``train.csv``, ``val.csv``, ``test.csv`` give the split, other names none).

Images in the image folder that no CSV lists are samples without box too (INFO ``no_box``, like
the listed ones without box): in a detection set a frame with nothing to find is data. Listed
images whose file is absent get a ``missing_file`` ERROR and stay out of the table; so does an
image with a row that cannot be read (a non-numeric or half-empty coordinate: ERROR ``bad_row``
with the line), since dropping only that box would turn a car into background.

Labels: with a ``label`` / ``class`` / ``class_name`` / ``category`` column, box labels come
from it and the image label is the shared class or the largest box's (`_common.label_of_largest_box`).
Without one the image label is None (the table has no classes: a localization-only set) and each
box is labelled `box_label`, "car" by default since every box carid is given is a car (the shared
car-frames set says so).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from carid.data.readers._common import (
    SPLIT_NAMES,
    check_boxes,
    csv_header,
    label_of_largest_box,
    list_files,
    list_images,
    missing_listed_image,
    relative_path,
)
from carid.data.readers._registry import DatasetError, register_reader
from carid.data.samples import Problem, Sample, SampleTable, Severity

FORMAT = "csv-boxes"
IMAGE_COLUMNS = ("image_id", "image", "filename", "file_name", "image_name")
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
LABEL_COLUMNS = ("label", "class", "class_name", "category")
DEFAULT_BOX_LABEL = "car"


def _missing_columns(header: list[str]) -> list[str]:
    missing = [] if any(name in header for name in IMAGE_COLUMNS) else ["image_id"]
    return missing + [name for name in BOX_COLUMNS if name not in header]


def _meant_as_box_csv(header: list[str]) -> bool:
    """A header with two box columns, or an image column and one: a box CSV, complete or not."""
    boxes = sum(name in header for name in BOX_COLUMNS)
    return boxes >= 2 or (boxes >= 1 and any(name in header for name in IMAGE_COLUMNS))


def _all_csvs(path: Path) -> list[Path]:
    """`path` when it is a CSV file, the CSV files directly in it when it is a folder, sorted."""
    if path.is_file():
        return [path] if path.suffix.lower() == ".csv" else []
    return sorted(file for name, file in list_files(path).items() if name.lower().endswith(".csv"))


def _box_csvs(path: Path) -> list[Path]:
    return [file for file in _all_csvs(path) if not _missing_columns(csv_header(file))]


def _incomplete_box_csvs(path: Path) -> list[Path]:
    """The CSVs meant as box CSVs that miss a column."""
    return [
        file
        for file in _all_csvs(path)
        if _missing_columns(header := csv_header(file)) and _meant_as_box_csv(header)
    ]


def sniff_csv_boxes(path: Path) -> int:
    """2 for a CSV with image_id,xmin,ymin,xmax,ymax columns, or a folder holding one; 2 also for a
    CSV meant as one that misses a column, so that reading it says which (rather than the folder
    being taken for a class-per-folder tree)."""
    path = Path(path)
    return 2 if _box_csvs(path) or _incomplete_box_csvs(path) else 0


def _incomplete_problems(path: Path, files: list[Path], root: Path) -> list[Problem]:
    """ERROR ``bad_csv`` for each CSV in the folder meant as a box CSV but missing a column."""
    if not path.is_dir():
        return []
    return [
        Problem(
            "bad_csv",
            f"missing column(s) {', '.join(_missing_columns(csv_header(file)))}; a box CSV needs "
            f"image_id,{','.join(BOX_COLUMNS)} (optional label); not read",
            relative_path(file, root),
            Severity.ERROR,
        )
        for file in _incomplete_box_csvs(path)
        if file not in files
    ]


@dataclass
class _Listed:
    """What the CSV rows say about one image."""

    source: str
    split: str | None
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    broken: bool = False


def _csv_files(path: Path) -> list[Path]:
    """The box CSVs to read; DatasetError naming the file and missing columns when there are none."""
    if path.is_file():
        missing = _missing_columns(csv_header(path))
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; a box CSV needs "
                f"image_id,{','.join(BOX_COLUMNS)} (optional label)"
            )
        return [path]
    files = _box_csvs(path)
    if files:
        return files
    others = _all_csvs(path) if path.is_dir() else []
    if others:
        details = "; ".join(f"{f.name} lacks {', '.join(_missing_columns(csv_header(f)))}" for f in others)
        raise DatasetError(f"{path}: no box CSV with image_id,{','.join(BOX_COLUMNS)} columns ({details})")
    raise DatasetError(
        f"{path}: no CSV file found; expected e.g. boxes.csv with image_id,{','.join(BOX_COLUMNS)}"
    )


def _read_rows(
    file: Path, root: Path, listed: dict[str, _Listed], problems: list[Problem], image_folder: Path
) -> bool:
    """Read one CSV into `listed`; returns whether it has a label column."""
    relative = relative_path(file, root)
    split = SPLIT_NAMES.get(file.stem.lower())
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [cell.strip().lower() for cell in next(reader)]
        position = {name: i for i, name in enumerate(header)}
        image_column = next(name for name in IMAGE_COLUMNS if name in position)
        label_column = next((name for name in LABEL_COLUMNS if name in position), None)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            source = f"{relative} line {reader.line_num}"
            values = {name: cells[i].strip() if i < len(cells) else "" for name, i in position.items()}
            image_id = values[image_column]
            if not image_id:
                problems.append(Problem("bad_row", f"empty {image_column}", source, Severity.ERROR))
                continue
            image_path = str(image_folder / image_id)
            entry = listed.get(image_id)
            if entry is None:
                entry = listed[image_id] = _Listed(source, split)
            elif entry.split != split:
                problems.append(
                    Problem(
                        "conflicting_split",
                        f"{image_id} is also listed for split {entry.split!r} ({entry.source}); kept there",
                        source,
                        Severity.WARNING,
                        image_path,
                    )
                )
            coordinates = [values[name] for name in BOX_COLUMNS]
            if not any(coordinates):
                continue  # an image listed with no box
            try:
                box = [float(value) for value in coordinates]
            except ValueError:
                shown = ", ".join(f"{n}={v!r}" for n, v in zip(BOX_COLUMNS, coordinates, strict=True))
                problems.append(
                    Problem(
                        "bad_row",
                        f"{image_id}: coordinates are not four numbers ({shown}); the image is excluded",
                        source,
                        Severity.ERROR,
                        image_path,
                    )
                )
                entry.broken = True
                continue
            label = values[label_column] if label_column else ""
            if label_column and not label:
                problems.append(
                    Problem(
                        "missing_field",
                        f"{image_id}: empty {label_column}; the box is labelled {DEFAULT_BOX_LABEL!r}",
                        source,
                        Severity.WARNING,
                        image_path,
                    )
                )
            entry.boxes.append(box)
            entry.labels.append(label or DEFAULT_BOX_LABEL)
    return label_column is not None


@register_reader(FORMAT, "CSV of boxes: image_id,xmin,ymin,xmax,ymax[,label] + images/", sniff_csv_boxes)
def read_csv_boxes(path: Path, *, box_label: str = DEFAULT_BOX_LABEL) -> SampleTable:
    """Read a box CSV (or a folder of them) into a SampleTable.

    box_label: the label of every box when the CSV has no label column.
    """
    path = Path(path).resolve()
    files = _csv_files(path)
    root = files[0].parent
    image_folder = root / "images" if (root / "images").is_dir() else root
    problems = _incomplete_problems(path, files, root)
    images = list_images(
        image_folder,
        root,
        problems,
        skip=lambda file: image_folder == root and file.suffix.lower() == ".csv",  # the box CSVs
    )

    listed: dict[str, _Listed] = {}
    has_labels = False
    for file in files:
        has_labels = _read_rows(file, root, listed, problems, image_folder) or has_labels

    samples: list[Sample] = []
    for image_id, entry in listed.items():
        missing = missing_listed_image(image_id, image_folder, images, "image", entry.source)
        if missing is not None:
            problems.append(missing)
            continue
        image = image_folder / image_id
        if entry.broken:
            continue
        labels = entry.labels if has_labels else [box_label] * len(entry.boxes)
        checked = check_boxes(entry.boxes, None, None, source=entry.source, path=image, labels=labels)
        problems.extend(checked.problems)
        if not checked.usable:
            continue
        label = None
        if has_labels:
            label, label_problems = label_of_largest_box(
                labels, checked.boxes, source=entry.source, path=image
            )
            problems.extend(label_problems)
        if not labels:
            problems.append(Problem("no_box", "listed without box", entry.source, Severity.INFO, str(image)))
        samples.append(
            Sample(
                image,
                label,
                boxes=checked.boxes,
                box_labels=tuple(labels),
                split=entry.split,
                source=entry.source,
            )
        )
    csv_names = ", ".join(file.name for file in files)
    for name, image in images.items():
        if name in listed:
            continue
        source = relative_path(image, root)
        problems.append(
            Problem("no_box", f"not in {csv_names}: an image without box", source, Severity.INFO, str(image))
        )
        samples.append(Sample(image, None, source=source))
    classes = sorted({s.label for s in samples if s.label is not None}) if has_labels else []
    return SampleTable(samples, classes, root, FORMAT, problems)
