"""Pascal VOC XML reader, including the Oxford-IIIT Pet layout (format name ``voc``).

Layouts:
- plain VOC: ``Annotations/*.xml`` + ``JPEGImages/`` (or ``images/``), optional
  ``ImageSets/Main/{train,val,test}.txt`` for the split;
- Oxford-IIIT Pet: ``annotations/xmls/*.xml`` + ``images/`` + ``annotations/list.txt``,
  ``trainval.txt``, ``test.txt`` ("Image CLASS-ID SPECIES BREED-ID" per line).

VOC boxes are 1-based inclusive pixel indices (xmin=1 is the first pixel column), converted to
carid's xyxy with `boxes.from_inclusive_1based`. `<size>` gives the image size, so boxes outside
it are clipped (WARNING ``box_outside_image``) and boxes empty after clipping exclude the image
(ERROR). Tags the reader does not use (pose, truncated, difficult, ...) are ignored.

Pet layout: the image label is the breed from the file name (``american_bulldog_12`` ->
``american_bulldog``), classes follow list.txt's CLASS-ID order, the split is ``train`` for
trainval.txt and ``test`` for test.txt, and the XML object names (cat/dog) are the box labels,
checked against list.txt's SPECIES. Test images have no XML by design: they are box-less samples
summarised by one INFO ``no_box`` problem instead of one per image.

Plain VOC: the image label is the object name when all objects share it, else the name of the
largest box (WARNING ``mixed_object_classes``).

Samples with an ERROR problem are left out of the table (the problem names the image), so code
downstream never meets them. Boxes are checked with `_common.check_boxes`, like every box format's.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carid import boxes as box_ops
from carid.data.readers._common import (
    check_boxes,
    label_of_largest_box,
    list_files,
    list_images,
    relative_path,
)
from carid.data.readers._registry import DatasetError, register_reader
from carid.data.samples import Problem, Sample, SampleTable, Severity

FORMAT = "voc"
PET_SPECIES = {1: "cat", 2: "dog"}
SPLIT_LIST_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


# --- VOC XML -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocAnnotation:
    """One parsed XML file. boxes: [N, 4] xyxy pixels (converted from VOC's 1-based inclusive)."""

    filename: str | None
    width: int | None
    height: int | None
    boxes: np.ndarray
    names: tuple[str, ...]
    problems: list[Problem]
    usable: bool

    def sample(self, image: Path, label: str | None, split: str | None, source: str) -> Sample:
        """The sample of this annotation's image: every object a box, the XML's size."""
        return Sample(
            image,
            label,
            boxes=self.boxes,
            box_labels=self.names,
            width=self.width,
            height=self.height,
            split=split,
            source=source,
        )


def _text(element: ElementTree.Element | None, tag: str) -> str | None:
    if element is None:
        return None
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def load_xml(xml_path: Path) -> tuple[ElementTree.Element | None, str | None]:
    """(root element, None) or (None, the parser's message)."""
    try:
        return ElementTree.parse(xml_path).getroot(), None
    except (ElementTree.ParseError, OSError) as exc:
        return None, str(exc)


def parse_voc_xml(xml_path: Path, source: str, image_path: Path | str) -> VocAnnotation:
    """Parse one VOC XML file; problems name `source` (the XML's path relative to the dataset)."""
    return annotation_from_xml(*load_xml(xml_path), source=source, image_path=image_path)


def annotation_from_xml(
    root: ElementTree.Element | None, error: str | None, *, source: str, image_path: Path | str
) -> VocAnnotation:
    """The VocAnnotation of a loaded XML (`root`), or a ``bad_xml`` ERROR when it did not parse."""
    problems: list[Problem] = []
    image_text = str(image_path)
    if root is None:
        problem = Problem("bad_xml", f"cannot parse the XML ({error})", source, Severity.ERROR, image_text)
        return VocAnnotation(None, None, None, np.zeros((0, 4)), (), [problem], False)
    if root.tag != "annotation":
        problem = Problem(
            "bad_xml",
            f"root element is <{root.tag}>, not a VOC <annotation>",
            source,
            Severity.ERROR,
            image_text,
        )
        return VocAnnotation(None, None, None, np.zeros((0, 4)), (), [problem], False)

    size = root.find("size")
    width_text, height_text = _text(size, "width"), _text(size, "height")
    width = height = None
    try:
        width = int(float(width_text)) if width_text else None
        height = int(float(height_text)) if height_text else None
    except ValueError:
        width = height = None
    if not width or not height:
        width = height = None
        problems.append(
            Problem(
                "missing_field",
                f"no usable <size> (width={width_text!r}, height={height_text!r}); the image size is unknown",
                source,
                Severity.WARNING,
                image_text,
            )
        )

    usable = True
    raw_boxes: list[list[float]] = []
    names: list[str] = []
    for index, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name")
        if name is None:
            problems.append(
                Problem(
                    "missing_field", f"object {index} has no <name>", source, Severity.WARNING, image_text
                )
            )
            name = "object"
        bndbox = obj.find("bndbox")
        values: list[float] = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = _text(bndbox, tag)
            try:
                values.append(float(text))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                detail = "no <bndbox>" if bndbox is None else f"<bndbox><{tag}> is {text!r}, not a number"
                problems.append(
                    Problem(
                        "bad_annotation",
                        f"object {index} ({name}): {detail}",
                        source,
                        Severity.ERROR,
                        image_text,
                    )
                )
                usable = False
                break
        else:
            raw_boxes.append(values)
            names.append(name)
    converted = box_ops.from_inclusive_1based(raw_boxes) if raw_boxes else np.zeros((0, 4))
    checked = check_boxes(converted, width, height, source=source, path=image_text, labels=names)
    problems.extend(checked.problems)
    return VocAnnotation(
        _text(root, "filename"),
        width,
        height,
        checked.boxes,
        tuple(names),
        problems,
        usable and checked.usable,
    )


# --- layout ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocLayout:
    root: Path
    xml_dir: Path
    image_dir: Path
    pet_lists: dict[str, Path]  # "list"/"trainval"/"test" -> file, empty for plain VOC


def _has_xml(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        return any(entry.name.lower().endswith(".xml") for entry in entries)


def _locate(path: Path) -> VocLayout | None:
    root = Path(path)
    if root.is_file():
        return None
    for relative in ("Annotations", "annotations/xmls", "annotations"):
        xml_dir = root / relative
        if _has_xml(xml_dir):
            break
    else:
        return None
    image_dir = next((root / name for name in ("JPEGImages", "images") if (root / name).is_dir()), root)
    pet_lists = {
        key: root / "annotations" / f"{key}.txt"
        for key in ("list", "trainval", "test")
        if (root / "annotations" / f"{key}.txt").is_file()
    }
    return VocLayout(root, xml_dir, image_dir, pet_lists)


def sniff_voc(path: Path) -> int:
    """2 when `path` holds ``Annotations/*.xml`` or ``annotations/xmls/*.xml``."""
    return 2 if _locate(Path(path)) is not None else 0


@dataclass
class _Images:
    """The image folder, listed once: stem -> file, and its non-image files."""

    by_stem: dict[str, Path]
    by_name: dict[str, Path]

    @classmethod
    def list(cls, folder: Path, root: Path, problems: list[Problem]) -> _Images:
        by_name = list_images(folder, root, problems)
        by_stem: dict[str, Path] = {}
        for file in by_name.values():
            by_stem.setdefault(file.stem, file)
        return cls(by_stem, by_name)


def _read_pet_list(file: Path, root: Path, problems: list[Problem]) -> list[tuple[str, list[int], str]]:
    """(image name, [CLASS-ID, SPECIES, BREED-ID], source) per line; malformed lines become problems."""
    entries: list[tuple[str, list[int], str]] = []
    relative = relative_path(file, root)
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        source = f"{relative} line {number}"
        try:
            ids = [int(value) for value in parts[1:4]]
        except ValueError:
            ids = []
        if len(ids) != 3:
            problems.append(
                Problem(
                    "bad_list_line",
                    f"expected 'Image CLASS-ID SPECIES BREED-ID', got {text!r}",
                    source,
                    Severity.WARNING,
                )
            )
            ids = []
        entries.append((parts[0], ids, source))
    return entries


def _breed(name: str) -> str:
    return name.rsplit("_", 1)[0] if "_" in name else name


def _read_pets(layout: VocLayout) -> SampleTable:
    root = layout.root
    problems: list[Problem] = []
    images = _Images.list(layout.image_dir, root, problems)
    xmls = {file.stem: file for file in list_files(layout.xml_dir).values() if file.suffix.lower() == ".xml"}

    lists = {key: _read_pet_list(file, root, problems) for key, file in layout.pet_lists.items()}
    split_of: dict[str, str] = {}
    list_source: dict[str, str] = {}
    ids_of: dict[str, list[int]] = {}
    order: list[str] = []
    for key in ("list", "trainval", "test"):
        split = {"trainval": "train", "test": "test"}.get(key)
        for name, ids, source in lists.get(key, []):
            if name not in list_source:
                order.append(name)
                list_source[name] = source
            if ids and name not in ids_of:
                ids_of[name] = ids
            if split is None:
                continue
            if name in split_of and split_of[name] != split:
                problems.append(
                    Problem(
                        "conflicting_split",
                        f"{name} is listed in both trainval.txt and test.txt; kept in {split_of[name]!r}",
                        source,
                        Severity.WARNING,
                    )
                )
                continue
            split_of[name] = split

    # Classes in CLASS-ID order (the dataset's own); breeds seen only in unlisted files go last.
    breed_of_id: dict[int, str] = {}
    for name, ids in ids_of.items():
        breed = _breed(name)
        known = breed_of_id.setdefault(ids[0], breed)
        if known != breed:
            problems.append(
                Problem(
                    "inconsistent_class_id",
                    f"{name} has CLASS-ID {ids[0]}, which other lines give to {known!r}",
                    list_source[name],
                    Severity.WARNING,
                )
            )
    classes = [breed_of_id[key] for key in sorted(breed_of_id)]

    listed = set(order)
    unlisted = sorted(stem for stem in images.by_stem if stem not in listed)
    list_names = ", ".join(file.name for file in layout.pet_lists.values())
    for stem in unlisted:
        file = images.by_stem[stem]
        problems.append(
            Problem(
                "unlisted_image",
                f"not listed in {list_names}; kept with the breed from its name and no split",
                relative_path(file, root),
                Severity.WARNING,
                str(file),
            )
        )

    samples: list[Sample] = []
    test_without_xml = 0
    for name in order + unlisted:
        image = images.by_stem.get(name)
        xml = xmls.pop(name, None)
        if xml is not None:
            source = relative_path(xml, root)
        elif name in list_source:
            source = list_source[name]
        else:
            source = relative_path(image, root) if image is not None else name
        if image is None:
            expected = layout.image_dir / f"{name}.jpg"
            problems.append(
                Problem(
                    "missing_file",
                    f"image {name} is listed but no such file is in {relative_path(layout.image_dir, root)}/",
                    source,
                    Severity.ERROR,
                    str(expected),
                )
            )
            continue
        breed = _breed(name)
        if breed not in classes:
            classes.append(breed)
        split = split_of.get(name)
        if xml is None:
            if split == "test":
                test_without_xml += 1
            else:
                problems.append(
                    Problem(
                        "no_box",
                        f"no XML annotation ({relative_path(layout.xml_dir, root)}/{name}.xml): "
                        "a sample without box",
                        source,
                        Severity.INFO,
                        str(image),
                    )
                )
            samples.append(Sample(image, breed, split=split, source=source))
            continue
        parsed = parse_voc_xml(xml, source, image)
        problems.extend(parsed.problems)
        if parsed.filename and parsed.filename != image.name:
            problems.append(
                Problem(
                    "filename_mismatch",
                    f"<filename> says {parsed.filename!r}; matched to {image.name} by the XML's name",
                    source,
                    Severity.WARNING,
                    str(image),
                )
            )
        if not parsed.usable:
            continue
        species = PET_SPECIES.get(ids_of[name][1]) if name in ids_of else None
        wrong = sorted({n for n in parsed.names if species and n.lower() != species})
        if wrong:
            problems.append(
                Problem(
                    "species_mismatch",
                    f"object name(s) {', '.join(wrong)} but {list_source[name]} gives species {species!r}",
                    source,
                    Severity.WARNING,
                    str(image),
                )
            )
        if len(parsed.boxes) > 1:
            problems.append(
                Problem(
                    "multiple_objects",
                    f"{len(parsed.boxes)} objects ({', '.join(parsed.names)}); all are kept as boxes",
                    source,
                    Severity.WARNING,
                    str(image),
                )
            )
        samples.append(parsed.sample(image, breed, split, source))

    for stem, xml in sorted(xmls.items()):
        problems.append(
            Problem(
                "missing_file",
                f"no image {stem}.* in {relative_path(layout.image_dir, root)}/ for this XML",
                relative_path(xml, root),
                Severity.ERROR,
                str(layout.image_dir / f"{stem}.jpg"),
            )
        )
    if test_without_xml:
        problems.append(
            Problem(
                "no_box",
                f"{test_without_xml} test images have no XML annotation, as in the original Oxford-IIIT Pet "
                "(only trainval images carry head boxes); they are samples without box",
                relative_path(layout.pet_lists.get("test", layout.xml_dir), root),
                Severity.INFO,
            )
        )
    return SampleTable(samples, classes, root, FORMAT, problems)


def _read_image_sets(root: Path, problems: list[Problem]) -> dict[str, str]:
    """Image id -> split from ImageSets/Main/{train,val,test}.txt (or trainval.txt alone)."""
    folder = root / "ImageSets" / "Main"
    files = {split: folder / name for split, name in SPLIT_LIST_FILES.items() if (folder / name).is_file()}
    if "train" not in files and "val" not in files and (folder / "trainval.txt").is_file():
        files["train"] = folder / "trainval.txt"
    split_of: dict[str, str] = {}
    for split, file in files.items():
        for number, line in enumerate(
            file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1
        ):
            parts = line.split()
            if not parts:
                continue
            if parts[0] in split_of and split_of[parts[0]] != split:
                problems.append(
                    Problem(
                        "conflicting_split",
                        f"{parts[0]} is also listed for {split_of[parts[0]]!r}; kept there",
                        f"{relative_path(file, root)} line {number}",
                        Severity.WARNING,
                    )
                )
                continue
            split_of[parts[0]] = split
    return split_of


def _read_plain_voc(layout: VocLayout) -> SampleTable:
    root = layout.root
    problems: list[Problem] = []
    images = _Images.list(layout.image_dir, root, problems)
    split_of = _read_image_sets(root, problems)
    xml_files = sorted(file for file in list_files(layout.xml_dir).values() if file.suffix.lower() == ".xml")
    samples: list[Sample] = []
    used: set[Path] = set()
    for xml in xml_files:
        source = relative_path(xml, root)
        element, error = load_xml(xml)
        filename = _text(element, "filename") if element is not None else None
        image = images.by_name.get(Path(filename).name) if filename else None
        if image is None:
            image = images.by_stem.get(xml.stem)
            if image is not None and filename:
                problems.append(
                    Problem(
                        "filename_mismatch",
                        f"<filename> {filename!r} is not in the image folder; "
                        f"matched to {image.name} by the XML's name",
                        source,
                        Severity.WARNING,
                        str(image),
                    )
                )
        if image is None:
            expected = layout.image_dir / (Path(filename).name if filename else f"{xml.stem}.jpg")
            if error is not None:
                problems.append(
                    Problem(
                        "bad_xml", f"cannot parse the XML ({error})", source, Severity.ERROR, str(expected)
                    )
                )
            problems.append(
                Problem(
                    "missing_file",
                    f"its image {expected.name} is not in {relative_path(layout.image_dir, root)}/",
                    source,
                    Severity.ERROR,
                    str(expected),
                )
            )
            continue
        used.add(image)
        parsed = annotation_from_xml(element, error, source=source, image_path=image)
        problems.extend(parsed.problems)
        if not parsed.usable:
            continue
        label, label_problems = label_of_largest_box(parsed.names, parsed.boxes, source=source, path=image)
        problems.extend(label_problems)
        if len(parsed.boxes) > 1:
            problems.append(
                Problem(
                    "multiple_objects",
                    f"{len(parsed.boxes)} objects ({', '.join(parsed.names)})",
                    source,
                    Severity.INFO,
                    str(image),
                )
            )
        if not len(parsed.boxes):
            problems.append(Problem("no_box", "the XML holds no object", source, Severity.INFO, str(image)))
        samples.append(parsed.sample(image, label, split_of.get(xml.stem), source))
    for _name, image in sorted(images.by_name.items()):
        if image in used:
            continue
        source = relative_path(image, root)
        problems.append(
            Problem(
                "no_box",
                "image without XML annotation: a sample without box or label",
                source,
                Severity.INFO,
                str(image),
            )
        )
        samples.append(Sample(image, None, split=split_of.get(image.stem), source=source))
    classes = sorted({s.label for s in samples if s.label is not None})
    return SampleTable(samples, classes, root, FORMAT, problems)


@register_reader(
    FORMAT, "Pascal VOC XML boxes (Annotations/ or annotations/xmls/), incl. Oxford-IIIT Pet lists", sniff_voc
)
def read_voc(path: Path) -> SampleTable:
    """Read a VOC or Oxford-IIIT Pet dataset folder into a SampleTable."""
    layout = _locate(Path(path).resolve())
    if layout is None:
        raise DatasetError(
            f"{path}: no Annotations/*.xml or annotations/xmls/*.xml found, not a Pascal VOC dataset"
        )
    return _read_pets(layout) if layout.pet_lists else _read_plain_voc(layout)
