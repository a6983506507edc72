"""Class-per-folder reader (format name ``folder``): ``root/<class>/*.jpg`` or ``root/<split>/<class>/*.jpg``.

Split folders are ``train``, ``val`` / ``valid`` / ``validation`` and ``test`` (any case); their
sub-folders are the classes. Images may sit in sub-folders of a class folder (the label is the
class folder's name). No boxes and no sizes: images are not opened here (the checks do that).

Classes are the sorted folder names that hold at least one image. What is skipped is reported:
non-image files in class folders (WARNING ``non_image_file``), empty class folders (WARNING
``empty_class_folder``), images outside any class folder (WARNING ``image_outside_class_folder``),
other files at the top (INFO ``non_image_file``), and, in a split layout, top folders that are
not splits (WARNING ``unexpected_folder``). Hidden files and folders (".DS_Store", ".git") are not
data and are passed over without a word.

`sniff` answers 1 (plausible) when sub-folders hold images, never 2: any format with its own
marker files wins over a plain folder tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from carid.data.readers._common import SPLIT_NAMES, relative_path
from carid.data.readers._registry import DatasetError, register_reader
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.images import is_image_file

FORMAT = "folder"
SNIFF_FOLDER_LIMIT = 20  # folders looked into by `sniff` before giving up


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) directly in `folder`, sorted, hidden ones left out."""
    folders: list[Path] = []
    files: list[Path] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            (folders if entry.is_dir() else files).append(Path(entry.path))
    return sorted(folders), sorted(files)


def _holds_image(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(entry.is_file() and is_image_file(Path(entry.name)) for entry in entries)


def _split_folders(root: Path) -> list[Path]:
    folders, _ = _entries(root)
    return [f for f in folders if f.name.lower() in SPLIT_NAMES and _entries(f)[0]]


def sniff_folder(path: Path) -> int:
    """1 when sub-folders of `path` (or of its split folders) hold images, else 0."""
    path = Path(path)
    if not path.is_dir():
        return 0
    splits = _split_folders(path)
    tops = splits or [path]
    for top in tops:
        class_folders, _ = _entries(top)
        if any(_holds_image(folder) for folder in class_folders[:SNIFF_FOLDER_LIMIT]):
            return 1
    return 0


def _read_class_folder(
    folder: Path, root: Path, label: str, split: str | None, samples: list[Sample], problems: list[Problem]
) -> int:
    """Append the images under `folder` (recursively) as samples; returns how many."""
    count = 0
    stack = [folder]
    while stack:
        current = stack.pop()
        subfolders, files = _entries(current)
        stack.extend(reversed(subfolders))
        for file in files:
            relative = relative_path(file, root)
            if not is_image_file(file):
                problems.append(
                    Problem(
                        "non_image_file",
                        f"{file.suffix or 'extensionless'} file in class folder {label!r}, skipped",
                        relative,
                        Severity.WARNING,
                        str(file),
                    )
                )
                continue
            samples.append(Sample(file, label, split=split, source=relative))
            count += 1
    return count


def _report_loose_files(files: list[Path], root: Path, problems: list[Problem]) -> None:
    for file in files:
        if is_image_file(file):
            problems.append(
                Problem(
                    "image_outside_class_folder",
                    "image not inside a class folder, so it has no label; skipped",
                    relative_path(file, root),
                    Severity.WARNING,
                    str(file),
                )
            )
        else:
            problems.append(
                Problem(
                    "non_image_file",
                    "file outside the class folders, skipped",
                    relative_path(file, root),
                    Severity.INFO,
                )
            )


@register_reader(
    FORMAT, "class-per-folder tree: root/<class>/*.jpg or root/{train,val,test}/<class>/*.jpg", sniff_folder
)
def read_folder(path: Path) -> SampleTable:
    """Read a class-per-folder tree into a SampleTable (label = folder name, split = top folder)."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise DatasetError(f"{path}: not a folder; a class-per-folder dataset is a folder of class folders")
    problems: list[Problem] = []
    samples: list[Sample] = []
    top_folders, top_files = _entries(root)
    splits = _split_folders(root)
    _report_loose_files(top_files, root, problems)
    if splits:
        for folder in top_folders:
            if folder not in splits:
                problems.append(
                    Problem(
                        "unexpected_folder",
                        f"folder beside the split folders ({', '.join(s.name for s in splits)}) "
                        "is not a split; skipped",
                        relative_path(folder, root),
                        Severity.WARNING,
                    )
                )
        layout = [(SPLIT_NAMES[folder.name.lower()], folder) for folder in splits]
    else:
        layout = [(None, root)]
    for split, top in layout:
        class_folders, loose = _entries(top)
        if top != root:
            _report_loose_files(loose, root, problems)
        for folder in class_folders:
            if _read_class_folder(folder, root, folder.name, split, samples, problems) == 0:
                problems.append(
                    Problem(
                        "empty_class_folder",
                        f"class folder {folder.name!r} holds no image",
                        relative_path(folder, root),
                        Severity.WARNING,
                    )
                )
    if not samples:
        raise DatasetError(f"{root}: no images in class folders (expected root/<class>/*.jpg)")
    classes = sorted({sample.label for sample in samples if sample.label is not None})
    return SampleTable(samples, classes, root, FORMAT, problems)
