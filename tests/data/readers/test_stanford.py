"""Stanford Cars devkit reader: .mat and CSV layouts, bad rows, and the shared devkit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from carid.data.readers import DatasetError, detect_format
from carid.data.readers.stanford import read_stanford, sniff_stanford
from carid.data.samples import Severity
from tests.conftest import shared_dataset, write_image

CLASS_NAMES = ["Zeta Roadster 2012", "Alpha Van 2010", "Mid Sedan 2011"]  # deliberately not sorted


def write_annos(path: Path, rows: list[tuple], with_class: bool = True) -> Path:
    """rows: (x1, y1, x2, y2, class, fname) or, without class, (x1, y1, x2, y2, fname); 1-based inclusive."""
    names = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", *(["class"] if with_class else []), "fname"]
    table = np.array([tuple(row) for row in rows], dtype=[(name, "O") for name in names])
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"annotations": table})
    return path


def write_meta(path: Path, names: list[str] = CLASS_NAMES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"class_names": np.array(names, dtype=object)})
    return path


def make_devkit(root: Path) -> Path:
    """3 train rows (00002.jpg has no photo), 2 test rows; photos in cars_train/ and cars_test/."""
    write_meta(root / "cars_meta.mat")
    write_annos(
        root / "cars_train_annos.mat",
        [(1, 1, 10, 20, 1, "00001.jpg"), (5, 6, 30, 40, 2, "00002.jpg"), (11, 21, 40, 45, 3, "00003.jpg")],
    )
    write_annos(
        root / "cars_test_annos_withlabels.mat",
        [(2, 3, 20, 30, 2, "00001.jpg"), (1, 1, 5, 5, 1, "00002.jpg")],
    )
    for name in ("00001.jpg", "00003.jpg"):
        write_image(root / "cars_train" / name, size=(50, 50))
    for name in ("00001.jpg", "00002.jpg"):
        write_image(root / "cars_test" / name, size=(40, 40))
    return root


def kinds(table) -> list[str]:
    return [p.kind for p in table.problems]


def test_devkit_mat_layout(tmp_path: Path) -> None:
    table = read_stanford(make_devkit(tmp_path / "devkit"), cross_check=False)
    assert table.format == "stanford"
    assert table.classes == CLASS_NAMES  # cars_meta.mat order, not sorted
    by_key = {(s.split, s.path.name): s for s in table}
    assert sorted(by_key) == [
        ("test", "00001.jpg"),
        ("test", "00002.jpg"),
        ("train", "00001.jpg"),
        ("train", "00003.jpg"),
    ]
    first = by_key[("train", "00001.jpg")]
    np.testing.assert_array_equal(first.boxes, [[0, 0, 10, 20]])  # 1-based inclusive -> xyxy
    assert first.label == "Zeta Roadster 2012" and first.box_labels == ("Zeta Roadster 2012",)
    assert first.source == "cars_train_annos.mat row 1"
    assert first.path == tmp_path / "devkit" / "cars_train" / "00001.jpg" and first.path.is_absolute()
    assert first.width is None and first.height is None  # readers do not open images
    assert by_key[("train", "00003.jpg")].label == "Mid Sedan 2011"
    np.testing.assert_array_equal(by_key[("test", "00001.jpg")].boxes, [[1, 2, 20, 30]])
    missing = [p for p in table.problems if p.kind == "missing_file"]
    assert len(missing) == 1
    assert missing[0].severity is Severity.ERROR
    assert missing[0].source == "cars_train_annos.mat row 2"
    assert missing[0].path == str(tmp_path / "devkit" / "cars_train" / "00002.jpg")
    assert "00002.jpg" in missing[0].message


def test_devkit_subfolder_with_photos_one_level_up(tmp_path: Path) -> None:
    root = tmp_path / "stanford"
    write_meta(root / "devkit" / "cars_meta.mat")
    write_annos(root / "devkit" / "cars_train_annos.mat", [(1, 1, 10, 10, 1, "00001.jpg")])
    write_image(root / "cars_train" / "00001.jpg")
    assert sniff_stanford(root) == 2
    table = read_stanford(root, cross_check=False)
    assert [s.path for s in table] == [root / "cars_train" / "00001.jpg"]
    assert "missing_file" not in kinds(table)
    # the devkit folder itself, with photos in ../cars_train
    assert [s.path for s in read_stanford(root / "devkit", cross_check=False)] == [
        root / "cars_train" / "00001.jpg"
    ]


def test_kaggle_nested_photo_folder(tmp_path: Path) -> None:
    write_meta(tmp_path / "cars_meta.mat")
    write_annos(tmp_path / "cars_train_annos.mat", [(1, 1, 10, 10, 2, "00001.jpg")])
    write_image(tmp_path / "cars_train" / "cars_train" / "00001.jpg")
    table = read_stanford(tmp_path, cross_check=False)
    assert [s.path for s in table] == [tmp_path / "cars_train" / "cars_train" / "00001.jpg"]
    assert table.samples[0].label == "Alpha Van 2010"


def test_unlabelled_test_annotations(tmp_path: Path) -> None:
    write_meta(tmp_path / "cars_meta.mat")
    write_annos(tmp_path / "cars_test_annos.mat", [(1, 1, 10, 10, "00001.jpg")], with_class=False)
    write_image(tmp_path / "cars_test" / "00001.jpg")
    table = read_stanford(tmp_path, cross_check=False)
    assert len(table) == 1
    assert table.samples[0].label is None and table.samples[0].split == "test"
    # with the labelled file beside it, the unlabelled one is not read, and that is said
    write_annos(tmp_path / "cars_test_annos_withlabels.mat", [(1, 1, 10, 10, 3, "00001.jpg")])
    table = read_stanford(tmp_path, cross_check=False)
    assert [s.label for s in table] == ["Mid Sedan 2011"]
    ignored = [p for p in table.problems if p.kind == "file_ignored"]
    assert len(ignored) == 1 and ignored[0].source == "cars_test_annos.mat"


def test_degenerate_negative_and_unknown_class_rows(tmp_path: Path) -> None:
    write_meta(tmp_path / "cars_meta.mat")
    write_annos(
        tmp_path / "cars_train_annos.mat",
        [
            (0, 1, 10, 10, 1, "00001.jpg"),  # x1 = 0: one pixel left of the photo
            (20, 5, 10, 30, 1, "00002.jpg"),  # x2 < x1
            (1, 1, 10, 10, 9, "00003.jpg"),  # class 9 of 3
        ],
    )
    for name in ("00001.jpg", "00002.jpg", "00003.jpg"):
        write_image(tmp_path / "cars_train" / name)
    table = read_stanford(tmp_path, cross_check=False)
    assert [s.path.name for s in table] == ["00001.jpg"]
    np.testing.assert_array_equal(table.samples[0].boxes, [[0, 0, 10, 10]])  # clipped at 0
    by_kind = {p.kind: p for p in table.problems}
    assert by_kind["box_outside_image"].severity is Severity.WARNING
    assert by_kind["box_outside_image"].source == "cars_train_annos.mat row 1"
    assert by_kind["degenerate_box"].severity is Severity.ERROR
    assert by_kind["degenerate_box"].source == "cars_train_annos.mat row 2"
    assert by_kind["unknown_class"].severity is Severity.ERROR
    assert (
        "9" in by_kind["unknown_class"].message
        and by_kind["unknown_class"].source == "cars_train_annos.mat row 3"
    )


def test_mat_without_required_field_is_a_dataset_error(tmp_path: Path) -> None:
    table = np.array(
        [(1, 1, 10, "00001.jpg")], dtype=[(n, "O") for n in ("bbox_x1", "bbox_y1", "bbox_x2", "fname")]
    )
    scipy.io.savemat(tmp_path / "cars_train_annos.mat", {"annotations": table})
    with pytest.raises(DatasetError, match=r"cars_train_annos\.mat.*bbox_y2"):
        read_stanford(tmp_path)


def test_csv_layout_with_class_names_and_split(tmp_path: Path) -> None:
    (tmp_path / "annotations.csv").write_text(
        "fname,bbox_x1,bbox_y1,bbox_x2,bbox_y2,class,class_name,split\n"
        "00001.jpg,1,1,10,20,2,Beta Coupe 2009,train\n"
        "00002.jpg,3,4,30,40,1,Gamma SUV 2001,test\n"
        "00003.jpg,abc,4,30,40,1,Gamma SUV 2001,train\n",
        encoding="utf-8",
    )
    write_image(tmp_path / "cars_train" / "00001.jpg")
    write_image(tmp_path / "cars_train" / "00003.jpg")
    write_image(tmp_path / "cars_test" / "00002.jpg")
    assert detect_format(tmp_path) == "stanford"
    table = read_stanford(tmp_path, cross_check=False)
    assert table.classes == ["Gamma SUV 2001", "Beta Coupe 2009"]  # ordered by class id
    assert [(s.path.name, s.label, s.split) for s in table] == [
        ("00001.jpg", "Beta Coupe 2009", "train"),
        ("00002.jpg", "Gamma SUV 2001", "test"),
    ]
    np.testing.assert_array_equal(table.samples[0].boxes, [[0, 0, 10, 20]])
    bad = [p for p in table.problems if p.kind == "bad_row"]
    assert len(bad) == 1 and bad[0].source == "annotations.csv line 4" and "abc" in bad[0].message


def test_headerless_kaggle_csv_with_names_file(tmp_path: Path) -> None:
    (tmp_path / "anno_train.csv").write_text("00001.jpg,1,1,10,20,2\n", encoding="utf-8")
    (tmp_path / "names.csv").write_text("First Car 2001\nSecond, Car 2002\n", encoding="utf-8")
    write_image(tmp_path / "cars_train" / "00001.jpg")
    assert sniff_stanford(tmp_path / "anno_train.csv") == 2
    table = read_stanford(tmp_path, cross_check=False)
    assert table.classes == ["First Car 2001", "Second, Car 2002"]
    assert [(s.label, s.split) for s in table] == [("Second, Car 2002", "train")]


def test_csv_missing_columns_is_a_dataset_error(tmp_path: Path) -> None:
    csv_file = tmp_path / "cars.csv"
    csv_file.write_text("fname,bbox_x1,bbox_y1,class\n00001.jpg,1,1,1\n", encoding="utf-8")
    assert sniff_stanford(tmp_path) == 0
    with pytest.raises(DatasetError) as error:
        read_stanford(csv_file)
    assert "cars.csv" in str(error.value) and "bbox_x2" in str(error.value) and "bbox_y2" in str(error.value)


# --- the shared real datasets ----------------------------------------------------------------------


@pytest.mark.shared_data
def test_shared_devkit(shared_datasets: Path) -> None:
    root = shared_dataset(shared_datasets, "stanford-cars-devkit")
    shared_dataset(shared_datasets, "stanford-cars-crops")
    assert detect_format(root) == "stanford"
    table = read_stanford(root)
    assert len(table) == 10 and len(table.classes) == 196
    assert sorted(s.path.name for s in table) == [f"045{i}.jpg" for i in range(30, 40)]
    assert kinds(table).count("missing_file") == 8144 + 8041 - 10
    found = [p for p in table.problems if p.kind == "box_exceeds_photo"]
    assert [p.source for p in found] == ["cars_train_annos.mat row 7389"]
    assert "07389.jpg" in found[0].message and "662x431" in found[0].message and "384x318" in found[0].message
