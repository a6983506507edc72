"""The cross-check between Stanford Cars crops and the devkit's official boxes, run by both Stanford readers.

A crop cut from an official box that runs past the photo's edge was clipped there, so its aspect
ratio differs from the box's (`check_crops_against_boxes`). Comparing the two is the only way to
see such a box when the full photo is absent (the devkit here ships 10 photos). Both readers run
it when they find the other half (a crops folder beside the devkit, or devkit files beside the
crops), record an INFO ``cross_reference`` problem saying what they used, and accept ``crops=`` /
``annotations=`` to name the other half explicitly or ``cross_check=False``. The devkit reader
(`stanford.read_stanford`) calls `cross_check_missing_photos`, the crops reader
(`stanford_crops.read_stanford_crops`) `cross_check_crops`. Crop sizes come from image headers
(Pillow open without decoding: cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carid.data.readers._common import list_subfolders
from carid.data.readers._stanford_crops_table import CROP_LABELS, read_crops_table, sniff_stanford_crops
from carid.data.readers._stanford_devkit import locate_devkit, read_stanford_annotations
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.images import ImageError, probe_image

ASPECT_TOLERANCE = 0.02
NEIGHBOUR_LIMIT = 200  # folders looked at when searching beside a dataset for its other half


# --- the cross-check between crops and official boxes --------------------------------------------


@dataclass(frozen=True)
class CropBoxComparison:
    """What comparing crops with their official boxes found.

    problems: ``box_exceeds_photo`` / ``crop_label_mismatch`` warnings. compared: crops measured
    against a box. unmatched: crops with no official box of the same file name (and split).
    unreadable: crops whose header could not be read (the image checks report those).
    """

    problems: tuple[Problem, ...]
    compared: int
    unmatched: int
    unreadable: int

    def to_dict(self) -> dict[str, object]:
        return {
            "compared": self.compared,
            "unmatched": self.unmatched,
            "unreadable": self.unreadable,
            "problems": [p.to_dict() for p in self.problems],
        }


def _annotation_index(annotations: SampleTable) -> dict[tuple[str, str | None], Sample]:
    index: dict[tuple[str, str | None], Sample] = {}
    for sample in annotations.samples:
        if len(sample.boxes) == 1:
            index.setdefault((sample.path.name, sample.split), sample)
    return index


def _match(index: dict[tuple[str, str | None], Sample], crop: Sample) -> Sample | None:
    name = crop.path.name
    if crop.split is not None:
        return index.get((name, crop.split))
    # the crops are of the official training photos (shared README); unlabelled splits come next
    return index.get((name, "train")) or index.get((name, None))


def _overflow_text(box: np.ndarray, crop_width: int, crop_height: int) -> str:
    """How far a box runs past the photo, estimated from the crop's size (see module docstring).

    The crop was scaled uniformly by s (photo px per crop px); the unclipped side gives s exactly,
    the clipped side shows less than the box: s = min(box_w / crop_w, box_h / crop_h).
    """
    box_width, box_height = box[2] - box[0], box[3] - box[1]
    scale = min(box_width / crop_width, box_height / crop_height)
    excess_x = box_width - crop_width * scale
    excess_y = box_height - crop_height * scale
    if excess_x >= excess_y:
        text = f"the box extends beyond the photo by about {excess_x:.0f} px horizontally"
        if box[0] >= 0:
            photo_width = box[0] + crop_width * scale
            text += f" (the photo is about {photo_width:.0f} px wide, the box ends at x={box[2]:.0f})"
    else:
        text = f"the box extends beyond the photo by about {excess_y:.0f} px vertically"
        if box[1] >= 0:
            photo_height = box[1] + crop_height * scale
            text += f" (the photo is about {photo_height:.0f} px high, the box ends at y={box[3]:.0f})"
    return text


def check_crops_against_boxes(
    crops: SampleTable,
    annotations: SampleTable,
    *,
    tolerance: float = ASPECT_TOLERANCE,
    report_on: str = "crop",
) -> CropBoxComparison:
    """Compare each crop's aspect ratio with its official box's; report boxes that leave their photo.

    crops: crop samples (sizes from `width`/`height`, else read from the image header).
    annotations: official boxes (one per sample, xyxy pixels), matched to crops by file name and
        split (a crop with no split matches the ``train`` row). Labels must agree, else the pair
        is reported as ``crop_label_mismatch`` and not compared.
    tolerance: a crop whose (crop aspect / box aspect) lies outside 1 +- tolerance is reported
        (WARNING ``box_exceeds_photo``; the crop is kept, the box is wrong).
    report_on: "crop" names the crop image as the problem's path and source; "photo" names the
        (possibly missing) full photo and the annotation row.
    """
    if report_on not in ("crop", "photo"):
        raise ValueError(f"report_on must be 'crop' or 'photo', not {report_on!r}")
    index = _annotation_index(annotations)
    problems: list[Problem] = []
    compared = unmatched = unreadable = 0
    for crop in crops.samples:
        official = _match(index, crop)
        if official is None:
            unmatched += 1
            continue
        where = (
            (str(crop.path), crop.source) if report_on == "crop" else (str(official.path), official.source)
        )
        if crop.label and official.label and crop.label != official.label:
            problems.append(
                Problem(
                    "crop_label_mismatch",
                    f"{crop.path.name}: crop labelled {crop.label!r} but its official annotation "
                    f"({official.source}) says {official.label!r}; not compared",
                    where[1],
                    Severity.WARNING,
                    where[0],
                )
            )
            continue
        if crop.width and crop.height:
            crop_width, crop_height = crop.width, crop.height
        else:
            try:
                info = probe_image(crop.path, decode=False)
            except ImageError:
                unreadable += 1
                continue
            crop_width, crop_height = info.width, info.height
        box = official.boxes[0]
        box_width, box_height = float(box[2] - box[0]), float(box[3] - box[1])
        compared += 1
        if crop_width <= 0 or crop_height <= 0 or box_width <= 0 or box_height <= 0:
            continue
        ratio = (crop_width / crop_height) / (box_width / box_height)
        if abs(ratio - 1.0) <= tolerance:
            continue
        problems.append(
            Problem(
                "box_exceeds_photo",
                f"{crop.path.name}: official box {box_width:.0f}x{box_height:.0f} px ({official.source}) "
                f"does not match its crop's aspect ratio ({crop_width}x{crop_height}): "
                f"{_overflow_text(box, crop_width, crop_height)}",
                where[1],
                Severity.WARNING,
                where[0],
            )
        )
    return CropBoxComparison(tuple(problems), compared, unmatched, unreadable)


# --- finding the other half and running the cross-check for either reader ---------------------


def _neighbour_folders(folder: Path) -> Iterator[Path]:
    """Sub-folders of `folder`, then its siblings, sorted; at most NEIGHBOUR_LIMIT of each."""
    for parent, skip in ((folder, None), (folder.parent, folder)):
        if parent == skip or not parent.is_dir():
            continue
        for candidate in list_subfolders(parent)[:NEIGHBOUR_LIMIT]:
            if candidate != skip:
                yield candidate


def _given_or_found(
    given: Path | str | None, candidates: Iterable[Path], found: Callable[[Path], bool]
) -> Path | None:
    """The folder the caller gave, else the first candidate where `found` holds (None: none)."""
    if given is not None:
        return Path(given)
    return next((folder for folder in candidates if found(folder)), None)


def cross_check_missing_photos(
    root: Path, missing: list[Sample], table: SampleTable, crops: Path | SampleTable | None
) -> list[Problem]:
    """Check the boxes of devkit rows whose full photo is missing against their crops.

    root: the devkit folder; missing: its samples without photo; table: the whole devkit table
    (for its classes and format); crops: the crops folder or table, None to look for one inside or
    beside `root`. Returns the ``box_exceeds_photo`` / ``crop_label_mismatch`` warnings and one
    INFO ``cross_reference`` note saying what was compared (or that no crops were found).
    """
    if isinstance(crops, SampleTable):
        crop_table, where = crops, f"the given crops table ({crops.root})"
    else:
        folder = _given_or_found(crops, _neighbour_folders(root), lambda f: sniff_stanford_crops(f) == 2)
        if folder is None:
            return [
                Problem(
                    "cross_reference",
                    f"{len(missing):,} rows have no full photo, and no crops folder (labels.csv + "
                    "images/) was found inside or beside the dataset, so their boxes could not be "
                    "checked; pass crops=PATH",
                    ".",
                    Severity.INFO,
                )
            ]
        crop_table, where = read_crops_table(folder), str(folder)
    missing_table = SampleTable(missing, table.classes, root, table.format)
    comparison = check_crops_against_boxes(crop_table, missing_table, report_on="photo")
    note = Problem(
        "cross_reference",
        f"{len(missing):,} rows have no full photo; their official boxes were compared with the crops in "
        f"{where} ({comparison.compared:,} crops matched by file name, {comparison.unreadable} unreadable): "
        f"a crop with another aspect ratio than its box means the box runs past the photo "
        f"({sum(p.kind == 'box_exceeds_photo' for p in comparison.problems)} found). "
        "Pass crops=PATH to use another crops folder or cross_check=False to skip this.",
        ".",
        Severity.INFO,
    )
    return [*comparison.problems, note]


def cross_check_crops(table: SampleTable, annotations: Path | SampleTable | None) -> list[Problem]:
    """Check crops against their official boxes: `annotations` (folder, file or table), None to look
    for devkit files in the crops folder or beside it. Returns the warnings and one INFO
    ``cross_reference`` note saying what was compared (or that no annotations were found)."""
    if isinstance(annotations, SampleTable):
        official, where = annotations, f"the given annotations table ({annotations.root})"
    else:
        candidates = (table.root, *_neighbour_folders(table.root))
        folder = _given_or_found(annotations, candidates, lambda f: locate_devkit(f) is not None)
        if folder is None:
            return [
                Problem(
                    "cross_reference",
                    "no Stanford devkit annotations found in or beside the crops folder, so the "
                    "crops were not checked against their official boxes; pass annotations=PATH",
                    CROP_LABELS,
                    Severity.INFO,
                )
            ]
        official = read_stanford_annotations(folder)
        where = ", ".join(f.name for f in locate_devkit(folder).files) + f" in {folder}"  # type: ignore[union-attr]
    comparison = check_crops_against_boxes(table, official, report_on="crop")
    found = sum(p.kind == "box_exceeds_photo" for p in comparison.problems)
    note = Problem(
        "cross_reference",
        f"crops compared with their official boxes from {where}: {comparison.compared:,} compared, "
        f"{comparison.unmatched:,} without an official box, {comparison.unreadable} unreadable, "
        f"{found} whose "
        "aspect ratio shows the box runs past the photo. Pass annotations=PATH to use other annotations or "
        "cross_check=False to skip this.",
        CROP_LABELS,
        Severity.INFO,
    )
    return [*comparison.problems, note]
