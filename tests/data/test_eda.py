"""Tests of carid.data.eda: the self-contained HTML data report and its figures."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from PIL import Image

from carid.data.eda import REPORT_NAME, write_report
from carid.data.samples import Problem, Sample, SampleTable, Severity
from tests.conftest import shared_dataset, write_image

EVIL_CLASS = "<b>x</b>"


def small_dataset(root: Path) -> SampleTable:
    """Three classes (one named like markup), boxes, one image without a box, one unreadable file."""
    samples: list[Sample] = []
    for c, name in enumerate(["audi", "bmw", EVIL_CLASS]):
        for i in range(3 + c):
            path = write_image(root / f"class{c}" / f"img_{i}.jpg", size=(80 + 10 * i, 60), seed=10 * c + i)
            samples.append(Sample(path, name, boxes=[[5, 5, 50, 40]], width=80 + 10 * i, height=60))
    inverted = write_image(root / "class2" / "inverted.jpg", size=(80, 60), seed=7)
    samples.append(Sample(inverted, EVIL_CLASS, boxes=[[50, 40, 5, 5]], width=80, height=60))  # x2 < x1
    no_box = write_image(root / "class0" / "lonely.png", size=(64, 64), seed=99, fmt="PNG")
    samples.append(Sample(no_box, "audi", width=64, height=64, source="boxes.csv row 12"))
    broken = root / "class1" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    samples.append(Sample(broken, "bmw", boxes=[[1, 1, 10, 10]], source="boxes.csv row 13"))
    problems = [
        Problem(
            "unreadable_image", "not an image file Pillow can read", "boxes.csv row 13", path=str(broken)
        ),
        Problem("no_box", "the image has no box", "boxes.csv row 12", Severity.INFO, str(no_box)),
        Problem(
            "box_outside_image",
            "box [5, 5, 95, 40] is wider than the 80 px image; clipped",
            "boxes.csv row 2",
            Severity.WARNING,
            str(samples[0].path),
        ),
    ]
    return SampleTable(samples, ["audi", "bmw", EVIL_CLASS], root, "csv-boxes", problems)


def image_sources(page: str) -> list[str]:
    return re.findall(r'src="([^"]*)"', page)


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert 'src="file' not in page
    sources = image_sources(page)
    assert sources, "the report embeds no image"
    assert all(src.startswith("data:image/") for src in sources)
    assert "<link" not in page and "<script" not in page


def test_report_is_self_contained_and_names_classes_problems_and_files(tmp_path: Path) -> None:
    table = small_dataset(tmp_path / "data")
    splits = ["train", "val", "test"] * (len(table) // 3) + ["train"] * (len(table) % 3)
    report = write_report(
        table,
        tmp_path / "out",
        splits=splits,
        check_summary={"images_checked": len(table), "duplicates": {"exact": 0, "near": 1}},
        title="Test report",
        samples_per_class=10,  # every image in the grid, the unreadable one too
    )
    assert report == tmp_path / "out" / REPORT_NAME
    page = report.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "Test report" in page
    for name in ["audi", "bmw"]:
        assert name in page
    for kind in ["unreadable_image", "no_box", "box_outside_image"]:
        assert kind in page
    assert "broken.jpg" in page and "boxes.csv row 13" in page and "lonely.png" in page
    assert "no box" in page  # the box-less image is marked in the grid
    assert "cannot read" in page  # the unreadable image became a placeholder, not a crash
    assert "1 image excluded" in page  # the plain-language summary
    assert "<caption>duplicates</caption>" in page  # a check-result mapping becomes its own table
    assert re.search(r"<td>near</td><td class=\"num\">1</td>", page)
    assert re.search(r"<td>images checked</td><td class=\"num\">" + str(len(table)) + "</td>", page)
    assert len(image_sources(page)) >= 7 + len(table)  # figures + one thumbnail per image

    figures = tmp_path / "out" / "figures"
    expected = {
        "class_counts.png",
        "split_counts.png",
        "image_sizes.png",
        "image_pixels.png",
        "box_sizes.png",
        "box_centres.png",
        "boxes_per_image.png",
        "sample_grid.jpg",
    }
    assert {p.name for p in figures.iterdir()} == expected
    for name in expected:
        with Image.open(figures / name) as image:
            image.verify()


def test_class_names_and_messages_are_html_escaped(tmp_path: Path) -> None:
    table = small_dataset(tmp_path / "data")
    table.add_problems([Problem("odd_<kind>", "message with <script>alert(1)</script>", "a&b.csv row 1")])
    page = write_report(table, tmp_path / "out").read_text(encoding="utf-8")
    assert EVIL_CLASS not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "a&amp;b.csv row 1" in page


def test_dataset_without_labels_and_boxes(tmp_path: Path) -> None:
    samples = [
        Sample(write_image(tmp_path / "frames" / f"f{i}.jpg", size=(96, 54), seed=i), None) for i in range(5)
    ]
    table = SampleTable(samples, [], tmp_path / "frames", "folder")  # no sizes known, no problems
    (tmp_path / "out" / "figures").mkdir(parents=True)
    (tmp_path / "out" / "figures" / "box_sizes.png").write_bytes(b"from an earlier report")
    report = write_report(table, tmp_path / "out")
    page = report.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "No problems recorded" in page
    assert not (tmp_path / "out" / "figures" / "box_sizes.png").exists()  # stale figure removed
    assert "random images" in page
    assert "f0.jpg" in page
    assert (tmp_path / "out" / "figures" / "sample_grid.jpg").exists()
    assert not (tmp_path / "out" / "figures" / "class_counts.png").exists()


def test_unlabelled_frames_with_and_without_boxes(tmp_path: Path) -> None:
    samples = []
    for i in range(6):
        path = write_image(tmp_path / f"frame{i}.jpg", size=(120, 68), seed=i)
        boxes = [[10, 10, 40, 30], [50, 20, 90, 60]] if i % 2 else []
        samples.append(
            Sample(path, None, boxes=boxes, box_labels=("car",) * len(boxes), width=120, height=68)
        )
    table = SampleTable(samples, [], tmp_path, "csv-boxes")
    splits = ["train"] * 3 + [None, "val", "test"]  # None: a sample in no split
    page = write_report(table, tmp_path / "out", splits=splits).read_text("utf-8")
    assert "no split" in page
    assert "with box" in page and "no box" in page
    assert "3 images of 6 have no box" in page
    assert "3 images have more than one box" in page
    for name in ["box_centres.png", "boxes_per_image.png", "split_counts.png"]:
        with Image.open(tmp_path / "out" / "figures" / name) as image:
            image.verify()


def test_many_classes_and_many_problems_are_capped(tmp_path: Path) -> None:
    samples = []
    for c in range(60):
        path = write_image(tmp_path / f"c{c}.jpg", size=(40, 30), seed=c)
        samples.extend(Sample(path, f"class {c:02d}", width=40, height=30) for _ in range(1 + c % 3))
    table = SampleTable(samples, [f"class {c:02d}" for c in range(61)], tmp_path, "folder")  # class 60 empty
    table.add_problems(
        Problem("tiny_image", f"image {i} is 40x30", f"row {i}", Severity.WARNING, f"x{i}.jpg")
        for i in range(510)
    )
    report = write_report(table, tmp_path / "out", max_classes_in_grid=5, samples_per_class=2)
    page = report.read_text(encoding="utf-8")
    assert "One random image of each of the 5 largest of 60 classes" in page
    assert "and 10 more" in page
    assert "class 60" in page  # the empty class is reported
    assert page.count('class="tile"') == 5  # a gallery: one image per class, captioned with it
    assert '<div class="name">class 02</div>' in page
    with Image.open(tmp_path / "out" / "figures" / "class_counts.png") as chart:
        assert chart.height < chart.width / 3  # a compact profile, not one line per class


def test_problems_from_check_summary_are_merged(tmp_path: Path) -> None:
    table = small_dataset(tmp_path / "data")
    summary = {
        "problems": [
            table.problems[0].to_dict(),  # already in the table: not listed twice
            {
                "kind": "near_duplicate",
                "severity": "warning",
                "source": "img_1.jpg",
                "message": "like img_2.jpg",
            },
        ]
    }
    page = write_report(table, tmp_path / "out", check_summary=summary).read_text("utf-8")
    assert "near_duplicate" in page and "like img_2.jpg" in page
    assert "2 (listed by kind above)" in page
    assert "1 case of unreadable image" in page  # the duplicate was not counted twice


def test_split_length_must_match(tmp_path: Path) -> None:
    table = small_dataset(tmp_path / "data")
    with pytest.raises(ValueError, match="split values"):
        write_report(table, tmp_path / "out", splits=["train"])


@pytest.mark.shared_data
def test_car_frames_report(shared_datasets: Path, tmp_path: Path) -> None:
    root = shared_dataset(shared_datasets, "car-frames")
    boxes: dict[str, list[list[float]]] = {}
    with (root / "boxes.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            boxes.setdefault(row["image_id"], []).append(
                [float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            )
    samples = [  # documented: 384 frames of 676x380, 284 with at least one car, 100 without
        Sample(path, None, boxes=boxes.get(path.name, []), width=676, height=380)
        for path in sorted((root / "images").iterdir())
    ]
    table = SampleTable(samples, [], root, "csv-boxes")
    page = write_report(table, tmp_path / "out").read_text(encoding="utf-8")
    assert "100 images of 384 have no box" in page
    assert re.search(r"with box <span[^>]*>\(284 images\)", page)
    assert_self_contained(page)


def many_class_dataset(root: Path, classes: int = 150) -> SampleTable:
    """`classes` classes of 1 to 4 tiny images each (all files the same picture: only the grid opens them)."""
    picture = write_image(root / "shared.jpg", size=(24, 16), seed=1)
    names = [f"Make {c:03d} Model" for c in range(classes)]
    samples = [
        Sample(picture, name, width=24, height=16) for c, name in enumerate(names) for _ in range(1 + c % 4)
    ]
    return SampleTable(samples, names, root, "folder")


def check_summary_like(table: SampleTable) -> dict[str, object]:
    """A dict shaped like `CheckReport.to_dict(include_images=False)`."""
    counts = table.class_counts()
    return {
        "root": str(table.root),
        "format": table.format,
        "summary": {"samples": len(table), "images_opened": 1, "usable": len(table), "error": 0},
        "timing": {"seconds": 1.25, "workers": 2},
        "config": {"min_side": 32, "imbalance_ratio": 5.0},
        "problem_counts": {"exact_duplicate": 1},
        "class_counts": {name: {"samples": n, "usable": n} for name, n in counts.items()},
        "duplicate_groups": [
            {
                "kind": "exact",
                "max_distance": 0,
                "members": [
                    {"index": 0, "path": str(table.root / "a.jpg"), "label": "Make 000 Model", "split": None},
                    {"index": 1, "path": str(table.root / "b.jpg"), "label": "Make 001 Model", "split": None},
                ],
            }
        ],
        "problems": [],
    }


def test_many_classes_keep_the_report_short_and_the_check_results_readable(tmp_path: Path) -> None:
    table = many_class_dataset(tmp_path / "data")
    splits = ["train", "val", "test"] * (len(table) // 3) + ["train"] * (len(table) % 3)
    report = write_report(table, tmp_path / "out", splits=splits, check_summary=check_summary_like(table))
    page = report.read_text(encoding="utf-8")
    # height proxy: the class and split charts are compact profiles whatever the class count
    # (the bar charts they replace were 0.16 inch, 16 px, per class: 2,400 px each for 150 classes)
    for name in ("class_counts.png", "split_counts.png"):
        with Image.open(tmp_path / "out" / "figures" / name) as chart:
            assert chart.height <= 300, name
    assert page.count('class="tile"') <= 24  # one gallery row of the largest classes
    # the profile names no class: the largest and smallest are in a table
    largest = page[page.index("<th>largest classes</th>") : page.index("<th>smallest classes</th>")]
    assert re.findall(r"<td>(Make \d+ Model)</td>", largest)[:2] == ["Make 003 Model", "Make 007 Model"]
    smallest = page[page.index("<th>smallest classes</th>") :]
    assert re.findall(r"<td>(Make \d+ Model)</td>", smallest)[0] == "Make 000 Model"
    # check results: tables, never flattened JSON
    checks = page[page.index("<h2>Check results</h2>") : page.index("<h2>Distributions</h2>")]
    assert "{" not in checks and "summary.images_opened" not in checks and "entries:" not in checks
    assert re.search(r"<td>images opened</td><td class=\"num\">1</td>", checks)
    assert re.search(r"<td>seconds</td><td class=\"num\">1.25</td>", checks)
    assert "<td>a.jpg (Make 000 Model); b.jpg (Make 001 Model)</td>" in checks  # duplicate group members
    folded = re.findall(r"<summary>([^<]*)</summary>", checks)
    assert folded == ["config (2 rows)", "class counts (150 rows)"]  # long tables and settings folded
    assert '<td>Make 149 Model</td><td class="num">2</td><td class="num">2</td>' in checks
