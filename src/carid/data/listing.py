"""Listing folders so that no entry in them can stop the work: what cannot be used is named, not raised.

    scan_folder(folder)     -> FolderListing(folders, files, skipped): one folder, one pass
    walk_files(folder)      -> FolderListing(folders=[], files, skipped): all files below it
    unusable_entry(path)    -> Skipped | None: why a path named on its own cannot be used
    not_regular(path)       -> Skipped | None: a FIFO, socket or device, before anything opens it

Files are regular files only (a link to one counts). Everything else is a `Skipped` entry with a
kind and a reason, and is never opened:

- unreadable_folder: a folder that cannot be listed (permissions, I/O error); its files are lost.
- symlink_loop: a link that leads back to itself (ELOOP), or, while walking, to a folder already
  walked (a link up the tree would otherwise be walked round until the path is too long).
- not_a_regular_file: a FIFO (opening one for reading waits for a writer forever), a socket, a
  device, or a link to nothing.
- unreadable_entry: an entry whose type cannot be read.

The dataset readers (`carid.data.readers._common`, `carid.data.readers.folder`) turn skipped
entries into `Problem`s; `carid predict` (`carid.runtime.predict_io`) into error rows.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

_FILE_TYPES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


@dataclass(frozen=True)
class Skipped:
    """An entry that was not used: kind (see the module docstring) and what it is, in words
    ("cannot list this folder (Permission denied)"); users of a listing add "skipped"."""

    path: Path
    kind: str
    reason: str


@dataclass
class FolderListing:
    """Sub-folders and regular files (each sorted), and the entries skipped, in listing order."""

    folders: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """False when a folder could not be listed, so files may be missing."""
        return not any(item.kind == "unreadable_folder" for item in self.skipped)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def unreadable_folder(folder: Path, exc: OSError) -> Skipped:
    return Skipped(folder, "unreadable_folder", f"cannot list this folder ({_reason(exc)})")


def _special(path: Path, mode: int) -> Skipped | None:
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    what = next((text for test, text in _FILE_TYPES if test(mode)), "an unknown kind of entry")
    return Skipped(path, "not_a_regular_file", f"not a regular file ({what}), never opened")


def not_regular(path: Path) -> Skipped | None:
    """A ``not_a_regular_file`` entry when `path` exists and is neither a regular file nor a folder
    (a FIFO, socket or device, or a link to one); None otherwise, also when it cannot be looked
    at (opening it then says what is wrong)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return _special(path, mode)


def unusable_entry(path: Path) -> Skipped | None:
    """Why `path` can be used neither as a file nor as a folder (a FIFO, a link loop, a dangling
    link, ...); None for a regular file, a folder, or when nothing is there at all."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT and not os.path.islink(path):
            return None
        return _entry_failure(path, exc)
    return _special(path, mode)


def _entry_failure(path: Path, exc: OSError) -> Skipped:
    """Why an entry of a listing cannot be looked at: a link loop, a dangling link, or else."""
    if exc.errno == errno.ELOOP:
        return Skipped(path, "symlink_loop", "symbolic link loop (the link leads back to itself)")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(path):
        reason = f"not a regular file (a link to {os.readlink(path)}, which does not exist)"
        return Skipped(path, "not_a_regular_file", reason)
    return Skipped(path, "unreadable_entry", f"cannot tell what this is ({_reason(exc)})")


def scan_folder(folder: Path, hidden: bool = False) -> FolderListing:
    """The entries directly in `folder`, one listing; never raises.

    hidden: also list names starting with "." (".DS_Store", ".git"), which are not data.
    An unreadable `folder` gives an empty listing with one `unreadable_folder` entry.
    """
    listing = FolderListing()
    try:
        with os.scandir(folder) as iterator:
            entries = list(iterator)
    except OSError as exc:
        listing.skipped.append(unreadable_folder(Path(folder), exc))
        return listing
    for entry in sorted(entries, key=lambda item: item.name):
        if not hidden and entry.name.startswith("."):
            continue
        path = Path(folder) / entry.name
        try:
            if entry.is_dir():
                listing.folders.append(path)
                continue
            if entry.is_file():
                listing.files.append(path)
                continue
            mode = os.stat(path).st_mode
        except OSError as exc:  # ELOOP (a link to itself), a dangling link, ...
            listing.skipped.append(_entry_failure(path, exc))
            continue
        skipped = _special(path, mode)
        if skipped is not None:
            listing.skipped.append(skipped)
    return listing


def folder_identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the real folder behind `folder`, None when it cannot be read."""
    try:
        status = os.stat(folder)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def walk_files(
    folder: Path,
    hidden: bool = False,
    follow_links: bool = True,
    seen: dict[tuple[int, int], Path] | None = None,
) -> FolderListing:
    """Every regular file below `folder`, depth first: a folder's files, then each sub-folder in
    name order; never raises. `folders` stays empty.

    follow_links: walk into linked folders (each real folder once: a link to a folder already
        walked is a `symlink_loop` entry). False passes linked folders over without a word.
    seen: (device, inode) -> path of the folders walked so far; pass one dict to several calls
        to walk each real folder once in all. A caller may enter folders it walks itself (a
        dataset's root and class folders): a link to one of them is then a `symlink_loop` entry,
        while the folder itself, reached by that path, is walked.
    """
    seen = {} if seen is None else seen
    result = FolderListing()
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        identity = folder_identity(current)
        if identity is not None:
            first = seen.setdefault(identity, current)
            if first != current:
                reason = f"link to {first}, which is read as itself (so that no file is read twice)"
                result.skipped.append(Skipped(current, "symlink_loop", reason))
                continue
        listing = scan_folder(current, hidden=hidden)
        result.files.extend(listing.files)
        result.skipped.extend(listing.skipped)
        folders = listing.folders if follow_links else [f for f in listing.folders if not f.is_symlink()]
        stack.extend(reversed(folders))
    return result
