"""Class-per-folder reader (format name ``folder``): ``root/<class>/*.jpg`` or ``root/<split>/<class>/*.jpg``.

Split folders are ``train``, ``val`` / ``valid`` / ``validation`` and ``test`` (any case); their
sub-folders are the classes. Images may sit in sub-folders of a class folder (the label is the
class folder's name). No boxes and no sizes: images are not opened here (the checks do that).

Classes are the sorted folder names that hold at least one image. What is skipped is reported:
non-image files in class folders (WARNING ``non_image_file``), empty class folders (WARNING
``empty_class_folder``), images outside any class folder (WARNING ``image_outside_class_folder``),
other files at the top (INFO ``non_image_file``), and, in a split layout, top folders that are
not splits (WARNING ``unexpected_folder``). Hidden files and folders (".DS_Store", ".git") are not
data and are passed over without a word. No entry stops the reading (`carid.data.listing`): a
folder that cannot be listed is an ERROR ``unreadable_folder``; a link loop (to itself, or back to
a folder already read, which is read once) a WARNING ``symlink_loop``; a FIFO, socket, device or
dangling link a WARNING ``not_a_regular_file``, never opened. A class name is text: bytes of a
folder name that are not UTF-8 are shown as \\xNN in it (`carid.data.text.file_text`).

`sniff` answers 1 (plausible) when sub-folders hold images, never 2: any format with its own
marker files wins over a plain folder tree.
"""

from __future__ import annotations

from pathlib import Path

from carid.data.listing import FolderListing, folder_identity, scan_folder, walk_files
from carid.data.readers._common import SPLIT_NAMES, relative_path, skipped_problem
from carid.data.readers._registry import DatasetError, register_reader
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.data.text import file_text
from carid.images import is_image_file

FORMAT = "folder"
SNIFF_FOLDER_LIMIT = 20  # folders looked into by `sniff` before giving up


def _entries(folder: Path, root: Path | None = None, problems: list[Problem] | None = None) -> FolderListing:
    """Sub-folders and regular files directly in `folder`, sorted, hidden ones left out; what
    cannot be used goes to `problems` (named relative to `root`) when given."""
    listing = scan_folder(folder)
    if problems is not None and root is not None:
        problems.extend(skipped_problem(item, root) for item in listing.skipped)
    return listing


def _holds_image(folder: Path) -> bool:
    return any(is_image_file(file) for file in scan_folder(folder).files)


def _split_folders(root: Path) -> list[Path]:
    return [f for f in _entries(root).folders if f.name.lower() in SPLIT_NAMES and _entries(f).folders]


def sniff_folder(path: Path) -> int:
    """1 when sub-folders of `path` (or of its split folders) hold images, else 0."""
    path = Path(path)
    if not path.is_dir():
        return 0
    splits = _split_folders(path)
    tops = splits or [path]
    for top in tops:
        class_folders = _entries(top).folders
        if any(_holds_image(folder) for folder in class_folders[:SNIFF_FOLDER_LIMIT]):
            return 1
    return 0


def _read_class_folder(
    folder: Path,
    root: Path,
    split: str | None,
    samples: list[Sample],
    problems: list[Problem],
    seen: dict[tuple[int, int], Path],
) -> None:
    """Append the images under `folder` (recursively) as samples, labelled with the folder's name;
    WARNING ``empty_class_folder`` when it holds none (and could be listed)."""
    label = file_text(folder.name)
    listing = walk_files(folder, seen=seen)
    problems.extend(skipped_problem(item, root) for item in listing.skipped)
    count = 0
    for file in listing.files:
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
    if count == 0 and listing.complete and not any(item.path == folder for item in listing.skipped):
        problems.append(
            Problem(
                "empty_class_folder",
                f"class folder {label!r} holds no image",
                relative_path(folder, root),
                Severity.WARNING,
            )
        )


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
    top = _entries(root, root, problems)
    if not top.complete:
        raise DatasetError(f"{root}: {top.skipped[0].reason}")
    splits = _split_folders(root)
    _report_loose_files(top.files, root, problems)
    if splits:
        for folder in top.folders:
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
    listings = [
        (split, top if folder == root else _entries(folder, root, problems)) for split, folder in layout
    ]
    # Each real folder is read once, as itself: a link to the root, a split or a class folder
    # from inside a class folder is a loop (reported), not a second copy under another label.
    seen: dict[tuple[int, int], Path] = {}
    for folder in [root, *splits, *(f for _, listing in listings for f in listing.folders)]:
        identity = folder_identity(folder)
        if identity is not None:
            seen.setdefault(identity, folder)
    for (split, listing), (_, top_folder) in zip(listings, layout, strict=True):
        if top_folder != root:
            _report_loose_files(listing.files, root, problems)
        for folder in listing.folders:
            _read_class_folder(folder, root, split, samples, problems, seen)
    if not samples:
        raise DatasetError(f"{root}: no images in class folders (expected root/<class>/*.jpg)")
    classes = sorted({sample.label for sample in samples if sample.label is not None})
    return SampleTable(samples, classes, root, FORMAT, problems)
