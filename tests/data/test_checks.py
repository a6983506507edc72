"""Tests for carid.data.checks (and the CheckReport it returns) on images the tests write."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from carid.config import CheckConfig
from carid.data import hashing
from carid.data.check_report import CheckReport
from carid.data.checks import run_checks
from carid.data.samples import Problem, Sample, SampleTable, Severity
from tests.conftest import shared_dataset

# Class-level checks off unless a test is about them; one process (no pool) for small tables.
QUIET = CheckConfig(min_per_class=1, imbalance_ratio=1000.0, workers=1)


def make_table(root: Path, samples: list[Sample], classes: list[str] | None = None) -> SampleTable:
    names = classes if classes is not None else sorted({s.label for s in samples if s.label is not None})
    return SampleTable(samples, names, root, "test")


def check(root: Path, samples: list[Sample], config: CheckConfig = QUIET, **kwargs) -> CheckReport:
    kwargs.setdefault("progress", False)
    return run_checks(make_table(root, samples), config, **kwargs)


def only(report: CheckReport, kind: str) -> Problem:
    found = [p for p in report.problems if p.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {[str(p) for p in report.problems]}"
    return found[0]


def kinds(report: CheckReport) -> set[str]:
    return {p.kind for p in report.problems}


def assert_excluded(report: CheckReport, path: Path) -> None:
    assert str(path) not in {str(s.path) for s in report.usable().samples}
    assert any(p.severity is Severity.ERROR and p.path == str(path) for p in report.problems)


def reencoded_copy(source: Path, target: Path, scale: float = 0.75) -> Path:
    """A resized, re-compressed copy: different bytes, same picture."""
    with Image.open(source) as image:
        small = image.resize((int(image.width * scale), int(image.height * scale)), Image.BICUBIC)
        small.save(target, quality=70)
    return target


# --- unreadable files ---------------------------------------------------------------------------------


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path, image_factory):
    good = image_factory("cars/good.jpg", size=(160, 120), seed=1)
    broken = image_factory("cars/broken.jpg", size=(160, 120), seed=2)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    report = check(tmp_path, [Sample(good, "a"), Sample(broken, "a")])
    problem = only(report, "truncated_image")
    assert problem.severity is Severity.ERROR
    assert "cars/broken.jpg" in problem.message and problem.path == str(broken)
    assert_excluded(report, broken)
    assert report.facts[1] is None and report.facts[0] is not None
    assert [s.path for s in report.usable()] == [good]


def test_text_file_named_jpg_is_not_an_image(tmp_path, image_factory):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a photo\n")
    report = check(tmp_path, [Sample(fake, "a"), Sample(image_factory("ok.jpg", seed=1), "a")])
    problem = only(report, "not_an_image")
    assert problem.severity is Severity.ERROR and "notes.jpg" in problem.message
    assert_excluded(report, fake)


def test_missing_and_empty_files_are_errors(tmp_path, image_factory):
    missing = tmp_path / "gone.jpg"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    report = check(
        tmp_path, [Sample(missing, "a"), Sample(empty, "a"), Sample(image_factory("ok.jpg", seed=1), "a")]
    )
    assert "gone.jpg" in only(report, "missing_file").message
    assert "empty.jpg" in only(report, "not_an_image").message
    assert_excluded(report, missing)
    assert_excluded(report, empty)


def test_png_named_jpg_is_a_format_mismatch_warning(tmp_path, image_factory):
    png = image_factory("disguised.jpg", size=(80, 60), seed=3, fmt="PNG")
    report = check(tmp_path, [Sample(png, "a")])
    problem = only(report, "format_mismatch")
    assert problem.severity is Severity.WARNING
    assert problem.message == "disguised.jpg: file is PNG, not JPEG as its name says"
    assert report.facts[0] is not None and report.facts[0].format == "PNG"
    assert len(report.usable()) == 1  # kept: the bytes are a fine image


def test_gif_named_jpg_reads_like_the_pets_defect(tmp_path, image_factory):
    gif = image_factory("Abyssinian_34.jpg", size=(80, 60), seed=4, fmt="GIF")
    problem = only(check(tmp_path, [Sample(gif, "Abyssinian")]), "format_mismatch")
    assert problem.message == "Abyssinian_34.jpg: file is GIF, not JPEG as its name says"


def test_tiny_image_is_excluded(tmp_path, image_factory):
    config = dataclasses.replace(QUIET, min_side=32)
    tiny = image_factory("tiny.jpg", size=(40, 20), seed=5)
    fine = image_factory("fine.jpg", size=(40, 32), seed=6)
    report = check(tmp_path, [Sample(tiny, "a"), Sample(fine, "a")], config)
    problem = only(report, "tiny_image")
    assert problem.severity is Severity.ERROR
    assert "tiny.jpg" in problem.message and "40x20" in problem.message
    assert_excluded(report, tiny)


# --- real sizes and boxes -----------------------------------------------------------------------------


def test_real_size_is_filled_in_and_size_mismatch_reported(tmp_path, image_factory):
    path = image_factory("a.jpg", size=(90, 70), seed=7)
    report = check(tmp_path, [Sample(path, "a", width=70, height=90)])
    assert (report.table.samples[0].width, report.table.samples[0].height) == (90, 70)
    problem = only(report, "size_mismatch")
    assert problem.severity is Severity.WARNING
    assert "a.jpg" in problem.message and "70x90" in problem.message and "swapped" in problem.message


def test_box_outside_the_image_is_an_error(tmp_path, image_factory):
    path = image_factory("frame.jpg", size=(100, 80), seed=8)
    report = check(tmp_path, [Sample(path, "car", boxes=[[120, 10, 150, 40]])])
    problem = only(report, "box_outside_image")
    assert problem.severity is Severity.ERROR and "frame.jpg" in problem.message
    assert_excluded(report, path)


def test_box_partly_outside_is_clipped_and_says_by_how_much(tmp_path, image_factory):
    path = image_factory("frame.jpg", size=(100, 80), seed=9)
    report = check(tmp_path, [Sample(path, "car", boxes=[[-5, -3, 60, 60], [50, 20, 112, 60]])])
    problems = [p for p in report.problems if p.kind == "box_partly_outside"]
    assert [p.severity for p in problems] == [Severity.WARNING, Severity.WARNING]
    assert all("frame.jpg" in p.message for p in problems)
    assert "5 px past the left edge, 3 px past the top edge" in problems[0].message
    assert "box 2 of 2" in problems[1].message and "12 px past the right edge" in problems[1].message
    np.testing.assert_array_equal(report.table.samples[0].boxes, [[0, 0, 60, 60], [50, 20, 100, 60]])
    assert len(report.usable()) == 1


def test_sub_pixel_overhang_is_clipped_without_a_problem(tmp_path, image_factory):
    path = image_factory("frame.jpg", size=(100, 80), seed=9)
    report = check(tmp_path, [Sample(path, "car", boxes=[[0, 0, 100.5, 80]])])
    assert report.problems == []
    np.testing.assert_array_equal(report.table.samples[0].boxes, [[0, 0, 100, 80]])


def test_degenerate_box_is_an_error(tmp_path, image_factory):
    config = dataclasses.replace(QUIET, min_box_size=2.0)
    path = image_factory("frame.jpg", size=(100, 80), seed=10)
    report = check(tmp_path, [Sample(path, "car", boxes=[[10, 10, 60, 50], [30, 20, 31, 70]])], config)
    problem = only(report, "degenerate_box")
    assert problem.severity is Severity.ERROR
    assert "frame.jpg" in problem.message and "box 2 of 2" in problem.message
    assert_excluded(report, path)


def test_box_wider_than_the_photo_is_a_warning_and_clipped(tmp_path, image_factory):
    path = image_factory("07389.jpg", size=(100, 80), seed=11)
    report = check(tmp_path, [Sample(path, "car", boxes=[[-10, 5, 130, 70]])])
    problem = only(report, "box_exceeds_photo")
    assert problem.severity is Severity.WARNING
    assert "07389.jpg" in problem.message and "140 x 65 px" in problem.message
    assert "box_partly_outside" not in kinds(report)  # one problem per box defect
    np.testing.assert_array_equal(report.table.samples[0].boxes, [[0, 5, 100, 70]])


def test_input_table_is_not_modified(tmp_path, image_factory):
    path = image_factory("frame.jpg", size=(100, 80), seed=12)
    table = make_table(tmp_path, [Sample(path, "car", boxes=[[-5, 0, 50, 50]])])
    run_checks(table, QUIET, progress=False)
    assert table.problems == [] and table.samples[0].width is None
    np.testing.assert_array_equal(table.samples[0].boxes, [[-5, 0, 50, 50]])


# --- labels and classes --------------------------------------------------------------------------------


def test_missing_and_unknown_labels_are_errors(tmp_path, image_factory):
    unlabelled = image_factory("u.jpg", seed=13)
    stranger = image_factory("s.jpg", seed=14)
    samples = [
        Sample(image_factory("ok.jpg", seed=15), "a"),
        Sample(unlabelled, None),
        Sample(stranger, "zebra"),
    ]
    report = run_checks(make_table(tmp_path, samples, classes=["a"]), QUIET, progress=False)
    assert "u.jpg" in only(report, "missing_label").message
    assert "'zebra'" in only(report, "unknown_class").message
    assert_excluded(report, unlabelled)
    assert_excluded(report, stranger)


def test_unlabelled_dataset_has_no_label_problems(tmp_path, image_factory):
    report = check(tmp_path, [Sample(image_factory("frame.jpg", seed=16), None)], CheckConfig(workers=1))
    assert report.problems == []


def test_few_samples_and_imbalance_use_usable_counts(tmp_path, image_factory):
    config = dataclasses.replace(QUIET, min_per_class=3, imbalance_ratio=2.0)
    samples = [Sample(image_factory(f"big/{i}.jpg", seed=100 + i), "big") for i in range(6)]
    samples += [Sample(image_factory(f"small/{i}.jpg", seed=200 + i), "small") for i in range(2)]
    broken = tmp_path / "small" / "broken.jpg"
    broken.write_text("not an image")
    samples.append(Sample(broken, "small"))  # excluded, so it must not count
    report = check(tmp_path, samples, config)
    few = only(report, "few_samples")
    assert few.severity is Severity.WARNING and "'small'" in few.message and "2 usable" in few.message
    imbalance = only(report, "class_imbalance")
    assert imbalance.severity is Severity.WARNING
    assert (
        "'big'" in imbalance.message and "'small'" in imbalance.message and "ratio 3.0" in imbalance.message
    )
    assert report.class_counts() == {"big": {"samples": 6, "usable": 6}, "small": {"samples": 3, "usable": 2}}


def test_balanced_classes_raise_nothing(tmp_path, image_factory):
    config = dataclasses.replace(QUIET, min_per_class=2, imbalance_ratio=2.0)
    samples = [
        Sample(image_factory(f"{c}/{i}.jpg", seed=300 + 10 * n + i), c)
        for n, c in enumerate("ab")
        for i in range(3)
    ]
    assert check(tmp_path, samples, config).problems == []


# --- duplicates and leakage ----------------------------------------------------------------------------


def test_exact_duplicate_is_a_group_and_a_warning(tmp_path, image_factory):
    original = image_factory("a/one.jpg", size=(96, 72), seed=20)
    copy = shutil.copy(original, tmp_path / "a" / "copy.jpg")
    other = image_factory("a/other.jpg", size=(96, 72), seed=21)
    report = check(tmp_path, [Sample(original, "a"), Sample(other, "a"), Sample(Path(copy), "a")])
    problem = only(report, "exact_duplicate")
    assert problem.severity is Severity.WARNING
    assert "a/one.jpg" in problem.message and "a/copy.jpg" in problem.message
    exact = [g for g in report.duplicate_groups if g.kind == "exact"]
    assert [g.indices for g in exact] == [(0, 2)]
    assert "near_duplicate" not in kinds(report)  # exact copies are not reported twice
    assert len(report.usable()) == 3


def test_near_duplicate_of_a_reencoded_copy(tmp_path, image_factory):
    original = image_factory("one.jpg", size=(160, 120), seed=22)
    resized = reencoded_copy(original, tmp_path / "one_small.jpg")
    other = image_factory("other.jpg", size=(160, 120), seed=23)
    report = check(tmp_path, [Sample(original, "a"), Sample(other, "a"), Sample(resized, "a")])
    problem = only(report, "near_duplicate")
    assert problem.severity is Severity.INFO
    assert "one.jpg" in problem.message and "one_small.jpg" in problem.message
    (group,) = report.duplicate_groups
    assert group.kind == "near" and group.indices == (0, 2)
    assert group.max_distance <= QUIET.near_duplicate_distance


def test_exact_copy_across_splits_is_leakage(tmp_path, image_factory):
    original = image_factory("train/car.jpg", size=(96, 72), seed=24)
    (tmp_path / "test").mkdir()
    copy = Path(shutil.copy(original, tmp_path / "test" / "car.jpg"))
    report = check(tmp_path, [Sample(original, "a", split="train"), Sample(copy, "a", split="test")])
    problem = only(report, "split_leakage")
    assert problem.severity is Severity.WARNING
    assert "train/car.jpg (train)" in problem.message and "test/car.jpg (test)" in problem.message
    assert problem.path == str(copy)


def test_near_copy_across_given_splits_is_leakage(tmp_path, image_factory):
    original = image_factory("x/car.jpg", size=(160, 120), seed=25)
    resized = reencoded_copy(original, tmp_path / "x" / "car_small.jpg")
    samples = [Sample(original, "a"), Sample(resized, "a")]
    assert "split_leakage" not in kinds(check(tmp_path, samples))  # no split known: no leakage
    report = check(tmp_path, samples, splits=["train", "val"])
    problem = only(report, "split_leakage")
    assert "x/car.jpg (train)" in problem.message and "x/car_small.jpg (val)" in problem.message
    assert report.splits == ("train", "val")


def test_splits_must_align_with_the_samples(tmp_path, image_factory):
    with pytest.raises(ValueError, match="2 entries but the table has 1"):
        check(tmp_path, [Sample(image_factory("a.jpg", seed=1), "a")], splits=["train", "val"])


def test_same_image_with_different_labels_conflicts(tmp_path, image_factory):
    original = image_factory("audi.jpg", size=(96, 72), seed=26)
    copy = Path(shutil.copy(original, tmp_path / "bmw.jpg"))
    report = check(tmp_path, [Sample(original, "Audi"), Sample(copy, "BMW")])
    problem = only(report, "conflicting_labels")
    assert problem.severity is Severity.WARNING
    assert "audi.jpg ('Audi')" in problem.message and "bmw.jpg ('BMW')" in problem.message


def test_a_path_listed_twice_is_reported_once_as_duplicate_path(tmp_path, image_factory):
    path = image_factory("twice.jpg", seed=27)
    report = check(tmp_path, [Sample(path, "a", source="row 1"), Sample(path, "a", source="row 2")])
    problem = only(report, "duplicate_path")
    assert "twice.jpg is listed 2 times" in problem.message and "row 2" in problem.message
    assert "exact_duplicate" not in kinds(report)
    assert report.images_opened == 1


def test_a_path_listed_in_two_splits_with_two_labels(tmp_path, image_factory):
    path = image_factory("twice.jpg", seed=28)
    samples = [
        Sample(path, "a", split="train", source="row 1"),
        Sample(path, "b", split="test", source="row 2"),
    ]
    report = check(tmp_path, samples)
    leak = only(report, "split_leakage")
    assert "twice.jpg" in leak.message and "train (row 1)" in leak.message and "test (row 2)" in leak.message
    conflict = only(report, "conflicting_labels")
    assert (
        "twice.jpg" in conflict.message
        and "'a' (row 1)" in conflict.message
        and "'b' (row 2)" in conflict.message
    )


# --- the report -------------------------------------------------------------------------------------------


@pytest.fixture
def messy_table(tmp_path, image_factory) -> SampleTable:
    """One of each defect, plus clean images: 14 samples in two splits."""
    samples = [
        Sample(image_factory(f"a/{i}.jpg", size=(96, 72), seed=400 + i), "a", split="train") for i in range(5)
    ]
    samples += [
        Sample(image_factory(f"b/{i}.jpg", size=(96, 72), seed=500 + i), "b", split="train") for i in range(3)
    ]
    broken = image_factory("b/broken.jpg", size=(96, 72), seed=600)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    fake = tmp_path / "b" / "fake.jpg"
    fake.write_text("nope")
    leaked = Path(shutil.copy(samples[0].path, tmp_path / "a" / "leaked.jpg"))
    samples += [
        Sample(broken, "b", split="train"),
        Sample(fake, "b", split="test"),
        Sample(leaked, "a", split="test"),
        Sample(image_factory("b/png.jpg", size=(96, 72), seed=601, fmt="PNG"), "b", split="test"),
        Sample(image_factory("b/tiny.jpg", size=(12, 12), seed=602), "b", split="test"),
        Sample(
            image_factory("a/boxed.jpg", size=(96, 72), seed=603),
            "a",
            boxes=[[200, 0, 250, 10]],
            split="test",
        ),
    ]
    return make_table(tmp_path, samples)


def comparable(report: CheckReport) -> dict:
    result = report.to_dict()
    result.pop("timing")
    result.pop("config")  # differs in `workers` only
    return result


def test_parallel_and_serial_give_the_same_report(messy_table, monkeypatch):
    monkeypatch.setattr(hashing, "POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(hashing, "MIN_CHUNK", 1)
    monkeypatch.setattr(hashing, "MAX_CHUNK", 3)  # several chunks, finishing in any order
    pool_runs = []
    run_pool = hashing._run_pool
    monkeypatch.setattr(hashing, "_run_pool", lambda *args: pool_runs.append(args) or run_pool(*args))
    serial = run_checks(messy_table, dataclasses.replace(QUIET, workers=1), progress=False)
    assert pool_runs == []
    parallel = run_checks(messy_table, dataclasses.replace(QUIET, workers=2), progress=False)
    assert len(pool_runs) == 1 and parallel.workers == 2
    assert comparable(parallel) == comparable(serial)
    assert parallel.facts == serial.facts


def test_nothing_is_dropped_silently(messy_table):
    report = run_checks(messy_table, QUIET, progress=False)
    kept = {str(s.path) for s in report.usable()}
    errors = [p for p in report.problems if p.severity is Severity.ERROR]
    for sample in report.table.samples:
        if str(sample.path) not in kept:
            assert any(p.path == str(sample.path) and sample.path.name in p.message for p in errors), (
                sample.path
            )
    assert len(kept) == len(messy_table) - 4  # broken, fake, tiny, boxed
    assert kinds(report) >= {
        "truncated_image",
        "not_an_image",
        "split_leakage",
        "format_mismatch",
        "tiny_image",
    }


def test_report_to_dict_is_json_and_complete(messy_table, tmp_path):
    report = run_checks(messy_table, QUIET, progress=False)
    written = report.write_json(tmp_path / "out" / "check.json")
    loaded = json.loads(written.read_text())
    assert loaded == json.loads(json.dumps(report.to_dict()))
    assert not (tmp_path / "out" / "check.json.tmp").exists()
    assert len(loaded["problems"]) == len(report.problems)
    assert loaded["problem_counts"] == report.problem_counts
    assert loaded["summary"]["samples"] == len(messy_table)
    assert loaded["summary"]["usable"] + loaded["summary"]["excluded"] == len(messy_table)
    assert loaded["summary"]["error"] == sum(p.severity is Severity.ERROR for p in report.problems)
    assert len(loaded["images"]) == len(messy_table)
    readable = [entry for entry in loaded["images"] if entry["readable"]]
    assert all(len(entry["md5"]) == 32 and len(entry["phash"]) == 16 for entry in readable)
    assert "images" not in report.to_dict(include_images=False)


def test_exit_code_and_strict_mode(tmp_path, image_factory, messy_table):
    clean = check(tmp_path, [Sample(image_factory("c.jpg", seed=700), "a")])
    warned = check(tmp_path, [Sample(image_factory("w.jpg", seed=701, fmt="PNG"), "a")])
    failed = run_checks(messy_table, QUIET, progress=False)
    assert (clean.exit_code(), clean.exit_code(strict=True)) == (0, 0)
    assert (warned.exit_code(), warned.exit_code(strict=True)) == (0, 1)
    assert (failed.exit_code(), failed.exit_code(strict=True)) == (0, 1)
    assert failed.has_errors and not warned.has_errors


def test_reader_problems_travel_along(tmp_path, image_factory):
    table = make_table(tmp_path, [Sample(image_factory("a.jpg", seed=702), "a")])
    table.add_problems([Problem("bad_row", "labels.csv line 3: no file name", "labels.csv line 3")])
    report = run_checks(table, QUIET, progress=False)
    assert report.problems[0].kind == "bad_row" and report.problem_counts == {"bad_row": 1}


def test_summary_is_one_row_per_kind_and_does_not_flood(tmp_path):
    samples = []
    for i in range(40):
        fake = tmp_path / f"fake_{i:02d}.jpg"
        fake.write_text("nope")
        samples.append(Sample(fake, "a"))
    report = check(tmp_path, samples)
    console = Console(file=io.StringIO(), width=120, color_system=None)
    report.print_summary(console)
    text = console.file.getvalue()
    assert text.count("not_an_image") == 1 and "40" in text
    assert "fake_00.jpg" in text and "(+37 more)" in text and "fake_39.jpg" not in text
    assert "usable 0, excluded 40" in text
    assert len(text.splitlines()) < 15


def test_progress_bar_goes_to_stderr(tmp_path, image_factory, capsys):
    check(tmp_path, [Sample(image_factory("a.jpg", seed=703), "a")], progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""


# --- the real dataset ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared_data
def test_stanford_car_crops_subset_is_clean(shared_datasets):
    root = shared_dataset(shared_datasets, "stanford-cars-crops")
    with (root / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:300]
    samples = [
        Sample(root / "images" / row["fname"], row["class_name"], source=f"labels.csv line {line}")
        for line, row in enumerate(rows, start=2)
    ]
    table = make_table(root, samples)
    report = run_checks(table, CheckConfig(min_per_class=1, workers=2), progress=False)
    # Documented facts: real JPEG crops, longer side at most 384 px.
    assert not report.has_errors, [str(p) for p in report.table.errors()]
    assert all(f is not None and f.format == "JPEG" and max(f.width, f.height) <= 384 for f in report.facts)
    assert len(report.usable()) == 300 and report.images_opened == 300
    assert all(s.width is not None and s.height is not None for s in report.table.samples)
