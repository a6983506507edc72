"""Curation: flags from the checks, the injected no-car scorer and a fake label model; outputs; actions."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from carid.config import CurateConfig
from carid.data.curate import CurateError, curate
from carid.runtime.results import ClassScore
from tests.conftest import write_image


@dataclass
class FakePrediction:
    top1: ClassScore | None
    error: str | None = None


class FakeModel:
    """Says "blue" with 0.95 for every photo whose name starts with "sky", else agrees with the folder."""

    def predict(self, images, top_k=5, batch_size=16):
        out = []
        for path in images:
            label = "blue" if Path(path).name.startswith("sky") else Path(path).parent.name
            out.append(FakePrediction(ClassScore(label=label, probability=0.95, index=0)))
        return out


def make_dataset(root: Path) -> Path:
    """A folder dataset: red/ and blue/ textures, an exact copy, a text file named .jpg, a tiny image,
    a truncated JPEG and a "sky" photo filed under red/."""
    for index in range(4):
        write_image(root / "red" / f"r{index}.jpg", size=(80, 60), seed=index)
        write_image(root / "blue" / f"b{index}.jpg", size=(80, 60), seed=10 + index)
    (root / "red" / "r0_copy.jpg").write_bytes((root / "red" / "r0.jpg").read_bytes())
    (root / "red" / "notes.jpg").write_text("not an image\n", encoding="utf-8")
    write_image(root / "blue" / "tiny.jpg", size=(12, 10), seed=3)
    whole = (write_image(root / "blue" / "cut.jpg", size=(200, 150), seed=5)).read_bytes()
    (root / "blue" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    write_image(root / "red" / "sky.jpg", size=(80, 60), seed=42)
    return root


def fake_scorer(paths):
    """Car score 0.01 for b1.jpg ("no car"), 0.9 for the rest."""
    return np.array([0.01 if Path(p).name == "b1.jpg" else 0.9 for p in paths])


def read_flags(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {(Path(row["path"]).name, row["reason"]): row for row in csv.DictReader(handle)}


def test_curate_flags_every_reason_and_deletes_nothing(tmp_path):
    data = make_dataset(tmp_path / "data")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    result = curate(data, tmp_path / "out", car_scorer=fake_scorer, model=FakeModel(), progress=False)
    flags = read_flags(result.paths["flagged"])
    assert ("notes.jpg", "unusable") in flags and ("cut.jpg", "unusable") in flags
    assert ("tiny.jpg", "tiny_image") in flags
    assert ("r0_copy.jpg", "exact_duplicate") in flags and ("r0.jpg", "exact_duplicate") not in flags
    assert float(flags[("b1.jpg", "no_car")]["score"]) == pytest.approx(0.01)
    assert flags[("sky.jpg", "likely_mislabelled")]["score"] == "0.95"
    assert not any(name.startswith(("r1", "b2")) for name, _ in flags)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    kept = {Path(row["path"]).name for row in csv.DictReader(result.paths["kept"].open(encoding="utf-8"))}
    assert kept == {"r0.jpg", "r1.jpg", "r2.jpg", "r3.jpg", "b0.jpg", "b2.jpg", "b3.jpg"}
    summary = json.loads(result.paths["summary"].read_text(encoding="utf-8"))
    assert summary["flag_counts"]["no_car"] == 1 and summary["actions"] == [] and summary["skipped"] == {}
    html = result.paths["review"].read_text(encoding="utf-8")
    assert "sky.jpg" in html and "data:image/jpeg;base64," in html and "likely_mislabelled (1)" in html


def test_without_model_or_scorer_the_sections_say_skipped(tmp_path):
    data = make_dataset(tmp_path / "data")
    result = curate(data, tmp_path / "out", progress=False)
    assert set(result.skipped) == {"no_car", "likely_mislabelled"}
    assert "no model given" in result.paths["review"].read_text(encoding="utf-8")


def test_move_to_moves_only_flagged_files_and_records_it(tmp_path):
    data = make_dataset(tmp_path / "data")
    moved = tmp_path / "moved"
    config = CurateConfig(mislabel_threshold=0.99)
    result = curate(
        data,
        tmp_path / "out",
        config=config,
        car_scorer=fake_scorer,
        action="move",
        move_to=moved,
        model=FakeModel(),
        progress=False,
    )
    assert sorted(p.relative_to(moved).as_posix() for p in moved.rglob("*.jpg")) == [
        "blue/b1.jpg",
        "blue/cut.jpg",
        "blue/tiny.jpg",
        "red/notes.jpg",
        "red/r0_copy.jpg",
    ]
    assert (data / "red" / "sky.jpg").exists() and (data / "red" / "r0.jpg").exists()
    flags = read_flags(result.paths["flagged"])
    assert flags[("b1.jpg", "no_car")]["action"] == f"moved to {moved / 'blue' / 'b1.jpg'}"
    summary = json.loads(result.paths["summary"].read_text(encoding="utf-8"))
    assert len(summary["actions"]) == 5


def test_delete_removes_only_flagged_files(tmp_path):
    data = make_dataset(tmp_path / "data")
    curate(data, tmp_path / "out", car_scorer=fake_scorer, action="delete", progress=False)
    assert not (data / "blue" / "b1.jpg").exists() and not (data / "red" / "r0_copy.jpg").exists()
    assert len(list(data.rglob("*.jpg"))) == 8


def test_move_without_a_folder_is_an_error(tmp_path):
    with pytest.raises(CurateError, match="needs a folder"):
        curate(make_dataset(tmp_path / "data"), tmp_path / "out", action="move", progress=False)
