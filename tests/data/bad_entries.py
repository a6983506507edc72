"""Folder entries that must never stop a dataset command, made in a test's tmp_path.

`symlink_loop` (a link to itself and a link back up the tree), `fifo` (a named pipe with an
image's name: opening it for reading blocks until a writer comes), `undecodable_file` (a file name
that is not valid UTF-8) and `deny_listing` (a folder that cannot be listed: chmod 000 does not
stop root, so the listing is refused by a patched `os.scandir` instead; `really_unreadable`
tells whether a real chmod 000 works for this user).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

UNDECODABLE = b"bad\xff\xfe.jpg"  # "bad" + two bytes that are not UTF-8 + ".jpg"
UNDECODABLE_SHOWN = "bad\\xff\\xfe.jpg"  # how reports show it


def symlink_loop(folder: Path) -> tuple[Path, Path]:
    """`folder/loop` -> itself (ELOOP on any use) and `folder/up` -> `folder` (a cycle of folders)."""
    folder.mkdir(parents=True, exist_ok=True)
    loop, up = folder / "loop", folder / "up"
    os.symlink(loop, loop)
    os.symlink(folder.resolve(), up, target_is_directory=True)
    return loop, up


def fifo(path: Path) -> Path:
    """A named pipe at `path` (e.g. x.jpg)."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def undecodable_file(folder: Path, data: bytes, name: bytes = UNDECODABLE) -> Path:
    """A file named with bytes that are not UTF-8; returns its path (a str with surrogate escapes)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = os.path.join(os.fsencode(folder), name)
    try:
        with open(target, "wb") as handle:
            handle.write(data)
    except (OSError, UnicodeError) as exc:  # a file system that insists on UTF-8 names
        pytest.skip(f"cannot create a non-UTF-8 file name here ({exc})")
    return Path(os.fsdecode(target))


def deny_listing(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `os.scandir(folder)` raise PermissionError, as for a chmod 000 folder of another user."""
    real = os.scandir
    denied = os.path.realpath(folder)

    def scandir(path=".", *args, **kwargs):
        if not isinstance(path, int) and os.path.realpath(os.fsdecode(path)) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)


def really_unreadable(folder: Path) -> bool:
    """chmod 000 `folder` and tell whether it is now unreadable to us (never for root)."""
    folder.chmod(0)
    try:
        os.listdir(folder)
    except PermissionError:
        return True
    folder.chmod(0o755)
    return False
