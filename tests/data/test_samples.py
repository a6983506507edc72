from pathlib import Path

import numpy as np
import pytest

from carid.data.samples import Problem, Sample, SampleTable, Severity


def test_sample_normalizes_boxes_and_labels():
    sample = Sample("a.jpg", "Audi", [1, 2, 3, 4])
    assert sample.boxes.shape == (1, 4)
    assert sample.box_labels == ("Audi",)
    assert sample.has_box
    assert Sample("b.jpg", None).boxes.shape == (0, 4)


def test_box_label_count_mismatch_names_source():
    with pytest.raises(ValueError, match=r"x\.xml"):
        Sample("a.jpg", "a", [[0, 0, 1, 1]], box_labels=("a", "b"), source="x.xml")


def test_usable_excludes_error_samples_only():
    samples = [Sample(Path(f"/d/{i}.jpg"), "a") for i in range(3)]
    table = SampleTable(samples, ["a"], Path("/d"), "folder")
    table.add_problems(
        [
            Problem("unreadable_image", "bad", "/d/0.jpg", Severity.ERROR, "/d/0.jpg"),
            Problem("format_mismatch", "png named jpg", "/d/1.jpg", Severity.WARNING, "/d/1.jpg"),
        ]
    )
    usable = table.usable()
    assert [s.path.name for s in usable] == ["1.jpg", "2.jpg"]
    assert len(usable.problems) == 2


def test_csv_round_trip(tmp_path: Path):
    samples = [
        Sample(
            tmp_path / "a.jpg", "x", [[1.5, 2, 30, 40], [0, 0, 5, 5]], ("x", "y"), 100, 80, "train", "src:1"
        ),
        Sample(tmp_path / "b.jpg", None, split="test"),
    ]
    table = SampleTable(samples, ["x"], tmp_path, "test")
    table.to_csv(tmp_path / "t.csv")
    back = SampleTable.from_csv(tmp_path / "t.csv", classes=["x"])
    assert back.samples == samples
    assert np.array_equal(back.samples[0].boxes, samples[0].boxes)


def test_from_csv_rejects_other_csv(tmp_path: Path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"other\.csv"):
        SampleTable.from_csv(path)
