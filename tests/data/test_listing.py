"""carid.data.listing: folder listings that no entry can stop, and what they skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from carid.data.listing import not_regular, scan_folder, unusable_entry, walk_files
from tests.data.bad_entries import deny_listing, fifo, symlink_loop, undecodable_file


def test_scan_sorts_hides_and_skips(tmp_path: Path) -> None:
    (tmp_path / "b.jpg").write_bytes(b"x")
    (tmp_path / "a.txt").write_bytes(b"x")
    (tmp_path / ".hidden").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    pipe = fifo(tmp_path / "pipe.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    loop, up = symlink_loop(tmp_path / "links")
    listing = scan_folder(tmp_path)
    assert listing.files == [tmp_path / "a.txt", tmp_path / "b.jpg"]
    assert listing.folders == [tmp_path / "links", tmp_path / "sub"]
    assert [(s.path.name, s.kind) for s in listing.skipped] == [
        ("dangling.jpg", "not_a_regular_file"),
        ("pipe.jpg", "not_a_regular_file"),
    ]
    assert "a FIFO" in listing.skipped[1].reason and "gone.jpg" in listing.skipped[0].reason
    assert ".hidden" in [p.name for p in scan_folder(tmp_path, hidden=True).files]
    assert [(s.path, s.kind) for s in scan_folder(tmp_path / "links").skipped] == [(loop, "symlink_loop")]
    assert scan_folder(tmp_path / "links").folders == [up]
    assert not_regular(pipe) is not None and not_regular(tmp_path / "b.jpg") is None
    assert not_regular(tmp_path / "missing.jpg") is None
    assert unusable_entry(loop).kind == "symlink_loop"
    assert unusable_entry(tmp_path / "missing.jpg") is None and unusable_entry(tmp_path / "sub") is None


def test_an_unreadable_folder_is_an_entry_not_an_exception(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "locked").mkdir()
    deny_listing(monkeypatch, tmp_path / "locked")
    listing = scan_folder(tmp_path / "locked")
    assert not listing.complete and listing.files == []
    assert [(s.kind, s.reason) for s in listing.skipped] == [
        ("unreadable_folder", "cannot list this folder (Permission denied)")
    ]


def test_walk_reads_each_real_folder_once(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "1.jpg").write_bytes(b"x")
    (tmp_path / "a" / "deep" / "2.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"x")
    _, up = symlink_loop(tmp_path / "a" / "deep")
    (tmp_path / "locked").mkdir()
    deny_listing(monkeypatch, tmp_path / "locked")
    walked = walk_files(tmp_path)
    assert walked.files == [tmp_path / "b.jpg", tmp_path / "a" / "1.jpg", tmp_path / "a" / "deep" / "2.jpg"]
    kinds = {s.path: s.kind for s in walked.skipped}
    assert kinds == {
        tmp_path / "a" / "deep" / "loop": "symlink_loop",
        up: "symlink_loop",
        tmp_path / "locked": "unreadable_folder",
    }
    unfollowed = walk_files(tmp_path, follow_links=False)
    assert unfollowed.files == walked.files and up not in {s.path for s in unfollowed.skipped}


def test_undecodable_names_are_listed(tmp_path: Path) -> None:
    odd = undecodable_file(tmp_path, b"x")
    assert scan_folder(tmp_path).files == [odd]
    with pytest.raises(UnicodeEncodeError):
        str(odd).encode("utf-8")
