"""CSV box reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carid.data.readers import DatasetError, detect_format, read_dataset
from carid.data.readers.csvboxes import read_csv_boxes, sniff_csv_boxes
from carid.data.samples import Severity
from tests.conftest import shared_dataset, write_image

ROWS = """image_id,xmin,ymin,xmax,ymax
f1.jpg,10.5,20,30.25,40
f1.jpg,50,60,70,80
f2.jpg,,,,
f3.jpg,1,2,abc,4
f4.jpg,1,2,3,4
f5.jpg,-3,2,30,40
f6.jpg,30,2,10,40
"""


def make_frames(root: Path, rows: str = ROWS) -> Path:
    for name in ("f1", "f2", "f3", "f5", "f6", "f7"):
        write_image(root / "images" / f"{name}.jpg", size=(32, 24))
    (root / "boxes.csv").write_text(rows, encoding="utf-8")
    return root


def test_box_csv(tmp_path: Path) -> None:
    root = make_frames(tmp_path)
    assert sniff_csv_boxes(root) == 2 and sniff_csv_boxes(root / "boxes.csv") == 2
    assert detect_format(root) == "csv-boxes"
    table = read_csv_boxes(root)
    samples = {s.path.name: s for s in table}
    assert sorted(samples) == ["f1.jpg", "f2.jpg", "f5.jpg", "f7.jpg"]
    f1 = samples["f1.jpg"]
    np.testing.assert_allclose(f1.boxes, [[10.5, 20, 30.25, 40], [50, 60, 70, 80]])
    assert (f1.label, f1.box_labels, f1.source, f1.split) == (None, ("car", "car"), "boxes.csv line 2", None)
    assert f1.path == root / "images" / "f1.jpg"
    assert table.classes == []
    np.testing.assert_array_equal(samples["f5.jpg"].boxes, [[0, 2, 30, 40]])
    assert not samples["f2.jpg"].has_box and not samples["f7.jpg"].has_box
    problems = {(p.kind, p.source, p.severity) for p in table.problems}
    assert problems == {
        ("no_box", "boxes.csv line 4", Severity.INFO),  # listed with empty coordinates
        ("no_box", "images/f7.jpg", Severity.INFO),  # not listed at all
        ("bad_row", "boxes.csv line 5", Severity.ERROR),
        ("missing_file", "boxes.csv line 6", Severity.ERROR),
        ("box_outside_image", "boxes.csv line 7", Severity.WARNING),
        ("degenerate_box", "boxes.csv line 8", Severity.ERROR),
    }
    bad = next(p for p in table.problems if p.kind == "bad_row")
    assert "abc" in bad.message and bad.path == str(root / "images" / "f3.jpg")
    assert table.usable().samples == table.samples  # excluded images are already out


def test_label_column_and_split_from_name(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    (tmp_path / "train.csv").write_text(
        "filename,xmin,ymin,xmax,ymax,class\na.jpg,0,0,10,10,sedan\na.jpg,0,0,20,20,suv\nb.jpg,0,0,5,5,sedan\n",
        encoding="utf-8",
    )
    table = read_csv_boxes(tmp_path, box_label="vehicle")
    assert table.classes == ["sedan", "suv"]
    assert [(s.path.name, s.label, s.box_labels, s.split) for s in table] == [
        ("a.jpg", "suv", ("sedan", "suv"), "train"),
        ("b.jpg", "sedan", ("sedan",), "train"),
    ]
    assert [p.kind for p in table.problems] == ["mixed_object_classes"]


def test_missing_column_is_a_dataset_error(tmp_path: Path) -> None:
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text("image_id,xmin,ymin,xmax\nf1.jpg,1,2,3\n", encoding="utf-8")
    assert sniff_csv_boxes(tmp_path) == 2, (
        "meant as a box CSV: claimed, so that reading it says what is missing"
    )
    with pytest.raises(DatasetError) as error:
        read_csv_boxes(csv_file)
    assert str(csv_file) in str(error.value) and "ymax" in str(error.value)
    with pytest.raises(DatasetError, match=r"boxes\.csv lacks ymax"):
        read_csv_boxes(tmp_path)


def test_a_box_csv_missing_a_column_is_not_read_as_a_folder_dataset(tmp_path: Path) -> None:
    root = make_frames(tmp_path / "frames", rows="image_id,xmin,ymin,xmax\nf1.jpg,1,2,3\n")
    assert sniff_csv_boxes(root) == 2 and detect_format(root) == "csv-boxes", "not a folder dataset"
    with pytest.raises(DatasetError, match=r"boxes\.csv lacks ymax"):
        read_dataset(root)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "list.csv").write_text("filename,comment\na.jpg,nice\n", encoding="utf-8")
    assert sniff_csv_boxes(tmp_path / "notes") == 0, "a CSV with no box column is no box CSV"


def test_an_incomplete_csv_beside_a_complete_one_is_an_error_naming_it(tmp_path: Path) -> None:
    root = make_frames(tmp_path)
    (root / "val.csv").write_text("image_id,xmin,ymin\nf7.jpg,1,2\n", encoding="utf-8")
    table = read_csv_boxes(root)
    assert len(table) == 4
    bad = [p for p in table.problems if p.kind == "bad_csv"]
    assert [(p.source, p.severity) for p in bad] == [("val.csv", Severity.ERROR)]
    assert "xmax, ymax" in bad[0].message


@pytest.mark.shared_data
def test_shared_car_frames(shared_datasets: Path) -> None:
    root = shared_dataset(shared_datasets, "car-frames")
    assert detect_format(root) == "csv-boxes"
    table = read_csv_boxes(root)
    assert len(table) == 384
    assert sum(not s.has_box for s in table) == 100
    assert sum(p.kind == "no_box" for p in table.problems) == 100
    assert not table.errors()
