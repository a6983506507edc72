"""Pascal VOC reader: plain VOC and the Oxford-IIIT Pet layout, with bad XML and boxes outside images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carid.data.readers import DatasetError, detect_format
from carid.data.readers.voc import read_voc, sniff_voc
from carid.data.samples import Severity
from tests.conftest import shared_dataset, write_image


def voc_xml(
    filename: str, objects: list[tuple[str, tuple[float, float, float, float]]], size=(100, 80)
) -> str:
    """A VOC annotation; boxes are (xmin, ymin, xmax, ymax), 1-based inclusive as VOC writes them."""
    parts = [f"<annotation><folder>x</folder><filename>{filename}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (x1, y1, x2, y2) in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Frontal</pose><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def write_xml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_plain_voc(root: Path) -> Path:
    for stem in ("a", "b", "c", "d", "e", "g"):
        write_image(root / "JPEGImages" / f"{stem}.jpg", size=(16, 16))
    write_xml(root / "Annotations" / "a.xml", voc_xml("a.jpg", [("sedan", (1, 1, 10, 20))]))
    write_xml(
        root / "Annotations" / "b.xml", voc_xml("b.jpg", [("sedan", (1, 1, 10, 10)), ("suv", (1, 1, 50, 50))])
    )
    write_xml(
        root / "Annotations" / "c.xml", voc_xml("c.jpg", [("sedan", (51, 41, 120, 70))])
    )  # past x = 100
    write_xml(
        root / "Annotations" / "d.xml", voc_xml("d.jpg", [("sedan", (150, 10, 180, 20))])
    )  # wholly outside
    write_xml(root / "Annotations" / "e.xml", "<annotation><filename>e.jpg</filename><object>")  # malformed
    write_xml(root / "Annotations" / "f.xml", voc_xml("f.jpg", [("sedan", (1, 1, 5, 5))]))  # no image f.jpg
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("a\nb\nc\n", encoding="utf-8")
    (main / "val.txt").write_text("d\ne\n", encoding="utf-8")
    return root


def by_kind(table, kind: str):
    return [p for p in table.problems if p.kind == kind]


def test_plain_voc(tmp_path: Path) -> None:
    root = make_plain_voc(tmp_path / "voc")
    assert sniff_voc(root) == 2 and detect_format(root) == "voc"
    table = read_voc(root)
    samples = {s.path.name: s for s in table}
    assert sorted(samples) == ["a.jpg", "b.jpg", "c.jpg", "g.jpg"]
    a = samples["a.jpg"]
    np.testing.assert_array_equal(a.boxes, [[0, 0, 10, 20]])  # 1-based inclusive -> xyxy
    assert (a.label, a.width, a.height, a.split, a.source) == ("sedan", 100, 80, "train", "Annotations/a.xml")
    assert a.path == root / "JPEGImages" / "a.jpg"
    # mixed classes: the largest box names the image
    assert samples["b.jpg"].label == "suv" and samples["b.jpg"].box_labels == ("sedan", "suv")
    assert by_kind(table, "mixed_object_classes")[0].source == "Annotations/b.xml"
    # partly outside: clipped and kept, with a warning naming the XML
    np.testing.assert_array_equal(samples["c.jpg"].boxes, [[50, 40, 100, 70]])
    outside = by_kind(table, "box_outside_image")
    assert {(p.source, p.severity) for p in outside} == {
        ("Annotations/c.xml", Severity.WARNING),
        ("Annotations/d.xml", Severity.ERROR),
    }
    assert "100x80" in outside[0].message
    # malformed XML: an error naming the file and the parser's message
    (bad,) = by_kind(table, "bad_xml")
    assert bad.source == "Annotations/e.xml" and bad.severity is Severity.ERROR and "line 1" in bad.message
    (missing,) = by_kind(table, "missing_file")
    assert missing.source == "Annotations/f.xml" and "f.jpg" in missing.message
    # an image with no XML is a sample without box or label
    assert samples["g.jpg"].label is None and not samples["g.jpg"].has_box
    assert table.classes == ["sedan", "suv"]


def test_xml_box_outside_image_is_named(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "car.jpg")
    write_xml(
        tmp_path / "Annotations" / "car.xml", voc_xml("car.jpg", [("car", (10, 10, 90, 130))], size=(64, 48))
    )
    table = read_voc(tmp_path)
    (problem,) = table.problems
    assert problem.kind == "box_outside_image" and problem.source == "Annotations/car.xml"
    assert problem.path == str(tmp_path / "images" / "car.jpg")
    assert "64x48" in problem.message and "clipped" in problem.message
    np.testing.assert_array_equal(table.samples[0].boxes, [[9, 9, 64, 48]])


def test_missing_size_and_bad_coordinate(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.jpg")
    write_image(tmp_path / "images" / "b.jpg")
    write_xml(tmp_path / "Annotations" / "a.xml", voc_xml("a.jpg", [("car", (1, 1, 5, 5))], size=None))
    write_xml(
        tmp_path / "Annotations" / "b.xml",
        voc_xml("b.jpg", [("car", (1, 1, 5, 5))]).replace("<xmax>5</xmax>", "<xmax>five</xmax>"),
    )
    table = read_voc(tmp_path)
    assert [s.path.name for s in table] == ["a.jpg"]
    assert table.samples[0].width is None
    (size,) = by_kind(table, "missing_field")
    assert size.severity is Severity.WARNING and size.source == "Annotations/a.xml"
    (coordinate,) = by_kind(table, "bad_annotation")
    assert (
        coordinate.severity is Severity.ERROR
        and "xmax" in coordinate.message
        and "five" in coordinate.message
    )


def make_pets(root: Path) -> Path:
    """Two cat breeds and a dog breed in the Oxford-IIIT Pet layout, with the usual oddities."""
    names = [
        "Abyssinian_1",
        "Abyssinian_2",
        "american_bulldog_1",
        "american_bulldog_2",
        "Bengal_1",
        "Bengal_2",
    ]
    for name in [*names, "Bengal_9"]:  # Bengal_9: in images/ but in no list
        write_image(root / "images" / f"{name}.jpg", size=(16, 16))
    (root / "images" / "Abyssinian_1.mat").write_bytes(b"MATLAB")  # the original set has such files
    lines = {
        "Abyssinian_1": "1 1 1",
        "Abyssinian_2": "1 1 1",
        "american_bulldog_1": "2 2 1",
        "american_bulldog_2": "2 2 1",
        "Bengal_1": "6 1 4",
        "Bengal_2": "6 1 4",
    }
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    header = "#Image CLASS-ID SPECIES BREED ID\n"
    (annotations / "list.txt").write_text(
        header + "".join(f"{n} {lines[n]}\n" for n in names), encoding="utf-8"
    )
    trainval = ["Abyssinian_1", "american_bulldog_1", "Bengal_1"]
    test = ["Abyssinian_2", "american_bulldog_2", "Bengal_2"]
    (annotations / "trainval.txt").write_text(
        "".join(f"{n} {lines[n]}\n" for n in trainval), encoding="utf-8"
    )
    (annotations / "test.txt").write_text("".join(f"{n} {lines[n]}\n" for n in test), encoding="utf-8")
    xmls = annotations / "xmls"
    write_xml(xmls / "Abyssinian_1.xml", voc_xml("Abyssinian_1.jpg", [("cat", (11, 21, 40, 60))]))
    write_xml(xmls / "american_bulldog_1.xml", voc_xml("american_bulldog_1.jpg", [("cat", (1, 1, 9, 9))]))
    write_xml(
        xmls / "Bengal_1.xml", voc_xml("Bengal_1.jpg", [("cat", (1, 1, 9, 9)), ("cat", (20, 20, 30, 30))])
    )
    return root


def test_pets_layout(tmp_path: Path) -> None:
    root = make_pets(tmp_path / "pets")
    assert detect_format(root) == "voc"
    table = read_voc(root)
    assert table.classes == ["Abyssinian", "american_bulldog", "Bengal"]  # CLASS-ID order
    samples = {s.path.stem: s for s in table}
    assert len(table) == 7
    first = samples["Abyssinian_1"]
    assert (first.label, first.split, first.box_labels, first.source) == (
        "Abyssinian",
        "train",
        ("cat",),
        "annotations/xmls/Abyssinian_1.xml",
    )
    np.testing.assert_array_equal(first.boxes, [[10, 20, 40, 60]])
    assert samples["american_bulldog_2"].split == "test" and not samples["american_bulldog_2"].has_box
    assert samples["Bengal_9"].label == "Bengal" and samples["Bengal_9"].split is None
    (unlisted,) = by_kind(table, "unlisted_image")
    assert unlisted.source == "images/Bengal_9.jpg" and unlisted.severity is Severity.WARNING
    (multiple,) = by_kind(table, "multiple_objects")
    assert multiple.source == "annotations/xmls/Bengal_1.xml" and "2 objects" in multiple.message
    (non_image,) = by_kind(table, "non_image_file")
    assert non_image.source == "images/Abyssinian_1.mat" and non_image.severity is Severity.INFO
    (species,) = by_kind(table, "species_mismatch")  # a bulldog's head labelled "cat"
    assert species.source == "annotations/xmls/american_bulldog_1.xml"
    # test images have no XML by design: one summary, not one line each; other box-less images each
    no_box = by_kind(table, "no_box")
    assert [p.path for p in no_box if p.path] == [str(root / "images" / "Bengal_9.jpg")]
    summary = [p for p in no_box if p.path is None]
    assert len(summary) == 1 and summary[0].message.startswith("3 test images")


def test_pets_listed_image_missing(tmp_path: Path) -> None:
    root = make_pets(tmp_path)
    (root / "images" / "Bengal_2.jpg").unlink()
    table = read_voc(root)
    (missing,) = by_kind(table, "missing_file")
    assert missing.source == "annotations/list.txt line 7" and missing.severity is Severity.ERROR
    assert "Bengal_2" not in {s.path.stem for s in table}


def test_not_voc(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.jpg")
    assert sniff_voc(tmp_path) == 0
    with pytest.raises(DatasetError, match="VOC"):
        read_voc(tmp_path)


@pytest.mark.shared_data
def test_shared_pets(shared_datasets: Path) -> None:
    root = shared_dataset(shared_datasets, "oxford-pets-sample")
    assert detect_format(root) == "voc"
    table = read_voc(root)
    assert len(table) == 540 and table.classes == ["Abyssinian", "american_bulldog", "Bengal"]
    assert [p.source for p in by_kind(table, "multiple_objects")] == ["annotations/xmls/Bengal_105.xml"]
    assert "images/Abyssinian_34.jpg" in {p.source for p in by_kind(table, "unlisted_image")}
    assert sum(s.has_box for s in table) == 236  # one per XML file
    assert not table.errors()
