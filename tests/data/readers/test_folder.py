"""Class-per-folder reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from carid.data.readers import DatasetError, detect_format
from carid.data.readers.folder import read_folder, sniff_folder
from carid.data.samples import Severity
from tests.conftest import shared_dataset, write_image


def test_class_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "sedan" / "1.jpg")
    write_image(tmp_path / "sedan" / "more" / "2.PNG", fmt="PNG")  # nested, upper-case suffix
    write_image(tmp_path / "hatchback" / "3.jpg")
    (tmp_path / "hatchback" / "broken.jpg").write_bytes(b"this is no JPEG")  # readers do not decode
    (tmp_path / "hatchback" / "notes.txt").write_text("not an image", encoding="utf-8")
    (tmp_path / "hatchback" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "empty").mkdir()
    (tmp_path / "README.md").write_text("about", encoding="utf-8")
    assert sniff_folder(tmp_path) == 1
    table = read_folder(tmp_path)
    assert table.format == "folder"
    assert table.classes == ["hatchback", "sedan"]
    assert sorted((s.path.relative_to(tmp_path).as_posix(), s.label, s.split) for s in table) == [
        ("hatchback/3.jpg", "hatchback", None),
        ("hatchback/broken.jpg", "hatchback", None),
        ("sedan/1.jpg", "sedan", None),
        ("sedan/more/2.PNG", "sedan", None),
    ]
    assert all(s.path.is_absolute() and not s.has_box for s in table)
    problems = {(p.kind, p.source, p.severity) for p in table.problems}
    assert problems == {
        ("non_image_file", "hatchback/notes.txt", Severity.WARNING),
        ("empty_class_folder", "empty", Severity.WARNING),
        ("non_image_file", "README.md", Severity.INFO),
    }
    text_problem = next(p for p in table.problems if p.source == "hatchback/notes.txt")
    assert text_problem.path == str(tmp_path / "hatchback" / "notes.txt")


def test_split_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "mini" / "a.jpg")
    write_image(tmp_path / "train" / "yaris" / "b.jpg")
    write_image(tmp_path / "valid" / "mini" / "c.jpg")
    write_image(tmp_path / "Test" / "yaris" / "d.jpg")
    write_image(tmp_path / "train" / "loose.jpg")
    write_image(tmp_path / "extra" / "x" / "e.jpg")
    table = read_folder(tmp_path)
    assert sorted((s.path.name, s.label, s.split) for s in table) == [
        ("a.jpg", "mini", "train"),
        ("b.jpg", "yaris", "train"),
        ("c.jpg", "mini", "val"),
        ("d.jpg", "yaris", "test"),
    ]
    kinds = {(p.kind, p.source) for p in table.problems}
    assert kinds == {("unexpected_folder", "extra"), ("image_outside_class_folder", "train/loose.jpg")}


def test_no_images_is_not_a_folder_dataset(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x", encoding="utf-8")
    assert sniff_folder(tmp_path) == 0
    with pytest.raises(DatasetError, match="no images"):
        read_folder(tmp_path)


@pytest.mark.shared_data
def test_shared_car_models(shared_datasets: Path) -> None:
    root = shared_dataset(shared_datasets, "car-models-5")
    assert detect_format(root) == "folder"
    table = read_folder(root)
    assert len(table) == 480 and len(table.classes) == 5
    assert {s.split for s in table} == {"train"}
    assert "mini cooper" in table.classes
