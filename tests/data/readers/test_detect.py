"""Format detection: every layout is claimed by exactly one reader, folders and single files alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from carid.data.readers import DatasetError, available_formats, detect_format, get_reader, read_dataset
from tests.conftest import shared_dataset, write_image
from tests.data.readers.test_coco import make_coco
from tests.data.readers.test_csvboxes import make_frames
from tests.data.readers.test_stanford import make_devkit
from tests.data.readers.test_stanford_crops import make_crops
from tests.data.readers.test_voc import make_pets, make_plain_voc
from tests.data.readers.test_yolo import make_yolo


def make_folder(root: Path) -> Path:
    write_image(root / "train" / "mini" / "a.jpg")
    write_image(root / "train" / "yaris" / "b.jpg")
    return root


BUILDERS = {
    "stanford": lambda root: make_devkit(root),
    "stanford-crops": lambda root: make_crops(root, [("00001.jpg", 1, "Alpha", (8, 8))]),
    "voc-pets": lambda root: make_pets(root),
    "voc": lambda root: make_plain_voc(root),
    "folder": lambda root: make_folder(root),
    "csv-boxes": lambda root: make_frames(root),
    "coco": lambda root: make_coco(root).parent,
    "yolo": lambda root: make_yolo(root),
}


def test_all_formats_are_registered() -> None:
    assert set(available_formats()) == {
        "stanford",
        "stanford-crops",
        "voc",
        "folder",
        "csv-boxes",
        "coco",
        "yolo",
    }


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_each_layout_is_detected_unambiguously(tmp_path: Path, layout: str) -> None:
    root = BUILDERS[layout](tmp_path / layout)
    expected = layout.split("-pets")[0]
    assert detect_format(root) == expected
    scores = {name: get_reader(name).sniff(root) for name in available_formats()}
    assert sorted(scores.values()).count(max(scores.values())) == 1, scores
    assert read_dataset(root).format == expected


def test_single_files_are_detected(tmp_path: Path) -> None:
    devkit = make_devkit(tmp_path / "devkit")
    assert detect_format(devkit / "cars_train_annos.mat") == "stanford"
    table = read_dataset(devkit / "cars_train_annos.mat")
    assert {s.split for s in table} == {"train"}
    assert (
        detect_format(make_crops(tmp_path / "crops", [("1.jpg", 1, "A", (8, 8))]) / "labels.csv")
        == "stanford-crops"
    )
    assert detect_format(make_frames(tmp_path / "frames") / "boxes.csv") == "csv-boxes"
    assert detect_format(make_coco(tmp_path / "coco")) == "coco"


def test_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here", encoding="utf-8")
    with pytest.raises(DatasetError, match="no known dataset layout"):
        detect_format(tmp_path)


SHARED = {
    "stanford-cars-crops": "stanford-crops",
    "stanford-cars-devkit": "stanford",
    "oxford-pets-sample": "voc",
    "car-models-5": "folder",
    "car-frames": "csv-boxes",
}


@pytest.mark.parametrize("name", sorted(SHARED))
@pytest.mark.shared_data
def test_shared_datasets_are_detected(shared_datasets: Path, name: str) -> None:
    root = shared_dataset(shared_datasets, name)
    assert detect_format(root) == SHARED[name]
