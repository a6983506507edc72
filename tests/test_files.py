"""Tests for carid.files: the atomic writer's temporary names, the folder swap, and the removal of the
leftovers a killed writer leaves (`remove_stale_temporaries`).

`run_killed` is the kill harness the enroll and export tests use: it runs a `carid` command in a
child process that kills itself (SIGKILL, as `kill -9`) just before its Nth file operation inside a
watched folder.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import carid.files
from carid.files import (
    folder_lock,
    make_staging_folder,
    move_folder_into_place,
    remove_stale_temporaries,
    write_atomic,
    writer_alive,
)

# The child: wrap the file operations that change a folder, count the calls whose path is inside the
# watched folder, and SIGKILL the process just before call number `point` (0: never). The writes into a
# staging folder (".<name>.tmp-<pid>-<hex>/...", not visible to readers yet) all leave the same state,
# an unfinished staging folder, so only the first of them is a kill point: the kill test of a bundle
# export then runs a handful of times instead of once per file in the bundle.
_KILL_SNIPPET = r"""
import os, re, shutil, signal, sys
import carid.files

point, watch = int(sys.argv[1]), os.path.realpath(sys.argv[2])
calls = 0
staged = False
STAGING = re.compile(r"/\.[^/]+\.tmp-\d+-[0-9a-f]{8}/")

def inside(value):
    try:
        path = os.path.realpath(os.fspath(value))
        return path == watch or path.startswith(watch + os.sep)
    except TypeError:
        return False

def in_staging(args):
    return all(STAGING.search(os.path.realpath(os.fspath(value))) for value in args[:2] if inside(value))

def trap(function):
    def wrapper(*args, **kwargs):
        global calls, staged
        if any(inside(value) for value in args[:2]):
            if in_staging(args):
                if staged:
                    return function(*args, **kwargs)
                staged = True
            calls += 1
            if calls == point:
                print(f"killed before {function.__name__}{tuple(map(str, args[:2]))}", file=sys.stderr)
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)
    return wrapper

for name in ("replace", "rename", "unlink"):
    setattr(os, name, trap(getattr(os, name)))
shutil.rmtree = trap(shutil.rmtree)
if hasattr(carid.files, "_exchange"):
    carid.files._exchange = trap(carid.files._exchange)

from carid.cli import app
sys.argv = ["carid", *sys.argv[3:]]
app()
"""


def run_killed(arguments: list[str], point: int, watch: Path) -> subprocess.CompletedProcess[str]:
    """Run `carid ARGUMENTS` in a child process killed just before its `point`th file operation
    (os.replace, os.rename, os.unlink, shutil.rmtree, the folder swap) on a path inside `watch`;
    point 0 runs it to the end. returncode -9 means it was killed; the last line of stderr then
    names the operation it was killed before."""
    return subprocess.run(
        [sys.executable, "-c", _KILL_SNIPPET, str(point), str(watch), *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )


def killed_at_every_point(
    arguments: list[str], watch: Path, before_each: Callable[[], object] = lambda: None
) -> Iterator[str]:
    """Run `carid ARGUMENTS` killed before its 1st, 2nd, ... file operation inside `watch` (calling
    `before_each` first each time) until a run completes; yields, after each kill, the operation it
    was killed before (the last line of its stderr), for the caller to check the state it left."""
    for point in itertools.count(1):
        before_each()
        killed = run_killed(arguments, point, watch=watch)
        if killed.returncode == 0:
            return
        assert killed.returncode == -signal.SIGKILL, f"point {point}: {killed.stderr}"
        yield f"point {point}, {killed.stderr.strip().splitlines()[-1]}"


def hidden_leftovers(folder: Path) -> list[str]:
    """Names of the hidden files and folders in `folder` (what a killed writer leaves)."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_write_atomic_names_its_temporary_after_the_target_and_the_process(tmp_path: Path) -> None:
    seen: list[str] = []
    write_atomic(tmp_path / "model.json", lambda stream: seen.extend(os.listdir(tmp_path)))
    [temporary] = seen
    assert re.fullmatch(rf"\.model\.json\.{os.getpid()}-[a-z0-9_]{{8}}\.tmp", temporary), temporary
    assert os.listdir(tmp_path) == ["model.json"]


def test_writer_alive() -> None:
    assert writer_alive(os.getpid())
    assert not writer_alive(dead_pid())
    assert not writer_alive(0)


def test_leftovers_of_a_gone_writer_are_removed_and_a_live_writer_is_not_disturbed(tmp_path: Path) -> None:
    gone, alive = dead_pid(), os.getpid()
    names = {
        f".model.json.{gone}-abcd_123.tmp": "file",  # write_atomic's, of a killed process
        f".photo.jpg.{gone}-abcd_123.tmp.part": "file",  # with a suffix
        f".model.json.{alive}-abcd_123.tmp": "file",  # being written right now
        ".enrolment.npz.abcd_123.tmp": "file",  # no PID (an older carid): fresh, may be at work
        ".old.npz.wxyz_987.tmp": "file",  # no PID, older than the grace period
        f".bundle.tmp-{gone}-0123abcd": "folder",  # an export's staging folder
        f".bundle.tmp-{alive}-0123abcd": "folder",  # an export at work
        f".other.old-{gone}-0123abcd": "folder",  # set aside, its target exists: delete
        ".gitignore": "file",  # not ours
        ".cache": "folder",
        "notes.tmp": "file",
    }
    for name, kind in names.items():
        path = tmp_path / name
        if kind == "folder":
            path.mkdir()
            (path / "model.json").write_text("{}")
        else:
            path.write_text("x")
    (tmp_path / "other").mkdir()
    hour_ago = time.time() - 3600
    os.utime(tmp_path / ".old.npz.wxyz_987.tmp", (hour_ago, hour_ago))

    leftovers = remove_stale_temporaries(tmp_path)
    removed = {
        f".model.json.{gone}-abcd_123.tmp",
        f".photo.jpg.{gone}-abcd_123.tmp.part",
        ".old.npz.wxyz_987.tmp",
        f".bundle.tmp-{gone}-0123abcd",
        f".other.old-{gone}-0123abcd",
    }
    assert {leftover.path.name for leftover in leftovers} == removed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*names, "other"} - removed)
    reasons = {leftover.path.name: leftover.describe() for leftover in leftovers}
    assert f"its writer, process {gone}, is gone" in reasons[f".bundle.tmp-{gone}-0123abcd"]
    assert "older than 60 s" in reasons[".old.npz.wxyz_987.tmp"]
    assert remove_stale_temporaries(tmp_path) == []
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_only_the_named_targets_leftovers_are_removed(tmp_path: Path) -> None:
    gone = dead_pid()
    for name in (f".bundle.tmp-{gone}-0123abcd", f".bundle-2.tmp-{gone}-0123abcd"):
        (tmp_path / name).mkdir()
    leftovers = remove_stale_temporaries(tmp_path, targets=("bundle",))
    assert [leftover.path.name for leftover in leftovers] == [f".bundle.tmp-{gone}-0123abcd"]
    assert hidden_leftovers(tmp_path) == [f".bundle-2.tmp-{gone}-0123abcd"]


def test_a_folder_set_aside_by_an_interrupted_swap_is_put_back(tmp_path: Path) -> None:
    aside = tmp_path / f".bundle.old-{dead_pid()}-0123abcd"
    aside.mkdir()
    (aside / "model.json").write_text("old")
    [leftover] = remove_stale_temporaries(tmp_path)
    assert leftover.restored_to == tmp_path / "bundle" and "restored" in leftover.describe()
    assert (tmp_path / "bundle" / "model.json").read_text() == "old" and hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "aside"])
def test_move_folder_into_place_replaces_the_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(carid.files, "_exchange", lambda first, second: False)
    target = tmp_path / "bundle"
    for version in ("one", "two"):
        staging = make_staging_folder(target)
        assert staging.parent == tmp_path and staging.name.startswith(f".bundle.tmp-{os.getpid()}-")
        (staging / "model.json").write_text(version)
        move_folder_into_place(staging, target)
        assert (target / "model.json").read_text() == version
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_folder_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    code = "import os, signal, sys\nfrom carid.files import folder_lock\n"
    code += "with folder_lock(sys.argv[1]) as locked:\n    print(locked, flush=True)\n"
    code += "    os.kill(os.getpid(), signal.SIGKILL)\n"
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert child.returncode == -9 and child.stdout.strip() == "True", child.stderr
    handle = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises when still held
    finally:
        os.close(handle)
    with folder_lock(tmp_path) as locked:
        assert locked
        other = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    assert list(tmp_path.iterdir()) == [], "no lock file"
