"""`fix_colours`: a corrected copy keeps the layout and the other files, and names what it could not fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carid.data.colours import FixColoursError, fix_colours
from carid.errors import CaridError
from carid.images import load_rgb


def make_dataset(root: Path) -> Path:
    """Two class folders, a PNG and a JPEG of known colours, a labels file and a broken image."""
    (root / "train" / "red").mkdir(parents=True)
    (root / "train" / "blue").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 40, 10)).save(root / "train" / "red" / "a.png")
    Image.new("RGB", (48, 32), (20, 60, 220)).save(root / "train" / "blue" / "b.jpg", quality=95)
    (root / "labels.csv").write_text("fname,class\na.png,red\nb.jpg,blue\n")
    (root / "train" / "blue" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_copy_has_red_and_blue_swapped_and_keeps_everything_else(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "bgr")
    result = fix_colours(source, tmp_path / "rgb")
    assert (result.images, result.copied) == (2, 1)
    assert len(result.unreadable) == 1 and "broken.jpg" in result.unreadable[0]
    out = tmp_path / "rgb"
    assert np.array_equal(np.asarray(load_rgb(out / "train" / "red" / "a.png"))[0, 0], [10, 40, 200])
    blue = np.asarray(load_rgb(out / "train" / "blue" / "b.jpg")).astype(int)[5, 5]
    assert np.abs(blue - [220, 60, 20]).max() <= 4  # JPEG, re-encoded once
    assert Image.open(out / "train" / "blue" / "b.jpg").format == "JPEG"
    assert (out / "labels.csv").read_text() == (source / "labels.csv").read_text()
    broken = out / "train" / "blue" / "broken.jpg"
    assert broken.read_bytes() == (source / "train" / "blue" / "broken.jpg").read_bytes()
    # no temporary files left behind, nothing else written
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["labels.csv", "train/blue/b.jpg", "train/blue/broken.jpg", "train/red/a.png"]


def test_refuses_a_folder_in_the_way_and_names_it(tmp_path: Path) -> None:
    source = make_dataset(tmp_path / "bgr")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(FixColoursError, match="full: the output folder exists and is not empty"):
        fix_colours(source, tmp_path / "full")
    with pytest.raises(FixColoursError, match="must not lie inside"):
        fix_colours(source, source / "fixed")
    with pytest.raises(CaridError, match="nope: not a dataset folder"):
        fix_colours(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert fix_colours(source, tmp_path / "empty").images == 2  # an empty folder may be given
