"""Stanford Cars devkit files: where they are, and their annotation rows as a SampleTable.

What both Stanford readers need (`stanford` reads the devkit, `stanford_crops` compares crops
with the devkit's boxes), so that neither reader imports the other.

Devkit: ``cars_meta.mat`` (``class_names``; class ids are 1-based indices into it),
``cars_train_annos.mat`` (split ``train``), ``cars_test_annos_withlabels.mat`` or the unlabelled
``cars_test_annos.mat`` (split ``test``), each an ``annotations`` struct with fields
``bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname``; boxes are 1-based inclusive pixel indices,
converted with `boxes.from_inclusive_1based`. The equivalent CSV layout has the same columns
(``fname,bbox_x1,bbox_y1,bbox_x2,bbox_y2[,class][,class_name][,split]``; also the header-less
6-column ``anno_train.csv`` / ``anno_test.csv`` of the Kaggle mirror) with class names from a
``class_name`` column, ``cars_meta.mat`` or a names file (``names.csv``, ``cars_meta.csv``, ...).
The .mat/.csv files are found in the given folder, in ``devkit/`` or in ``car_devkit/devkit/``;
photos in ``cars_train/`` and ``cars_test/`` beside the annotation files, one level up
(``devkit/../cars_train``) or nested as in the Kaggle archive (``cars_train/cars_train/``).
Each photo folder is listed once. A box with a coordinate below 1 is clipped at the photo's edge
(WARNING ``box_outside_image``); x2 < x1 or y2 < y1 is an ERROR ``degenerate_box``; boxes past
the right or bottom edge need the photo's size, which the checks measure. Rows of the unlabelled
test file have label None and box label "car".
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from carid.data.readers._common import (
    SPLIT_NAMES,
    check_boxes,
    csv_header,
    list_files,
    relative_path,
)
from carid.data.readers._registry import DatasetError
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.images import is_image_file

FORMAT = "stanford"
TRAIN_MAT = "cars_train_annos.mat"
TEST_MAT_LABELLED = "cars_test_annos_withlabels.mat"
TEST_MAT = "cars_test_annos.mat"
META_MAT = "cars_meta.mat"
SPLIT_OF_MAT = {TRAIN_MAT: "train", TEST_MAT_LABELLED: "test", TEST_MAT: "test"}
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
HEADERLESS_COLUMNS = ("fname", *BOX_FIELDS, "class")
NAMES_FILES = ("cars_meta.csv", "names.csv", "class_names.csv", "names.txt", "class_names.txt")
DEVKIT_SUBFOLDERS = ("", "devkit", "car_devkit/devkit")
PHOTO_FOLDERS = {"train": "cars_train", "test": "cars_test"}
SPLIT_ALIASES = {**SPLIT_NAMES, "training": "train", "testing": "test"}  # values of a ``split`` column


# --- locating the devkit -----------------------------------------------------------------------


def _stanford_csv_kind(file: Path) -> str | None:
    """ "header" for a CSV with fname + bbox columns, "headerless" for Kaggle's 6 columns, else None."""
    row = csv_header(file)
    if not row:
        return None
    if {"fname", *BOX_FIELDS} <= set(row):
        return "header"
    if len(row) == 6 and is_image_file(Path(row[0])):
        try:
            [int(float(cell)) for cell in row[1:]]
        except ValueError:
            return None
        return "headerless"
    return None


@dataclass(frozen=True)
class Devkit:
    """Where a devkit's annotation files are."""

    root: Path  # the folder the user named (sample paths are absolute anyway)
    folder: Path  # where the annotation files are
    files: tuple[Path, ...]  # annotation files, .mat or .csv
    ignored: tuple[Path, ...]  # annotation files not read (unlabelled test .mat beside the labelled one)


def locate_devkit(path: Path) -> Devkit | None:
    """The annotation files of the devkit at `path` (one such file, or a folder holding them
    directly, in devkit/ or in car_devkit/devkit/); None when there are none."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".mat" and path.name != META_MAT:
            return Devkit(path.parent, path.parent, (path,), ())
        if path.suffix.lower() == ".csv" and _stanford_csv_kind(path):
            return Devkit(path.parent, path.parent, (path,), ())
        return None
    for sub in DEVKIT_SUBFOLDERS:
        folder = path / sub if sub else path
        if not folder.is_dir():
            continue
        mats = [
            folder / name for name in (TRAIN_MAT, TEST_MAT_LABELLED, TEST_MAT) if (folder / name).is_file()
        ]
        ignored: list[Path] = []
        if (folder / TEST_MAT_LABELLED) in mats and (folder / TEST_MAT) in mats:
            mats.remove(folder / TEST_MAT)
            ignored.append(folder / TEST_MAT)
        if mats:
            return Devkit(path, folder, tuple(mats), tuple(ignored))
        csvs = sorted(
            file
            for name, file in list_files(folder).items()
            if name.lower().endswith(".csv") and _stanford_csv_kind(file)
        )
        if csvs:
            return Devkit(path, folder, tuple(csvs), ())
    return None


# --- reading annotation rows ------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One annotation row as read: values are still unparsed (parsing errors become problems)."""

    fname: str
    box_values: tuple[object, ...]  # bbox_x1, bbox_y1, bbox_x2, bbox_y2
    class_value: object | None
    class_name: str | None
    split: str | None
    source: str


def _scalar(value: object) -> object:
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one value, got an array of shape {value.shape}")
        return value.item()
    return value


def _split_from_name(file: Path) -> str | None:
    """train/test from an annotation file's name (cars_train_annos.mat, anno_test.csv, ...)."""
    if file.name in SPLIT_OF_MAT:
        return SPLIT_OF_MAT[file.name]
    stem = file.stem.lower()
    if "test" in stem:
        return "test"
    if "train" in stem:
        return "train"
    return None


def _read_mat_rows(file: Path) -> list[_Row]:
    try:
        data = scipy.io.loadmat(file, squeeze_me=True)
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, ... for non-MATLAB files
        raise DatasetError(f"{file}: cannot read as a MATLAB .mat file ({exc})") from exc
    if "annotations" not in data:
        raise DatasetError(f"{file}: no 'annotations' variable; not a Stanford Cars annotation file")
    table = np.atleast_1d(data["annotations"])
    fields = table.dtype.names or ()
    missing = [name for name in ("fname", *BOX_FIELDS) if name not in fields]
    if missing:
        raise DatasetError(f"{file}: the annotations struct has no field(s) {', '.join(missing)}")
    split = _split_from_name(file)
    columns = {name: table[name] for name in fields}
    has_class = "class" in fields
    rows: list[_Row] = []
    for index in range(len(table)):
        rows.append(
            _Row(
                fname=str(_scalar(columns["fname"][index])),
                box_values=tuple(columns[name][index] for name in BOX_FIELDS),
                class_value=columns["class"][index] if has_class else None,
                class_name=None,
                split=split,
                source=f"{file.name} row {index + 1}",
            )
        )
    return rows


def _read_csv_rows(file: Path, root: Path) -> list[_Row]:
    kind = _stanford_csv_kind(file)
    relative = relative_path(file, root)
    if kind is None:
        have = set(csv_header(file))
        missing = [name for name in ("fname", *BOX_FIELDS) if name not in have]
        raise DatasetError(f"{file}: not a Stanford Cars box CSV, missing column(s) {', '.join(missing)}")
    file_split = _split_from_name(file)
    rows: list[_Row] = []
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        if kind == "header":
            header = [cell.strip().lower() for cell in next(reader)]
        else:
            header = list(HEADERLESS_COLUMNS)
        position = {name: i for i, name in enumerate(header)}
        class_column = "class" if "class" in position else ("class_id" if "class_id" in position else None)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue

            def cell(name: str | None, cells: list[str] = cells) -> str | None:
                if name is None or name not in position or position[name] >= len(cells):
                    return None
                return cells[position[name]].strip()

            split_text = cell("split")
            split = SPLIT_ALIASES.get(split_text.lower(), split_text.lower()) if split_text else file_split
            rows.append(
                _Row(
                    fname=cell("fname") or "",
                    box_values=tuple(cell(name) for name in BOX_FIELDS),
                    class_value=cell(class_column),
                    class_name=cell("class_name") or None,
                    split=split,
                    source=f"{relative} line {reader.line_num}",
                )
            )
    return rows


def _read_class_names(folder: Path, root: Path) -> tuple[list[str] | None, str | None]:
    """Class names in class-id order from cars_meta.mat or a names file, and where they came from."""
    meta = folder / META_MAT
    if meta.is_file():
        try:
            names = np.atleast_1d(scipy.io.loadmat(meta, squeeze_me=True)["class_names"])
        except Exception as exc:  # a broken meta file is a broken devkit
            raise DatasetError(f"{meta}: cannot read class_names ({exc})") from exc
        return [str(_scalar(name)).strip() for name in names], META_MAT
    for name in NAMES_FILES:
        file = folder / name
        if not file.is_file():
            continue
        with file.open(newline="", encoding="utf-8-sig") as handle:
            lines = [line.rstrip("\r\n") for line in handle if line.strip()]
        if not lines:
            continue
        header = [cell.strip().lower() for cell in next(csv.reader([lines[0]]))]
        if "class_name" in header or "class_names" in header:
            name_at = header.index("class_name" if "class_name" in header else "class_names")
            id_at = header.index("class_id") if "class_id" in header else None
            rows = list(csv.reader(lines[1:]))
            if id_at is not None:
                try:
                    rows.sort(key=lambda cells: int(cells[id_at]))
                except (IndexError, ValueError) as exc:
                    raise DatasetError(f"{file}: a class_id is missing or not an integer ({exc})") from exc
            return [cells[name_at].strip() for cells in rows], relative_path(file, root)
        # one name per line (Kaggle names.csv); names may contain commas, so lines are not split
        return [line.strip().strip('"') for line in lines], relative_path(file, root)
    return None, None


# --- photo folders -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoFolder:
    """The folder a split's photos are looked up in, listed once."""

    folder: Path
    names: frozenset[str]  # image file names in it (listed once)
    exists: bool


def _photo_folder(devkit: Devkit, split: str | None) -> PhotoFolder:
    name = PHOTO_FOLDERS.get(split or "", "images")
    bases: list[Path] = []
    for base in (devkit.folder, devkit.folder.parent, devkit.root):
        if base not in bases:
            bases.append(base)
    candidates: list[Path] = []
    for base in bases:
        candidates += [base / name, base / name / name]
    if split not in PHOTO_FOLDERS:
        candidates.append(devkit.folder)
    first_existing: PhotoFolder | None = None
    for candidate in candidates:
        if not candidate.is_dir():
            continue
        names = frozenset(n for n, file in list_files(candidate).items() if is_image_file(file))
        found = PhotoFolder(candidate, names, True)
        if names:
            return found
        first_existing = first_existing or found
    return first_existing or PhotoFolder(devkit.folder / name, frozenset(), False)


# --- building the annotation table ---------------------------------------------------------------


@dataclass(frozen=True)
class ParsedDevkit:
    """A devkit read whole: its table, the photo folder of each split and which photos are there."""

    table: SampleTable  # every usable row, whether or not its photo is present
    folders: dict[str | None, PhotoFolder]
    devkit: Devkit
    present: list[bool]  # per sample of `table`: its photo is on disk


def read_devkit(path: Path) -> ParsedDevkit:
    """Every annotation row of the devkit at `path` (usable rows, present photo or not); DatasetError
    when there is no devkit."""
    path = Path(path).resolve()
    devkit = locate_devkit(path)
    if devkit is None:
        raise DatasetError(
            f"{path}: no Stanford Cars annotations found (looked for {TRAIN_MAT}, {TEST_MAT_LABELLED}, "
            f"{TEST_MAT} or a CSV with columns fname,{','.join(BOX_FIELDS)},class in it, devkit/ "
            "and car_devkit/devkit/)"
        )
    problems: list[Problem] = []
    for file in devkit.ignored:
        problems.append(
            Problem(
                "file_ignored",
                f"not read: {TEST_MAT_LABELLED} holds the same test rows with their labels",
                relative_path(file, devkit.root),
                Severity.INFO,
            )
        )
    rows: list[_Row] = []
    for file in devkit.files:
        rows += _read_mat_rows(file) if file.suffix.lower() == ".mat" else _read_csv_rows(file, devkit.root)

    names, names_source = _read_class_names(devkit.folder, devkit.root)
    names_from_rows: dict[int, str] = {}
    folders: dict[str | None, PhotoFolder] = {}
    pending: list[_Pending] = []  # made into samples once the class names are known
    seen: dict[tuple[str | None, str], str] = {}
    for row in rows:
        if not row.fname:
            problems.append(Problem("bad_row", "empty fname", row.source, Severity.ERROR))
            continue
        if row.split not in folders:
            folders[row.split] = _photo_folder(devkit, row.split)
        photo = folders[row.split].folder / row.fname
        path_text = str(photo)
        try:
            values = [float(_scalar(value)) for value in row.box_values]  # type: ignore[arg-type]
        except (TypeError, ValueError):
            shown = ", ".join(
                f"{name}={value!r}" for name, value in zip(BOX_FIELDS, row.box_values, strict=True)
            )
            problems.append(
                Problem(
                    "bad_row",
                    f"{row.fname}: box is not four numbers ({shown})",
                    row.source,
                    Severity.ERROR,
                    path_text,
                )
            )
            continue
        class_id: int | None = None
        if row.class_value is not None and str(row.class_value).strip() != "":
            try:
                number = float(_scalar(row.class_value))  # type: ignore[arg-type]
                if not number.is_integer():
                    raise ValueError
                class_id = int(number)
            except (TypeError, ValueError):
                problems.append(
                    Problem(
                        "bad_row",
                        f"{row.fname}: class {row.class_value!r} is not an integer class id",
                        row.source,
                        Severity.ERROR,
                        path_text,
                    )
                )
                continue
        key = (row.split, row.fname)
        if key in seen:
            problems.append(
                Problem(
                    "duplicate_row",
                    f"{row.fname} is annotated again (first at {seen[key]}); this row is ignored",
                    row.source,
                    Severity.WARNING,
                    path_text,
                )
            )
            continue
        seen[key] = row.source
        if class_id is not None and row.class_name:
            known = names_from_rows.setdefault(class_id, row.class_name)
            if known != row.class_name:
                problems.append(
                    Problem(
                        "inconsistent_class_name",
                        f"class {class_id} is named {row.class_name!r} here but {known!r} elsewhere",
                        row.source,
                        Severity.WARNING,
                        path_text,
                    )
                )
        x1, y1, x2, y2 = values
        box = np.array([[x1 - 1.0, y1 - 1.0, x2, y2]])  # boxes.from_inclusive_1based, without its overhead
        if not (x1 >= 1.0 and y1 >= 1.0 and x2 >= x1 and y2 >= y1):  # also catches NaN
            checked = check_boxes(box, None, None, source=row.source, path=photo)
            problems.extend(checked.problems)
            if not checked.usable:
                continue
            box = checked.boxes
        folder = folders[row.split]
        present = row.fname in folder.names if "/" not in row.fname else photo.is_file()
        pending.append(_Pending(photo, box, row.split, row.source, class_id, present))

    class_ids = sorted({item.class_id for item in pending if item.class_id is not None})
    classes, label_of = _class_labels(names, names_from_rows, class_ids, devkit, problems)
    samples: list[Sample] = []
    present: list[bool] = []
    for item in pending:
        label = None if item.class_id is None else label_of(item.class_id)
        if item.class_id is not None and label is None:
            problems.append(
                Problem(
                    "unknown_class",
                    f"{item.photo.name}: class id {item.class_id} has no name "
                    f"(1..{len(classes)} in {names_source})",
                    item.source,
                    Severity.ERROR,
                    str(item.photo),
                )
            )
            continue
        box_labels = (label,) if label is not None else ("car",)
        samples.append(Sample(item.photo, label, item.box, box_labels, split=item.split, source=item.source))
        present.append(item.present)
    table = SampleTable(samples, classes, devkit.root, FORMAT, problems)
    return ParsedDevkit(table, folders, devkit, present)


@dataclass(frozen=True)
class _Pending:
    """A parsed annotation row waiting for its label."""

    photo: Path
    box: np.ndarray  # [1, 4] xyxy pixels
    split: str | None
    source: str
    class_id: int | None
    present: bool  # the photo file is in its folder


def _class_labels(
    names: list[str] | None,
    names_from_rows: dict[int, str],
    class_ids: list[int],
    devkit: Devkit,
    problems: list[Problem],
) -> tuple[list[str], Callable[[int], str | None]]:
    """(classes in class-id order, class id -> label, or None for an id with no name)."""
    if names is not None:

        def from_meta(class_id: int) -> str | None:
            return names[class_id - 1] if 1 <= class_id <= len(names) else None

        return list(names), from_meta
    if names_from_rows:
        ordered = sorted(names_from_rows)
        return [names_from_rows[i] for i in ordered], names_from_rows.get
    if class_ids:
        problems.append(
            Problem(
                "no_class_names",
                f"no {META_MAT}, names file or class_name column: "
                "classes are named by their id ('class 1', ...)",
                relative_path(devkit.folder, devkit.root) or ".",
                Severity.WARNING,
            )
        )
    return [f"class {class_id}" for class_id in class_ids], lambda class_id: f"class {class_id}"


def read_stanford_annotations(path: Path) -> SampleTable:
    """Every usable annotation row of a devkit, whether or not its photo is present.

    Sample paths are where each photo is expected; nothing is opened or checked on disk except
    listing the photo folders. Used for cross-checks and by `read_stanford`.
    """
    return read_devkit(path).table
