"""Tests for carid.scale.sources: the photos of a folder, a list file or a manifest, in a fixed order,
cut into shards whose ids depend only on position."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carid.runtime.predict_io import InputError, gather_inputs
from carid.scale.sources import Item, Plan, ScaleError, plan_job, read_list
from tests.conftest import write_image
from tests.scale.conftest import write_photos


def test_folders_give_the_photos_and_order_of_carid_predict(tmp_path: Path) -> None:
    photos = write_photos(tmp_path / "photos", 7)
    os.mkfifo(tmp_path / "photos" / "part0" / "pipe.jpg")
    plan = plan_job([tmp_path / "photos"], shard_size=3)
    gathered = gather_inputs([tmp_path / "photos"])
    assert [item.path for item in plan.items[1:]] == [str(path) for path in gathered.images]
    assert sorted(plan.items[1:], key=lambda item: item.path) == [Item(str(p)) for p in sorted(photos)]
    first = plan.items[0]
    assert first.path.endswith("pipe.jpg") and first.skipped and "skipped" in first.skipped, (
        "an entry carid predict skips comes first, with the error its row carries"
    )
    assert [len(shard.items) for shard in plan.shards] == [3, 3, 2]
    assert [shard.name for shard in plan.shards] == ["shard-00000", "shard-00001", "shard-00002"]
    with pytest.raises(InputError, match="no such file or folder"):
        plan_job([tmp_path / "missing"], shard_size=3)


def test_list_file_relative_to_itself_with_comments_repeats_and_bad_entries(tmp_path: Path) -> None:
    a = write_image(tmp_path / "data" / "a.jpg")
    b = write_image(tmp_path / "data" / "sub" / "b.png")
    os.mkfifo(tmp_path / "data" / "pipe.jpg")
    listing = tmp_path / "data" / "photos.txt"
    listing.write_text(
        f"# the photos\n\nsub/b.png\n{a}\n  a.jpg  \npipe.jpg\nmissing.jpg\n", encoding="utf-8"
    )
    items = plan_job([listing], shard_size=10).items
    assert [item.path for item in items] == [
        str(b),
        str(a),
        str(tmp_path / "data" / "pipe.jpg"),
        str(tmp_path / "data" / "missing.jpg"),
    ]
    assert items[0].skipped is None and items[1].skipped is None and items[3].skipped is None
    assert items[2].skipped and "not a regular file" in items[2].skipped
    with pytest.raises(ScaleError, match="must be the only SOURCE"):
        plan_job([listing, a], shard_size=10)
    (tmp_path / "empty.lst").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ScaleError, match=r"empty\.lst: names no photos"):
        read_list(tmp_path / "empty.lst")


def test_manifest_reads_its_path_column(tmp_path: Path) -> None:
    a = write_image(tmp_path / "a.jpg")
    b = write_image(tmp_path / "b b.png")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f'label,path\nx,b b.png\ny,"{a}"\n', encoding="utf-8")
    assert read_list(manifest) == [Item(str(b)), Item(str(a))]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(
        ScaleError, match=r"bad\.csv: a manifest needs a 'path' column \(columns found: 'file'"
    ):
        read_list(bad)
    bad.write_text("path,label\n,x\n", encoding="utf-8")
    with pytest.raises(ScaleError, match=r"bad\.csv: row 2 has an empty 'path'"):
        read_list(bad)


def test_shards_and_digest_are_stable() -> None:
    items = tuple(Item(f"p{i}.jpg") for i in range(10))
    plan, again = Plan(items, 4), Plan(tuple(items), 4)
    assert plan.digest == again.digest and plan.shards == again.shards
    assert [shard.paths for shard in plan.shards][2] == ("p8.jpg", "p9.jpg")
    assert Plan((*items, Item("p10.jpg")), 4).shards[:2] == plan.shards[:2], "appending keeps earlier shards"
    assert Plan(items[::-1], 4).digest != plan.digest
    assert Plan((Item("p0.jpg", "skipped"), *items[1:]), 4).digest != plan.digest
    with pytest.raises(ScaleError, match="at least 1"):
        Plan(items, 0)
