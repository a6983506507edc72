"""Writing files so that a reader (or a crash) never sees half of one: `write_atomic`.

Every writer goes through one function: the data goes to a hidden temporary file in the target's
folder (same file system, so the rename is atomic), optionally fsynced, made world-readable (mkstemp
creates 0600 files, and bundles, reports and pictures are meant to be shared), then renamed over the
target. On any failure, Ctrl-C included, the temporary file is removed and the old file, if any, is
untouched. Temporary names start with ".<name>." and end with TEMP_SUFFIX so that a later run can
recognise the leftovers of a killed process (`remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o644


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
        prefix=f".{path.name}.", suffix=TEMP_SUFFIX + suffix, dir=path.parent
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


def move_folder_into_place(staging: Path, target: Path) -> None:
    """Rename a finished folder to `target`. An existing `target` is first renamed aside (to a hidden
    ".<name>.old-*" beside it), then deleted, so a reader finds the old folder or the new one, never
    a mix of the two. Both must be on the same file system (make `staging` beside `target`)."""
    if not target.exists():
        staging.rename(target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
