"""COCO JSON reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from carid.data.readers import DatasetError, detect_format
from carid.data.readers.coco import read_coco, sniff_coco
from carid.data.samples import Severity
from tests.conftest import write_image


def coco_json() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
            {"id": 2, "file_name": "b.jpg", "width": 100, "height": 50},
            {"id": 3, "file_name": "c.jpg", "width": 100, "height": 50},
            {"id": 4, "file_name": "d.jpg", "width": 100, "height": 50},
            {"id": 5, "file_name": "e.jpg", "width": 100, "height": 50},
            {"id": 6, "file_name": "gone.jpg", "width": 100, "height": 50},
        ],
        "categories": [{"id": 3, "name": "truck"}, {"id": 1, "name": "sedan"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5]},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 50, 40]},
            {
                "id": 13,
                "image_id": 3,
                "category_id": 3,
                "bbox": [90, 40, 30, 20],
            },  # past the right/bottom edge
            {"id": 14, "image_id": 4, "category_id": 7, "bbox": [0, 0, 5, 5]},  # no category 7
            {"id": 15, "image_id": 5, "category_id": 1, "bbox": [0, 0, 100, 50], "iscrowd": 1},
            {"id": 16, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]},
        ],
    }


def make_coco(root: Path, name: str = "instances_val.json") -> Path:
    for stem in "abcde":
        write_image(root / "images" / f"{stem}.jpg", size=(100, 50))
    file = root / name
    file.write_text(json.dumps(coco_json()), encoding="utf-8")
    return file


def test_coco(tmp_path: Path) -> None:
    file = make_coco(tmp_path)
    assert sniff_coco(file) == 2 and sniff_coco(tmp_path) == 2
    assert detect_format(tmp_path) == "coco"
    table = read_coco(file)
    assert table.classes == ["sedan", "truck"]  # category-id order
    samples = {s.path.name: s for s in table}
    assert sorted(samples) == ["a.jpg", "b.jpg", "c.jpg", "e.jpg"]
    a = samples["a.jpg"]
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 15]])  # xywh -> xyxy
    assert (a.label, a.width, a.height, a.split, a.source) == (
        "sedan",
        100,
        50,
        "val",
        "instances_val.json image id 1",
    )
    assert a.path == tmp_path / "images" / "a.jpg"
    assert samples["b.jpg"].label == "truck"  # the largest box's category
    np.testing.assert_array_equal(samples["c.jpg"].boxes, [[90, 40, 100, 50]])
    assert not samples["e.jpg"].has_box  # its only annotation is a crowd region
    problems = {(p.kind, p.severity) for p in table.problems}
    assert problems == {
        ("mixed_object_classes", Severity.WARNING),
        ("box_outside_image", Severity.WARNING),
        ("unknown_class", Severity.ERROR),
        ("crowd_box", Severity.WARNING),
        ("no_box", Severity.INFO),
        ("missing_file", Severity.ERROR),
        ("bad_annotation", Severity.WARNING),  # the annotation of image 99
    }
    unknown = next(p for p in table.problems if p.kind == "unknown_class")
    assert unknown.source == "instances_val.json image id 4 annotation id 14" and "7" in unknown.message


def test_coco_layout_with_annotations_folder(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        "annotations": [],
        "categories": [],
    }
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(data), encoding="utf-8")
    write_image(tmp_path / "train2017" / "a.jpg", size=(8, 8))
    table = read_coco(tmp_path)
    assert [(s.path, s.split, s.has_box) for s in table] == [
        (tmp_path / "train2017" / "a.jpg", "train", False)
    ]


def test_broken_json_is_a_dataset_error(tmp_path: Path) -> None:
    file = tmp_path / "instances.json"
    file.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"instances\.json"):
        read_coco(file)
