"""Stanford Cars crops reader and the crop/box cross-check run by both Stanford readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from carid.data.readers import DatasetError, detect_format
from carid.data.readers._stanford_crops_table import sniff_stanford_crops
from carid.data.readers._stanford_cross_check import check_crops_against_boxes
from carid.data.readers._stanford_devkit import read_stanford_annotations
from carid.data.readers.stanford import read_stanford, sniff_stanford
from carid.data.readers.stanford_crops import read_stanford_crops
from carid.data.samples import Severity
from tests.conftest import shared_dataset, write_image
from tests.data.readers.test_stanford import CLASS_NAMES, kinds, write_annos, write_meta

# --- crops ---------------------------------------------------------------------------------------


def make_crops(root: Path, rows: list[tuple[str, int, str, tuple[int, int]]]) -> Path:
    """rows: (fname, class_id, class_name, crop size)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["fname,class_id,class_name"] + [f"{fname},{cid},{name}" for fname, cid, name, _ in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for fname, _, _, size in rows:
        write_image(root / "images" / fname, size=size)
    return root


def test_crops_reader(tmp_path: Path) -> None:
    root = make_crops(
        tmp_path / "crops",
        [
            ("00001.jpg", 2, "Beta", (30, 20)),
            ("00002.jpg", 1, "Alpha", (30, 20)),
            ("00003.jpg", 3, "Aardvark", (9, 9)),
        ],
    )
    (root / "images" / "00003.jpg").unlink()
    write_image(root / "images" / "99999.jpg")
    with (root / "labels.csv").open("a", encoding="utf-8") as handle:
        handle.write("00004.jpg,x,Beta\n")
    assert sniff_stanford_crops(root) == 2 and sniff_stanford(root) == 0
    table = read_stanford_crops(root, cross_check=False)
    assert table.format == "stanford-crops"
    assert table.classes == ["Alpha", "Beta", "Aardvark"]  # by class_id, not by name
    assert [(s.path.name, s.label, s.has_box) for s in table] == [
        ("00001.jpg", "Beta", False),
        ("00002.jpg", "Alpha", False),
    ]
    assert table.samples[0].source == "labels.csv line 2"
    by_kind = {p.kind: p for p in table.problems}
    assert (
        by_kind["missing_file"].severity is Severity.ERROR
        and by_kind["missing_file"].source == "labels.csv line 4"
    )
    assert by_kind["unlisted_image"].source == "images/99999.jpg"
    assert by_kind["bad_row"].source == "labels.csv line 5"


def test_crops_missing_column_is_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("fname,class_name\na.jpg,Alpha\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"labels\.csv.*class_id"):
        read_stanford_crops(tmp_path)


def make_pair(base: Path) -> tuple[Path, Path]:
    """A devkit without photos and its crops as siblings.

    Row 1: box 100x40 px (x 40..140) in a photo 100 px wide: the crop was clipped at x=100, so it is
    60x40. Row 2: box 200x100 inside the photo, crop shrunk by half to 100x50 (same aspect: fine).
    Row 3: box 200x100 in a photo 150 px wide, crop clipped to 150x100 and shrunk to 75x50.
    """
    devkit = base / "stanford-cars-devkit"
    write_meta(devkit / "cars_meta.mat")
    write_annos(
        devkit / "cars_train_annos.mat",
        [
            (41, 11, 140, 50, 1, "00001.jpg"),
            (1, 1, 200, 100, 2, "00002.jpg"),
            (1, 1, 200, 100, 3, "00003.jpg"),
        ],
    )
    crops = make_crops(
        base / "stanford-cars-crops",
        [
            ("00001.jpg", 1, CLASS_NAMES[0], (60, 40)),
            ("00002.jpg", 2, CLASS_NAMES[1], (100, 50)),
            ("00003.jpg", 3, CLASS_NAMES[2], (75, 50)),
        ],
    )
    return devkit, crops


def test_crops_reader_finds_box_beyond_photo_via_sibling_devkit(tmp_path: Path) -> None:
    _, crops = make_pair(tmp_path)
    table = read_stanford_crops(crops)
    found = [p for p in table.problems if p.kind == "box_exceeds_photo"]
    assert [p.path for p in found] == [
        str(crops / "images" / "00001.jpg"),
        str(crops / "images" / "00003.jpg"),
    ]
    assert all(p.severity is Severity.WARNING for p in found)
    first, third = (p.message for p in found)
    assert first.startswith("00001.jpg: official box 100x40 px (cars_train_annos.mat row 1)")
    assert "(60x40)" in first and "about 40 px" in first and "about 100 px wide" in first
    assert "(75x50)" in third and "about 50 px" in third and "about 150 px wide" in third
    notes = [p for p in table.problems if p.kind == "cross_reference"]
    assert (
        len(notes) == 1 and notes[0].severity is Severity.INFO and "stanford-cars-devkit" in notes[0].message
    )
    assert len(table) == 3  # a warning keeps the crop


def test_devkit_reader_checks_missing_photos_against_sibling_crops(tmp_path: Path) -> None:
    devkit, crops = make_pair(tmp_path)
    table = read_stanford(devkit)
    assert len(table) == 0 and kinds(table).count("missing_file") == 3
    found = [p for p in table.problems if p.kind == "box_exceeds_photo"]
    assert [p.source for p in found] == ["cars_train_annos.mat row 1", "cars_train_annos.mat row 3"]
    assert found[0].path == str(devkit / "cars_train" / "00001.jpg")
    assert any(p.kind == "cross_reference" and str(crops) in p.message for p in table.problems)


def test_cross_check_can_be_explicit_or_off(tmp_path: Path) -> None:
    devkit, crops = make_pair(tmp_path)
    moved = tmp_path / "elsewhere" / "crops"
    moved.parent.mkdir()
    crops.rename(moved)
    assert "box_exceeds_photo" not in kinds(read_stanford(devkit))  # no sibling any more
    assert "cross_reference" in kinds(read_stanford(devkit))  # ... and that is said
    assert kinds(read_stanford(devkit, crops=moved)).count("box_exceeds_photo") == 2
    assert kinds(read_stanford_crops(moved, annotations=devkit)).count("box_exceeds_photo") == 2
    annotations = read_stanford_annotations(devkit)
    assert kinds(read_stanford_crops(moved, annotations=annotations)).count("box_exceeds_photo") == 2
    assert "box_exceeds_photo" not in kinds(read_stanford_crops(moved, annotations=devkit, cross_check=False))
    assert "cross_reference" not in kinds(read_stanford(devkit, crops=moved, cross_check=False))


def test_check_crops_against_boxes_skips_label_mismatches(tmp_path: Path) -> None:
    devkit, crops = make_pair(tmp_path)
    annotations = read_stanford_annotations(devkit)
    assert len(annotations) == 3  # every row, though no photo is present
    crop_table = read_stanford_crops(crops, cross_check=False)
    relabelled = crop_table.with_samples(
        s.with_(label="Other") if s.path.name == "00001.jpg" else s for s in crop_table
    )
    result = check_crops_against_boxes(relabelled, annotations)
    assert result.compared == 2 and result.unmatched == 0
    assert sorted(p.kind for p in result.problems) == ["box_exceeds_photo", "crop_label_mismatch"]
    assert result.to_dict()["compared"] == 2


# --- the shared real datasets ----------------------------------------------------------------------


@pytest.mark.shared_data
def test_shared_crops(shared_datasets: Path) -> None:
    root = shared_dataset(shared_datasets, "stanford-cars-crops")
    shared_dataset(shared_datasets, "stanford-cars-devkit")
    assert detect_format(root) == "stanford-crops"
    table = read_stanford_crops(root)
    assert len(table) == 6509 and len(table.classes) == 196
    assert table.classes[0] == "AM General Hummer SUV 2000"  # class_id 1 first
    found = [p for p in table.problems if p.kind == "box_exceeds_photo"]
    assert [Path(p.path).name for p in found] == ["07389.jpg"]
    assert "cars_train_annos.mat row 7389" in found[0].message
    assert not table.errors()
