"""YOLO txt reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carid.data.readers import DatasetError, detect_format
from carid.data.readers.yolo import read_yolo, sniff_yolo
from carid.data.samples import Severity
from tests.conftest import write_image


def write_labels(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_yolo(root: Path) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("names:\n  0: sedan\n  1: suv\n", encoding="utf-8")
    for name in ("a", "b", "c", "d", "e"):
        write_image(root / "images" / f"{name}.jpg", size=(100, 50))
    (root / "images" / "f.jpg").write_bytes(b"garbage, not an image")
    write_labels(root / "labels" / "a.txt", "0 0.5 0.5 0.2 0.4\n1 0.5 0.5 0.8 0.8\n")
    write_labels(root / "labels" / "b.txt", "0 0.5 0.5 0.2\n")  # 4 values
    write_labels(root / "labels" / "c.txt", "5 0.5 0.5 0.2 0.4\n")  # class 5 of 2
    write_labels(root / "labels" / "d.txt", "")
    write_labels(root / "labels" / "f.txt", "0 0.5 0.5 0.2 0.4\n")
    write_labels(root / "labels" / "z.txt", "0 0.5 0.5 0.2 0.4\n")  # no image z
    return root


def test_yolo(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    assert sniff_yolo(root) == 2 and detect_format(root) == "yolo"
    table = read_yolo(root)
    assert table.classes == ["sedan", "suv"]
    samples = {s.path.name: s for s in table}
    assert sorted(samples) == ["a.jpg", "d.jpg", "e.jpg"]
    a = samples["a.jpg"]
    # cx 50, cy 25, w 20, h 20 -> [40, 15, 60, 35]; the second box is 80x40 around the centre
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [10, 5, 90, 45]])
    assert (a.label, a.box_labels, a.width, a.height, a.source) == (
        "suv",
        ("sedan", "suv"),
        100,
        50,
        "labels/a.txt",
    )
    assert not samples["d.jpg"].has_box and not samples["e.jpg"].has_box
    problems = {(p.kind, p.source, p.severity) for p in table.problems}
    assert problems == {
        ("mixed_object_classes", "labels/a.txt", Severity.WARNING),
        ("bad_label_line", "labels/b.txt line 1", Severity.ERROR),
        ("unknown_class", "labels/c.txt line 1", Severity.ERROR),
        ("no_box", "labels/d.txt", Severity.INFO),
        ("no_box", "images/e.jpg", Severity.INFO),
        ("not_an_image", "labels/f.txt", Severity.ERROR),
        ("orphan_label", "labels/z.txt", Severity.WARNING),
    }
    bad = next(p for p in table.problems if p.kind == "bad_label_line")
    assert "0 0.5 0.5 0.2" in bad.message and bad.path == str(root / "images" / "b.jpg")


def test_yolo_split_layout_with_classes_txt(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("car\n", encoding="utf-8")
    for split in ("train", "val"):
        write_image(tmp_path / "images" / split / f"{split}.jpg", size=(10, 10))
        write_labels(
            tmp_path / "labels" / split / f"{split}.txt", "0 0.5 0.5 1.2 0.5\n"
        )  # wider than the image
    write_image(tmp_path / "images" / "train" / "more" / "x.jpg")  # not where YOLO looks
    table = read_yolo(tmp_path)
    assert [(s.path.name, s.split, s.label) for s in table] == [
        ("train.jpg", "train", "car"),
        ("val.jpg", "val", "car"),
    ]
    np.testing.assert_allclose(table.samples[0].boxes, [[0, 2.5, 10, 7.5]])
    assert [(p.kind, p.source) for p in table.problems] == [
        ("unexpected_folder", "images/train/more"),
        ("box_outside_image", "labels/train/train.txt"),
        ("box_outside_image", "labels/val/val.txt"),
    ]


def test_yolo_without_names(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "images" / "a.jpg", size=(10, 10))
    write_labels(tmp_path / "train" / "labels" / "a.txt", "2 0.5 0.5 0.2 0.2\n")
    table = read_yolo(tmp_path)
    assert table.classes == ["class 0", "class 1", "class 2"]
    assert table.samples[0].label == "class 2" and table.samples[0].split == "train"
    assert [p.kind for p in table.problems] == ["no_class_names"]


def test_not_yolo(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.jpg")
    assert sniff_yolo(tmp_path) == 0
    with pytest.raises(DatasetError, match="labels/"):
        read_yolo(tmp_path)
