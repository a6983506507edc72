"""Class-per-folder reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carid.data.readers import DatasetError, detect_format
from carid.data.readers.folder import read_folder, sniff_folder
from carid.data.samples import Severity
from tests.conftest import shared_dataset, write_image
from tests.data.bad_entries import deny_listing, fifo, really_unreadable, symlink_loop, undecodable_file


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


# --- entries that must not stop the reader (issue 23) ------------------------------------------


def _two_classes(root: Path) -> Path:
    for name in ("sedan", "suv"):
        for index in range(2):
            write_image(root / name / f"{index}.jpg", seed=index)
    return root


def test_a_symlink_loop_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    root = _two_classes(tmp_path / "cars")
    symlink_loop(root / "sedan")
    assert sniff_folder(root) == 1
    table = read_folder(root)
    assert sorted(s.path.relative_to(root.resolve()).as_posix() for s in table) == [
        "sedan/0.jpg",
        "sedan/1.jpg",
        "suv/0.jpg",
        "suv/1.jpg",
    ], "each image once: the link back up is not followed round"
    loops = {p.source: p for p in table.problems if p.kind == "symlink_loop"}
    assert set(loops) == {"sedan/loop", "sedan/up"}
    assert all(p.severity is Severity.WARNING for p in loops.values())
    assert "sedan" in loops["sedan/up"].message


def test_an_unreadable_subfolder_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _two_classes(tmp_path / "cars")
    write_image(root / "sedan" / "locked" / "2.jpg")
    write_image(root / "wagon" / "3.jpg")
    deny_listing(monkeypatch, root / "sedan" / "locked")
    deny_listing(monkeypatch, root / "wagon")
    table = read_folder(root)
    assert sorted(s.path.name for s in table) == ["0.jpg", "0.jpg", "1.jpg", "1.jpg"]
    unreadable = {p.source: p for p in table.problems if p.kind == "unreadable_folder"}
    assert set(unreadable) == {"sedan/locked", "wagon"}
    assert all(p.severity is Severity.ERROR for p in unreadable.values())
    assert "Permission denied" in unreadable["wagon"].message
    assert not any(p.kind == "empty_class_folder" for p in table.problems), "unreadable, not empty"


def test_a_real_chmod_000_folder(tmp_path: Path) -> None:
    root = _two_classes(tmp_path / "cars")
    write_image(root / "suv" / "locked" / "2.jpg")
    if not really_unreadable(root / "suv" / "locked"):
        pytest.skip("running as root: chmod 000 does not stop us (the patched test covers it)")
    try:
        table = read_folder(root)
    finally:
        (root / "suv" / "locked").chmod(0o755)
    assert len(table) == 4
    assert [p.source for p in table.problems if p.kind == "unreadable_folder"] == ["suv/locked"]


def test_a_fifo_named_like_an_image_is_skipped_unopened(tmp_path: Path) -> None:
    root = _two_classes(tmp_path / "cars")
    fifo(root / "sedan" / "x.jpg")
    fifo(root / "y.jpg")
    table = read_folder(root)  # would hang if the pipe were opened
    assert len(table) == 4 and all(s.path.name != "x.jpg" for s in table)
    skipped = {p.source: p for p in table.problems if p.kind == "not_a_regular_file"}
    assert set(skipped) == {"sedan/x.jpg", "y.jpg"}
    assert "FIFO" in skipped["sedan/x.jpg"].message


def test_undecodable_names(tmp_path: Path) -> None:
    root = _two_classes(tmp_path / "cars")
    photo = undecodable_file(root / "sedan", (root / "sedan" / "0.jpg").read_bytes())
    odd_class = undecodable_file(root, b"", name=b"caf\xe9")  # a file; then a folder of that name
    odd_class.unlink()
    os.mkdir(odd_class)
    write_image(odd_class / "1.jpg")
    table = read_folder(root)
    assert photo in [s.path for s in table]
    assert "caf\\xe9" in table.classes, "a class name is text: its undecodable bytes shown escaped"
