"""Dataset readers: one module per annotation format, one registry, one entry point.

Every reader turns a dataset on disk into a `SampleTable` (see `carid.data.samples`). A reader
never raises for a bad row or a bad file: it records a `Problem` naming the file (and row, line
or field) and goes on. It raises `DatasetError` only when the path cannot be that format at all.

Readers register themselves with `@register_reader(name)`; `read_dataset(path, format=None)`
detects the format when exactly one reader claims the path, and says which ones did when the
choice is ambiguous, so the user can pass `--format`. The registry itself lives in the private
module `_registry` (the readers import it from there, so nothing circles back to this file).
What several readers share (box checks, one-pass folder listings, split names) lives in the
private module `_common`; what both Stanford readers share in `_stanford_devkit` (the devkit's
annotation files), `_stanford_crops_table` (the crops layout) and `_stanford_cross_check` (crops
against boxes), so that neither Stanford reader imports the other.
"""

from __future__ import annotations

from pathlib import Path

from carid.data.readers._registry import READERS, DatasetError, Reader, ReadFunction, register_reader
from carid.data.samples import SampleTable

__all__ = [
    "DatasetError",
    "ReadFunction",
    "Reader",
    "available_formats",
    "detect_format",
    "get_reader",
    "read_dataset",
    "register_reader",
]


def _load_builtin_readers() -> None:
    # Imported for their registration side effect; the order is the order of `available_formats`.
    from carid.data.readers import (  # noqa: F401
        coco,
        csvboxes,
        folder,
        stanford,
        stanford_crops,
        voc,
        yolo,
    )


def available_formats() -> dict[str, str]:
    """Format name -> one-line description, for `--help` and error messages."""
    _load_builtin_readers()
    return {name: reader.description for name, reader in READERS.items()}


def get_reader(name: str) -> Reader:
    _load_builtin_readers()
    try:
        return READERS[name]
    except KeyError:
        known = ", ".join(sorted(READERS))
        raise DatasetError(f"unknown format {name!r}; known formats: {known}") from None


def detect_format(path: Path) -> str:
    """The single format whose reader is most sure about `path`; DatasetError otherwise."""
    _load_builtin_readers()
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    scores = {name: reader.sniff(path) for name, reader in READERS.items()}
    best = max(scores.values(), default=0)
    if best == 0:
        known = ", ".join(sorted(READERS))
        raise DatasetError(
            f"{path}: no known dataset layout found (looked for: {known}); pass --format to force one"
        )
    winners = sorted(name for name, score in scores.items() if score == best)
    if len(winners) > 1:
        raise DatasetError(f"{path}: ambiguous layout, matches {', '.join(winners)}; pass --format to choose")
    return winners[0]


def read_dataset(path: Path | str, format: str | None = None) -> SampleTable:
    """Read any supported dataset into a SampleTable, detecting the format unless given."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    name = format or detect_format(path)
    return get_reader(name).read(path)
