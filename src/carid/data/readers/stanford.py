"""Stanford Cars devkit reader (format name ``stanford``): the official .mat files or the same columns as CSV.

The layout it reads (which files, which columns, where the photos are) is described in
`carid.data.readers._stanford_devkit`, which parses it. This module is the registered reader:
rows whose photo is absent get one ``missing_file`` ERROR each and stay out of the table, and an
INFO ``image_folder`` says where each split's photos were looked up.

Rows whose full photo is missing can still have their boxes checked against the pre-cropped
layout (``stanford-crops``): `read_stanford` runs
`carid.data.readers._stanford_cross_check.cross_check_missing_photos` when it finds a crops
folder inside or beside the devkit (see that module's docstring).
"""

from __future__ import annotations

from pathlib import Path

import scipy.io

from carid.data.readers._common import relative_path
from carid.data.readers._registry import register_reader
from carid.data.readers._stanford_cross_check import cross_check_missing_photos
from carid.data.readers._stanford_devkit import FORMAT, SPLIT_OF_MAT, locate_devkit, read_devkit
from carid.data.samples import Problem, SampleTable, Severity


def _mat_has_annotations(file: Path) -> bool:
    try:
        return any(name == "annotations" for name, _, _ in scipy.io.whosmat(file))
    except Exception:  # any unreadable .mat is simply not ours
        return False


def sniff_stanford(path: Path) -> int:
    """2 for the devkit .mat files (or a Stanford-style box CSV), in `path`, devkit/ or as `path`."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".mat" and path.name not in SPLIT_OF_MAT:
        return 2 if _mat_has_annotations(path) else 0
    return 2 if locate_devkit(path) is not None else 0


# --- the devkit reader ----------------------------------------------------------------------------


@register_reader(
    FORMAT,
    "Stanford Cars devkit: cars_*_annos.mat (or the same columns as CSV) + cars_train/",
    sniff_stanford,
)
def read_stanford(
    path: Path,
    *,
    crops: Path | SampleTable | None = None,
    cross_check: bool = True,
) -> SampleTable:
    """Read a Stanford Cars devkit (a folder or one annotation file) into a SampleTable.

    crops: the crops dataset (folder or table) used to check the boxes of rows whose full photo
        is missing; None looks for a ``stanford-crops`` folder inside or beside the dataset.
    cross_check: False skips that check.
    """
    parsed = read_devkit(path)
    table = parsed.table
    root = parsed.devkit.root
    present = [s for s, found in zip(table.samples, parsed.present, strict=True) if found]
    missing = [s for s, found in zip(table.samples, parsed.present, strict=True) if not found]
    problems = table.problems
    for split, folder in parsed.folders.items():
        count = sum(1 for s in table.samples if s.split == split)
        what = f"{split} photos" if split else "photos"
        if folder.exists:
            text = (
                f"{what} are looked up in {folder.folder} "
                f"({len(folder.names):,} image files for {count:,} rows)"
            )
        else:
            text = (
                f"no photo folder {folder.folder.name}/ found beside the annotations: "
                f"the {count:,} {what} are missing"
            )
        problems.append(Problem("image_folder", text, relative_path(folder.folder, root), Severity.INFO))
    for sample in missing:
        problems.append(
            Problem(
                "missing_file",
                f"photo {sample.path.name} is not in {sample.path.parent}",
                sample.source,
                Severity.ERROR,
                str(sample.path),
            )
        )
    result = SampleTable(present, table.classes, root, FORMAT, problems)
    if cross_check and missing:
        result.add_problems(cross_check_missing_photos(root, missing, table, crops))
    return result
