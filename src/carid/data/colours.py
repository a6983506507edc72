"""`carid data fix-colours`: write a copy of a dataset with red and blue swapped back in every image.

The repair for a dataset flagged by `carid.data.colour_order` when a corrected copy is wanted
rather than `data.swap_rb` (a copy also serves tools outside carid, and `carid evaluate` or
`carid predict` on its images). The folder layout is kept: every image is decoded (EXIF orientation
applied, alpha on white, as carid reads it), its red and blue channels exchanged and written back
under the same relative path in the same format (JPEG at quality 95, so the copy is re-encoded
once); every other file (annotations, lists, CSVs) is copied byte for byte. Every file is written
atomically (`carid.files.write_atomic`). A file that cannot be decoded is copied unchanged and
named in the result, as the data checks would report it; nothing is skipped silently.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from carid.errors import CaridError
from carid.files import write_atomic
from carid.images import IMAGE_SUFFIXES, ImageError, load_rgb, swap_red_blue

JPEG_QUALITY = 95

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".gif": "GIF"}
_FORMATS |= {".tif": "TIFF", ".tiff": "TIFF"}


class FixColoursError(CaridError, ValueError):
    """The copy cannot be made (missing source, an output folder in the way)."""


@dataclass(frozen=True)
class FixColoursResult:
    """What `fix_colours` wrote: images swapped, other files copied, images that could not be
    decoded (copied unchanged, each with the reason)."""

    source: Path
    out: Path
    images: int
    copied: int
    unreadable: tuple[str, ...]


def _encoded(path: Path) -> bytes:
    """The image at `path` with red and blue swapped, encoded in the format its suffix names."""
    image = swap_red_blue(load_rgb(path))
    buffer = io.BytesIO()
    fmt = _FORMATS.get(path.suffix.lower(), "PNG")
    options = {"quality": JPEG_QUALITY} if fmt in ("JPEG", "WEBP") else {}
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def fix_colours(source: Path | str, out: Path | str) -> FixColoursResult:
    """Copy the dataset folder `source` to `out` with red and blue swapped in every image.

    Raises FixColoursError when `source` is not a folder, `out` exists and is not empty, or `out`
    lies inside `source`. Symbolic links are followed for files, not for folders.
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FixColoursError(f"{source}: not a dataset folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FixColoursError(f"{out}: the output folder exists and is not empty; give a new folder")
    if out.resolve().is_relative_to(source.resolve()):
        raise FixColoursError(f"{out}: the output folder must not lie inside the source {source}")
    images, copied, unreadable = 0, 0, []
    for folder, subfolders, files in os.walk(source):
        subfolders.sort()
        for name in sorted(files):
            path = Path(folder) / name
            target = out / path.relative_to(source)
            data = None
            if path.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    data = _encoded(path)
                except ImageError as exc:
                    unreadable.append(f"{path}: {exc.reason}")
            try:
                write_atomic(target, path.read_bytes() if data is None else data)
                shutil.copymode(path, target)
            except OSError as exc:
                raise FixColoursError(f"{path}: cannot write it to {target} ({exc.strerror or exc})") from exc
            if data is None:
                copied += 1
            else:
                images += 1
    return FixColoursResult(source, out, images, copied - len(unreadable), tuple(unreadable))
