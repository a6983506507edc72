"""Stanford Cars crops reader (format name ``stanford-crops``) and its cross-check with the devkit's boxes.

Crops: ``labels.csv`` (``fname,class_id,class_name``, class_id 1-based) and ``images/``; no boxes
(the crop is the box); classes ordered by class_id.

Cross-check (`check_crops_against_boxes`): a crop cut from an official box that runs past the
photo's edge was clipped there, so its aspect ratio differs from the box's. Comparing the two is
the only way to see such a box when the full photo is absent (the devkit here ships 10 photos).
Both readers run it when they find the other half (a crops folder beside the devkit, or devkit
files beside the crops), record an INFO ``cross_reference`` problem saying what they used, and
accept ``crops=`` / ``annotations=`` to name the other half explicitly or ``cross_check=False``.
The devkit reader (`stanford.read_stanford`) calls `cross_check_missing_photos` from here.
Crop sizes come from image headers (Pillow open without decoding: cheap).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carid.data.readers import DatasetError, register_reader
from carid.data.readers._common import csv_header, list_images, list_subfolders, relative_path
from carid.data.readers.stanford import BOX_FIELDS, locate_devkit, read_stanford_annotations
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.images import ImageError, probe_image

FORMAT = "stanford-crops"
CROP_LABELS = "labels.csv"
CROP_COLUMNS = ("fname", "class_id")
ASPECT_TOLERANCE = 0.02
NEIGHBOUR_LIMIT = 200  # folders looked at when searching beside a dataset for its other half


# --- the crops reader -----------------------------------------------------------------------------


def _labels_file(path: Path) -> Path | None:
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
    return 2 if _labels_file(Path(path)) is not None else 0


@register_reader(
    FORMAT,
    "Stanford Cars crops: labels.csv (fname,class_id,class_name) + images/",
    sniff_stanford_crops,
)
def read_stanford_crops(
    path: Path,
    *,
    annotations: Path | SampleTable | None = None,
    cross_check: bool = True,
) -> SampleTable:
    """Read the pre-cropped Stanford layout into a SampleTable (no boxes: the crop is the box).

    annotations: the devkit (folder, annotation file or table from `read_stanford_annotations`)
        used to check each crop against its official box; None looks for devkit files in the
        crops folder, its devkit/ subfolder, or a sibling folder.
    cross_check: False skips that check.
    """
    path = Path(path).resolve()
    labels = _labels_file(path)
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
                known = names_of_id.setdefault(class_id, name)
                if known != name:
                    problems.append(
                        Problem(
                            "inconsistent_class_name",
                            f"class_id {class_id} is named {name!r} here but {known!r} elsewhere; "
                            f"using {known!r}",
                            source,
                            Severity.WARNING,
                            str(image),
                        )
                    )
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
        image = image_folder / fname
        if fname not in images and ("/" not in fname or not image.is_file()):
            problems.append(
                Problem(
                    "missing_file",
                    f"crop {fname} is not in {image_folder}",
                    source,
                    Severity.ERROR,
                    str(image),
                )
            )
            continue
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
    if cross_check:
        table.add_problems(_cross_check_crops(table, annotations))
    return table


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
        folder = (
            Path(crops)
            if crops is not None
            else next((f for f in _neighbour_folders(root) if sniff_stanford_crops(f) == 2), None)
        )
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
        crop_table, where = read_stanford_crops(folder, cross_check=False), str(folder)
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


def _cross_check_crops(table: SampleTable, annotations: Path | SampleTable | None) -> list[Problem]:
    if isinstance(annotations, SampleTable):
        official, where = annotations, f"the given annotations table ({annotations.root})"
    else:
        folder = (
            Path(annotations)
            if annotations is not None
            else next(
                (f for f in (table.root, *_neighbour_folders(table.root)) if locate_devkit(f) is not None),
                None,
            )
        )
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
