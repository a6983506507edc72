from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from carid.cli import app
from carid.data.compose import BOX_CSV, MANIFEST, ComposeConfig, compose, list_backgrounds, paste
from carid.data.readers import read_dataset
from carid.data.samples import Sample

COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230)}


def make_crops(folder: Path) -> list[Sample]:
    """A folder dataset: class folders of solid-colour crops with a green 4 px frame."""
    samples = []
    for label, colour in COLOURS.items():
        (folder / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.zeros((40 + 10 * i, 80, 3), dtype=np.uint8)
            pixels[:] = (20, 230, 20)
            pixels[4:-4, 4:-4] = colour
            path = folder / label / f"{label}{i}.png"
            Image.fromarray(pixels).save(path)
            samples.append(Sample(path=path, label=label))
    return samples


def make_backgrounds(folder: Path, count: int = 2) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"bg{i}.jpg"
        Image.new("RGB", (320, 180), (128, 128, 128)).save(path, quality=95)
        paths.append(path)
    return paths


def test_paste_box_is_where_the_crop_pixels_are() -> None:
    crop = Image.new("RGB", (60, 30), COLOURS["red"])
    background = Image.new("RGB", (300, 200), (0, 0, 0))
    config = ComposeConfig(feather=0, hflip=0, width_range=(0.3, 0.5))
    composite, (x1, y1, x2, y2) = paste(background, crop, random.Random(1), config)
    pixels = np.asarray(composite)
    red = np.argwhere((pixels[..., 0] > 200) & (pixels[..., 2] < 50))
    assert red[:, 1].min() == x1 and red[:, 1].max() == x2 - 1
    assert red[:, 0].min() == y1 and red[:, 0].max() == y2 - 1
    assert 0.3 * 300 - 1 <= x2 - x1 <= 0.5 * 300 + 1
    assert (y2 - y1) / (x2 - x1) == pytest.approx(0.5, abs=0.03)  # aspect kept
    assert np.asarray(background).max() == 0  # the background image itself is untouched


def test_tall_crop_is_shrunk_to_fit_the_height() -> None:
    crop = Image.new("RGB", (20, 100), COLOURS["blue"])
    background = Image.new("RGB", (300, 100), (0, 0, 0))
    config = ComposeConfig(width_range=(0.9, 0.9), hflip=0)
    _, (x1, y1, x2, y2) = paste(background, crop, random.Random(0), config)
    assert y1 >= 0 and y2 <= 100 and (x2 - x1) <= 21


def test_compose_writes_a_csv_boxes_dataset_that_reads_back(tmp_path: Path) -> None:
    samples = make_crops(tmp_path / "crops")
    backgrounds = make_backgrounds(tmp_path / "bg")
    out = tmp_path / "out"
    report = compose(samples, backgrounds, out, ComposeConfig(seed=3, per_object=2, feather=2))
    assert report.written == 12 and report.objects == 6 and report.backgrounds == 2 and not report.problems
    table = read_dataset(out)
    assert table.format == "csv-boxes" and len(table) == 12
    assert sorted(table.classes) == ["blue", "red"]
    for sample in table:
        assert len(sample.boxes) == 1
        x1, y1, x2, y2 = sample.boxes[0]
        pixels = np.asarray(Image.open(sample.path).convert("RGB")).astype(int)
        centre = pixels[int((y1 + y2) / 2), int((x1 + x2) / 2)]
        assert np.abs(centre - COLOURS[sample.label]).max() < 40, sample.path  # the crop is in the box
        assert np.abs(pixels[0, 0] - 128).max() < 20 or x1 < 2 or y1 < 2  # background outside it
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(manifest["images"]) == 12 and manifest["config"]["seed"] == 3
    assert {Path(m["background"]).name for m in manifest["images"]} <= {"bg0.jpg", "bg1.jpg"}


def test_same_seed_same_dataset_other_seed_other_boxes(tmp_path: Path) -> None:
    samples = make_crops(tmp_path / "crops")
    backgrounds = make_backgrounds(tmp_path / "bg")

    def boxes(name: str, seed: int) -> list[list[str]]:
        compose(samples, backgrounds, tmp_path / name, ComposeConfig(seed=seed))
        with open(tmp_path / name / BOX_CSV, newline="") as handle:
            return list(csv.reader(handle))

    assert boxes("a", 1) == boxes("b", 1)
    assert boxes("c", 2) != boxes("d", 1)


def test_broken_crop_and_background_are_reported_and_skipped(tmp_path: Path) -> None:
    samples = make_crops(tmp_path / "crops")
    broken = tmp_path / "crops" / "red" / "broken.png"
    broken.write_bytes(b"not a png at all")
    backgrounds = make_backgrounds(tmp_path / "bg")
    bad_background = tmp_path / "bg" / "bad.jpg"
    bad_background.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    samples = [*samples, Sample(path=broken, label="red"), Sample(path=samples[0].path, label=None)]
    report = compose(samples, [*backgrounds, bad_background], tmp_path / "out")
    assert report.written == 6 and report.backgrounds == 2
    assert any("broken.png" in p for p in report.problems)
    assert any("bad.jpg" in p for p in report.problems)
    assert any("no label" in p for p in report.problems)
    assert len(read_dataset(tmp_path / "out")) == 6


def test_refuses_to_mix_into_an_existing_dataset_and_needs_a_background(tmp_path: Path) -> None:
    samples = make_crops(tmp_path / "crops")
    backgrounds = make_backgrounds(tmp_path / "bg")
    compose(samples, backgrounds, tmp_path / "out")
    with pytest.raises(FileExistsError, match=r"boxes\.csv"):
        compose(samples, backgrounds, tmp_path / "out")
    with pytest.raises(ValueError, match="no usable background"):
        compose(samples, [], tmp_path / "empty")
    with pytest.raises(ValueError, match="width_range"):
        ComposeConfig(width_range=(0.5, 1.5))


def test_list_backgrounds_excludes_by_name_or_stem(tmp_path: Path) -> None:
    make_backgrounds(tmp_path / "bg", count=3)
    (tmp_path / "bg" / "notes.txt").write_text("x")
    assert [p.name for p in list_backgrounds(tmp_path / "bg", exclude=["bg1"])] == ["bg0.jpg", "bg2.jpg"]


def test_cli_compose_with_exclusions_and_unboxed_backgrounds(tmp_path: Path) -> None:
    make_crops(tmp_path / "crops")
    frames = tmp_path / "frames"
    make_backgrounds(frames / "images", count=3)
    (frames / "boxes.csv").write_text("image_id,xmin,ymin,xmax,ymax\nbg0.jpg,10,10,50,40\nbg1.jpg,,,,\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            *("data", "compose", str(tmp_path / "crops"), str(frames), "--only-unboxed", "--out", str(out)),
            *("--exclude", "red0", "--exclude", "blue1.png", "--seed", "5"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 images from 4 crops on 2 backgrounds (2 crops excluded)" in result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert {Path(m["background"]).name for m in manifest["images"]} <= {"bg1.jpg", "bg2.jpg"}
    assert not {Path(m["object"]).stem for m in manifest["images"]} & {"red0", "blue1"}
    again = CliRunner().invoke(
        app, ["data", "compose", str(tmp_path / "crops"), str(frames), "--out", str(out)]
    )
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_compose_uses_only_train_backgrounds_of_a_split_and_exclude_patterns(tmp_path: Path) -> None:
    from carid.data.readers import read_dataset
    from carid.data.split import save_split

    make_crops(tmp_path / "crops")
    frames = tmp_path / "frames"
    make_backgrounds(frames / "images", count=4)
    (frames / "boxes.csv").write_text(
        "image_id,xmin,ymin,xmax,ymax\nbg0.jpg,,,,\nbg1.jpg,,,,\nbg2.jpg,,,,\nbg3.jpg,,,,\n"
    )
    table = read_dataset(frames)
    splits = ["train" if s.path.name in ("bg1.jpg", "bg3.jpg") else "test" for s in table.samples]
    save_split(table, splits, tmp_path / "split.csv")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            *("data", "compose", str(tmp_path / "crops"), str(frames), "--only-unboxed", "--out", str(out)),
            *("--backgrounds-split", str(tmp_path / "split.csv"), "--exclude", "red?"),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    used = {Path(m["background"]).name for m in manifest["images"]}
    assert used and used <= {"bg1.jpg", "bg3.jpg"}  # the test frames stay unseen
    assert not [m for m in manifest["images"] if Path(m["object"]).stem.startswith("red")]
