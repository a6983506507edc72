"""Dataset readers: one module per annotation format, one registry, one entry point.

Every reader turns a dataset on disk into a `SampleTable` (see `carid.data.samples`). A reader
never raises for a bad row or a bad file: it records a `Problem` naming the file (and row, line
or field) and goes on. It raises `DatasetError` only when the path cannot be that format at all.

Readers register themselves with `@register_reader(name)`; `read_dataset(path, format=None)`
detects the format when exactly one reader claims the path, and says which ones did when the
choice is ambiguous, so the user can pass `--format`. What several readers share (box checks,
one-pass folder listings, split names) lives in the private module `_common`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from carid.data.samples import SampleTable
from carid.errors import CaridError


class DatasetError(CaridError, ValueError):
    """The path cannot be read as a dataset (of the requested format); the message says why."""


class ReadFunction(Protocol):
    """A reader: `read(path) -> SampleTable`.

    A reader may also take optional keyword-only arguments (e.g. ``read_csv_boxes(path, *,
    box_label="car")``, ``read_stanford(path, *, crops=None, cross_check=True)``); each needs a
    default, since `read_dataset` calls every reader with the path alone.
    """

    def __call__(self, path: Path) -> SampleTable: ...


@dataclass(frozen=True)
class Reader:
    """A registered format.

    sniff(path) -> int: how sure the reader is that `path` is its format: 0 = no,
        1 = plausible (e.g. a generic folder tree), 2 = certain (its own marker files found).
    read(path, *, options with defaults) -> SampleTable (see `ReadFunction`).
    """

    name: str
    description: str
    sniff: Callable[[Path], int]
    read: ReadFunction


_READERS: dict[str, Reader] = {}


def register_reader(
    name: str, description: str, sniff: Callable[[Path], int]
) -> Callable[[ReadFunction], ReadFunction]:
    """Decorator registering `read` under `name`; a second registration of a name is an error."""

    def decorate(read: ReadFunction) -> ReadFunction:
        if name in _READERS:
            raise ValueError(f"reader {name!r} is registered twice")
        _READERS[name] = Reader(name, description, sniff, read)
        return read

    return decorate


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
    return {name: reader.description for name, reader in _READERS.items()}


def get_reader(name: str) -> Reader:
    _load_builtin_readers()
    try:
        return _READERS[name]
    except KeyError:
        known = ", ".join(sorted(_READERS))
        raise DatasetError(f"unknown format {name!r}; known formats: {known}") from None


def detect_format(path: Path) -> str:
    """The single format whose reader is most sure about `path`; DatasetError otherwise."""
    _load_builtin_readers()
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    scores = {name: reader.sniff(path) for name, reader in _READERS.items()}
    best = max(scores.values(), default=0)
    if best == 0:
        known = ", ".join(sorted(_READERS))
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
