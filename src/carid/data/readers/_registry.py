"""The reader registry: `register_reader`, the `Reader` record and `DatasetError`.

Kept apart from the package file so that the reader modules import this, and the package file
imports the readers (to register them), without an import circle. Import these names from
`carid.data.readers`; the reader modules import them from here.
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


READERS: dict[str, Reader] = {}  # name -> reader, in registration order


def register_reader(
    name: str, description: str, sniff: Callable[[Path], int]
) -> Callable[[ReadFunction], ReadFunction]:
    """Decorator registering `read` under `name`; a second registration of a name is an error."""

    def decorate(read: ReadFunction) -> ReadFunction:
        if name in READERS:
            raise ValueError(f"reader {name!r} is registered twice")
        READERS[name] = Reader(name, description, sniff, read)
        return read

    return decorate
