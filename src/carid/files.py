"""Writing files and folders so that a reader (or a crash) never sees half of one, and removing what a
killed writer left behind.

Every file writer goes through `write_atomic`: the data goes to a hidden temporary file in the
target's folder (same file system, so the rename is atomic), optionally fsynced, made world-readable
(mkstemp creates 0600 files, and bundles, reports and pictures are meant to be shared), then renamed
over the target. On any failure, Ctrl-C included, the temporary file is removed and the old file, if
any, is untouched. A folder is built in a hidden staging folder (`make_staging_folder`) and swapped
into place in one step (`move_folder_into_place`).

A process killed with SIGKILL (or a power cut) cannot clean up, so every temporary name says what it
is for and which process made it:

    .<name>.<pid>-<random>.tmp[suffix]    a file being written by `write_atomic`
    .<name>.tmp-<pid>-<hex>               a folder being built (`make_staging_folder`)
    .<name>.old-<pid>-<hex>               the old folder, set aside during a swap where the file
                                          system cannot exchange two folders in one step

`folder_lock` lets the writers of one folder take turns (and tells a cleaner that no writer is
half-way). `remove_stale_temporaries` deletes temporaries once their writer is gone (no live process
with that PID on this machine), or, for names without a PID (made by carid before they had one),
once they are older than `GRACE_SECONDS`; a writer that is still at work is never disturbed. An old
folder whose target is missing (a swap killed half-way) is renamed back rather than deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o644
# A leftover without a writer PID in its name is removed only when older than this (its writer may
# still be at work); one with a PID as soon as that process is gone, or when older than MAX_AGE_SECONDS
# (the PID was reused by another process).
GRACE_SECONDS = 60.0
MAX_AGE_SECONDS = 24 * 3600.0

_TEMPORARY_FILE = re.compile(r"^\.(?P<target>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp")
_STAGING_FOLDER = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
_ASIDE_FOLDER = re.compile(r"^\.(?P<target>.+)\.old-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")


def write_atomic(
    path: Path | str,
    data: bytes | str | Callable[[IO[bytes]], None],
    fsync: bool = False,
    suffix: str = "",
) -> Path:
    """Write `data` to `path` through a temporary file and a rename; returns `path`.

    data: bytes, text (written as UTF-8, newlines untouched), or a function that writes to the
        open binary stream (for writers such as `np.savez` or `torch.save` that want a file).
    fsync: flush the file to the disk before the rename (downloads and manifests that must survive
        a power cut; off for reports, which can be written again).
    suffix: appended to the temporary name after TEMP_SUFFIX, for writers that insist on an
        extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}-", suffix=TEMP_SUFFIX + suffix, dir=path.parent
    )
    try:
        with os.fdopen(handle, "wb") as stream:
            if callable(data):
                data(stream)
            else:
                stream.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, data: Any, fsync: bool = False) -> Path:
    """`data` as indented UTF-8 JSON (values JSON does not know as their str()), atomically."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    return write_atomic(path, text, fsync=fsync)


# --- folders --------------------------------------------------------------------------------------------


def make_staging_folder(target: Path | str) -> Path:
    """Create and return an empty hidden folder beside `target` to build its new contents in
    (".<name>.tmp-<pid>-<hex>"), for `move_folder_into_place`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def move_folder_into_place(staging: Path, target: Path) -> None:
    """Rename a finished folder to `target`, so that a reader (or a kill at any moment) finds the old
    folder or the new one, never a mix and never none. Both must be on the same file system (make
    `staging` with `make_staging_folder`).

    An existing `target` is exchanged with `staging` in one step where the system can (Linux
    renameat2), then deleted; elsewhere it is first renamed aside (".<name>.old-<pid>-<hex>") and
    deleted after the rename, and `remove_stale_temporaries` puts it back if a kill came between.
    """
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it holds the old folder now
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step; False where the system or file system cannot."""
    function = _renameat2()
    if function is None:
        return False
    at_cwd, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE (linux/fcntl.h)
    if function(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(first), None, os.fspath(second))


@contextlib.contextmanager
def folder_lock(folder: Path | str) -> Iterator[bool]:
    """Hold an exclusive lock on `folder` while the block runs (flock on the folder itself, so no
    lock file is left; the system releases it when the process dies, kill -9 included). Yields
    True when locked, False where the system or file system cannot lock (nothing is held then)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield False
        return
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            locked = True
        except OSError:  # e.g. a network file system without flock
            locked = False
        yield locked
    finally:
        os.close(handle)  # releases the lock


# --- leftovers of killed writers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """A temporary file or folder a killed writer left: removed, or (an old folder set aside by an
    interrupted swap) renamed back to `restored_to`. reason: why it was judged stale."""

    path: Path
    reason: str
    restored_to: Path | None = None

    def describe(self) -> str:
        if self.restored_to is not None:
            return f"restored {self.restored_to} from {self.path.name}, set aside by an interrupted swap"
        return f"removed {self.path}, left by an interrupted write ({self.reason})"


def writer_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (a zombie counts as gone). Where that
    cannot be told (Windows), True: the leftover then waits for MAX_AGE_SECONDS."""
    if pid == os.getpid():
        return True
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    try:  # killed but not yet reaped by its parent: state Z in /proc/PID/stat
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_reason(path: Path, pid: int | None, grace_seconds: float = GRACE_SECONDS) -> str | None:
    """Why the leftover `path` (made by process `pid`, None when unknown) can be deleted, or None
    while its writer may still be at work."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    age = time.time() - info.st_mtime
    if pid is not None:
        if not writer_alive(pid):
            return f"its writer, process {pid}, is gone"
        return f"older than {MAX_AGE_SECONDS / 3600:g} h" if age > MAX_AGE_SECONDS else None
    return f"older than {grace_seconds:g} s" if age > grace_seconds else None


def remove_leftover(path: Path, reason: str) -> Leftover | None:
    """Delete a stale file or folder and log it; None (and a logged warning) when it cannot be."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:  # another run removed it first
        return None
    except OSError as exc:
        log.warning("cannot remove %s, left by an interrupted write: %s", path, exc)
        return None
    leftover = Leftover(path, reason)
    log.info("%s", leftover.describe())
    return leftover


def remove_stale_temporaries(
    folder: Path | str, targets: Collection[str] | None = None, grace_seconds: float = GRACE_SECONDS
) -> list[Leftover]:
    """Remove the temporary files and folders of killed writers in `folder` (see the module
    docstring for the names and when one is stale); returns what was removed or restored.

    targets: only the temporaries of these names (e.g. a bundle folder's name, in its parent);
    None: of any name. A folder that does not exist has nothing to remove.
    """
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    leftovers: list[Leftover] = []
    for entry in entries:
        found = _parse_temporary(entry)
        if found is None:
            continue
        kind, target, pid = found
        if targets is not None and target not in targets:
            continue
        reason = stale_reason(entry, pid, grace_seconds)
        if reason is None:
            continue
        original = folder / target
        if kind == "aside" and not os.path.lexists(original):
            leftover = _restore(entry, original, reason)
        else:
            leftover = remove_leftover(entry, reason)
        if leftover is not None:
            leftovers.append(leftover)
    return leftovers


def _parse_temporary(entry: Path) -> tuple[str, str, int | None] | None:
    """(kind "file", "staging" or "aside"; the target's name; the writer's PID or None) of a
    temporary name, or None for any other entry."""
    if not entry.name.startswith("."):
        return None
    if entry.is_dir() and not entry.is_symlink():
        patterns = (("staging", _STAGING_FOLDER), ("aside", _ASIDE_FOLDER))
    else:
        patterns = (("file", _TEMPORARY_FILE),)
    for kind, pattern in patterns:
        match = pattern.match(entry.name)
        if match is not None:
            pid = match["pid"]
            return kind, match["target"], None if pid is None else int(pid)
    return None


def _restore(aside: Path, original: Path, reason: str) -> Leftover | None:
    try:
        os.rename(aside, original)
    except OSError as exc:
        log.warning("cannot rename %s back to %s: %s", aside, original, exc)
        return None
    leftover = Leftover(aside, reason, restored_to=original)
    log.warning("%s", leftover.describe())
    return leftover
