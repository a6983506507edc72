"""What the dataset readers share: box sanity checks, the image label of a multi-object image,
one-pass folder listings (that never raise: unreadable folders, link loops and entries that are not
regular files become problems), paths relative to the dataset root and the split folder names.

Private to `carid.data.readers`: each reader module imports what it needs from here, and the
tests of these helpers live in ``tests/data/readers/test_common.py``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carid import boxes as box_ops
from carid.data.listing import Skipped, scan_folder
from carid.data.samples import Problem, Severity
from carid.images import is_image_file

# Split folder / file names (any case) -> carid's split name.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


# --- paths and folder listings ----------------------------------------------------------------


def relative_path(path: Path, root: Path) -> str:
    """`path` relative to the dataset `root` in POSIX form (``images/a.jpg``), else `path` in full."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# Severity of each kind of skipped entry (`carid.data.listing`): a folder that cannot be listed
# loses data; a link loop or a FIFO holds none.
SKIPPED_SEVERITY = {
    "unreadable_folder": Severity.ERROR,
    "unreadable_entry": Severity.ERROR,
    "symlink_loop": Severity.WARNING,
    "not_a_regular_file": Severity.WARNING,
}


def skipped_problem(skipped: Skipped, root: Path) -> Problem:
    """The problem of an entry a listing skipped, named by its path relative to `root`."""
    is_file = skipped.kind in ("not_a_regular_file", "unreadable_entry")
    return Problem(
        skipped.kind,
        f"{skipped.reason}; skipped",
        relative_path(skipped.path, root),
        SKIPPED_SEVERITY.get(skipped.kind, Severity.WARNING),
        str(skipped.path) if is_file else None,
    )


def list_files(
    folder: Path, problems: list[Problem] | None = None, root: Path | None = None
) -> dict[str, Path]:
    """File name -> path for the regular files directly in `folder` (one listing, no stat per file).

    problems: when given, what could not be listed (the folder itself, link loops, FIFOs, ...) is
        appended to it, named relative to `root` (default `folder`). Never raises.
    """
    if not folder.is_dir():
        return {}
    listing = scan_folder(folder)
    if problems is not None:
        problems.extend(skipped_problem(item, root or folder) for item in listing.skipped)
    return {file.name: file for file in listing.files}


def list_subfolders(folder: Path) -> list[Path]:
    """The folders directly in `folder`, sorted, hidden ones left out; [] when it is not a folder
    or cannot be listed."""
    if not folder.is_dir():
        return []
    return scan_folder(folder).folders


def non_image_file(file: Path, root: Path, place: str) -> Problem:
    """INFO ``non_image_file`` for a file without an image extension, found `place` ("in ...")."""
    return Problem(
        "non_image_file",
        f"{file.suffix or 'extensionless'} file {place}, skipped",
        relative_path(file, root),
        Severity.INFO,
        str(file),
    )


def list_images(
    folder: Path,
    root: Path,
    problems: list[Problem],
    *,
    place: str = "in the image folder",
    skip: Callable[[Path], bool] | None = None,
) -> dict[str, Path]:
    """File name -> path for the image files directly in `folder`, sorted by name.

    Every other file gets a `non_image_file` problem (appended to `problems`), except those
    `skip` accepts (the dataset's own annotation files when they sit among the images); so does
    every entry that is not a regular file, and the folder itself when it cannot be listed.
    """
    images: dict[str, Path] = {}
    for name, file in sorted(list_files(folder, problems, root).items()):
        if skip is not None and skip(file):
            continue
        if is_image_file(file):
            images[name] = file
        else:
            problems.append(non_image_file(file, root, place))
    return images


def csv_header(file: Path) -> list[str]:
    """The first row of a CSV file, cells stripped and lower-cased; [] when empty or unreadable."""
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            row = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [cell.strip().lower() for cell in row]


# --- boxes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedBoxes:
    """Boxes after the reader-level sanity check.

    boxes: float64 [N, 4] xyxy pixels, clipped to [0, width] x [0, height] (only at 0 when the
        size is unknown). problems: what was found. usable: False when a box is empty, inverted,
        not finite or wholly outside the image; the sample must then be excluded (its object is
        annotated but has no usable box, and dropping the box would turn it into a false
        "no object here" example).
    """

    boxes: np.ndarray
    problems: list[Problem] = field(default_factory=list)
    usable: bool = True


def _format_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in np.round(box, 2)) + "]"


def check_boxes(
    boxes: object,
    width: float | None,
    height: float | None,
    *,
    source: str,
    path: Path | str,
    labels: Sequence[str] | None = None,
) -> CheckedBoxes:
    """Flag and repair what a reader can see in xyxy boxes [N, 4] without opening the image.

    - a coordinate that is not a finite number: ERROR ``bad_box``;
    - x2 <= x1 or y2 <= y1: ERROR ``degenerate_box``;
    - partly outside the image (below 0, or beyond width/height when known): WARNING
      ``box_outside_image``, clipped;
    - nothing left after clipping: ERROR ``box_outside_image``.
    """
    array = box_ops.as_boxes(boxes)
    problems: list[Problem] = []
    usable = True
    path_text = str(path)
    size_text = f" ({width:g}x{height:g} px)" if width is not None and height is not None else ""
    clipped = array.copy()
    for index, box in enumerate(array):
        name = f"box {index + 1}" + (
            f" ({labels[index]})" if labels is not None and index < len(labels) else ""
        )
        if not np.all(np.isfinite(box)):
            problems.append(
                Problem(
                    "bad_box", f"{name} {_format_box(box)} is not a number", source, Severity.ERROR, path_text
                )
            )
            usable = False
            continue
        if box[2] <= box[0] or box[3] <= box[1]:
            problems.append(
                Problem(
                    "degenerate_box",
                    f"{name} {_format_box(box)} is empty or inverted (x2 <= x1 or y2 <= y1)",
                    source,
                    Severity.ERROR,
                    path_text,
                )
            )
            usable = False
            continue
        upper_x = np.inf if width is None else float(width)
        upper_y = np.inf if height is None else float(height)
        fixed = np.array(
            [
                min(max(box[0], 0.0), upper_x),
                min(max(box[1], 0.0), upper_y),
                min(max(box[2], 0.0), upper_x),
                min(max(box[3], 0.0), upper_y),
            ]
        )
        if np.array_equal(fixed, box):
            continue
        clipped[index] = fixed
        if fixed[2] <= fixed[0] or fixed[3] <= fixed[1]:
            problems.append(
                Problem(
                    "box_outside_image",
                    f"{name} {_format_box(box)} lies entirely outside the image{size_text}",
                    source,
                    Severity.ERROR,
                    path_text,
                )
            )
            usable = False
        else:
            problems.append(
                Problem(
                    "box_outside_image",
                    f"{name} {_format_box(box)} extends outside the image"
                    f"{size_text or ' (negative coordinate)'};"
                    f" clipped to {_format_box(fixed)}",
                    source,
                    Severity.WARNING,
                    path_text,
                )
            )
    return CheckedBoxes(clipped, problems, usable)


def label_of_largest_box(
    box_labels: Sequence[str], boxes: object, *, source: str, path: Path | str
) -> tuple[str | None, list[Problem]]:
    """The image label for a multi-object annotation: the shared object name, or the largest box's.

    Mixed names give a WARNING ``mixed_object_classes`` naming the choice. No boxes: (None, []).
    """
    if not box_labels:
        return None, []
    names = sorted(set(box_labels))
    if len(names) == 1:
        return names[0], []
    largest = box_labels[int(np.argmax(box_ops.area(boxes)))]
    message = (
        f"objects of different classes ({', '.join(names)}); "
        f"the image label is {largest!r}, the largest box's"
    )
    return largest, [Problem("mixed_object_classes", message, source, Severity.WARNING, str(path))]


def missing_listed_image(
    name: str, folder: Path, images: Container[str], what: str, source: str
) -> Problem | None:
    """ERROR ``missing_file`` when an image an annotation lists (by its name in `folder`) is neither
    among the folder's images nor, for a name with a sub-folder, a file; None when it is there."""
    image = folder / name
    if name in images or ("/" in name and image.is_file()):
        return None
    return Problem("missing_file", f"{what} {name} is not in {folder}", source, Severity.ERROR, str(image))


def class_name_conflict(
    names: dict[Any, str],
    key: Any,
    name: str,
    subject: str,
    elsewhere: str,
    source: str,
    path: str | None = None,
) -> Problem | None:
    """Record `name` for class `key` (the first name given wins); WARNING ``inconsistent_class_name``
    when `key` was named differently before: "<subject> <name> here but <known> <elsewhere>"."""
    known = names.setdefault(key, name)
    if known == name:
        return None
    message = f"{subject} {name!r} here but {known!r} {elsewhere}; using {known!r}"
    return Problem("inconsistent_class_name", message, source, Severity.WARNING, path)
