"""Which photos a scaled prediction job answers, in which order, and how they are cut into shards.

The SOURCE of a job is one of:

- files, folders and glob patterns, as `carid predict` takes them: `carid.runtime.predict_io.gather_inputs`
  finds the same photos in the same order, and the entries it skips (a FIFO named like a photo, a
  folder that cannot be listed) come first, as in `carid predict`, each to get its error row;
- a list file (`.txt`, `.lst`, `.list`): one photo path per line; blank lines and lines starting
  with `#` are ignored;
- a manifest (`.csv`): a CSV file with a `path` column (its other columns are ignored).

A list file or a manifest is the job's only SOURCE. Relative paths in it are taken from its own
folder (the list travels with its photos); a path named twice is answered once; an entry that is
no regular file is never opened (reading a FIFO waits forever) and gets an error row, a missing
photo gets the predictor's error row: nothing in a list stops a job.

Shards are fixed runs of `shard_size` photos in this order, numbered from 0, so the shard a photo
falls in depends only on its position: a rerun on the same inputs finds the same shards, and
`Plan.digest` (SHA-256 of the ordered list) lets a rerun on other photos be refused rather than
mixed with the shards already written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from carid.data.listing import unusable_entry
from carid.errors import CaridError
from carid.runtime.predict_io import gather_inputs, skipped_prediction

LIST_SUFFIXES = (".txt", ".lst", ".list")
MANIFEST_SUFFIX = ".csv"
MANIFEST_COLUMN = "path"
SHARD_PREFIX = "shard-"


class ScaleError(CaridError, ValueError):
    """A scaled prediction job that cannot run as asked; the message names the file and the problem."""


@dataclass(frozen=True)
class Item:
    """One photo of a job: its path as it will appear in the `path` column, and, for an entry that
    must not be opened, the error its row carries."""

    path: str
    skipped: str | None = None


@dataclass(frozen=True)
class Shard:
    """A fixed run of the job's photos; `name` ("shard-00042") names its file."""

    index: int
    items: tuple[Item, ...]

    @property
    def name(self) -> str:
        return f"{SHARD_PREFIX}{self.index:05d}"

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(item.path for item in self.items)


@dataclass(frozen=True)
class Plan:
    """The job's photos in order and the shards they are cut into."""

    items: tuple[Item, ...]
    shard_size: int

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ScaleError(f"shard size must be at least 1, got {self.shard_size}")

    @cached_property
    def shards(self) -> tuple[Shard, ...]:
        size = self.shard_size
        return tuple(
            Shard(number, self.items[start : start + size])
            for number, start in enumerate(range(0, len(self.items), size))
        )

    @cached_property
    def digest(self) -> str:
        """SHA-256 of the ordered photos (and which are skipped): equal plans, equal shards."""
        hasher = hashlib.sha256()
        for item in self.items:
            hasher.update(item.path.encode("utf-8", "surrogateescape"))
            hasher.update(b"\x00" + (item.skipped or "").encode("utf-8", "surrogateescape") + b"\n")
        return hasher.hexdigest()


def plan_job(inputs: Sequence[str | Path], shard_size: int) -> Plan:
    """The photos named by `inputs` (see the module docstring), cut into shards of `shard_size`.

    Raises ScaleError for a list file or manifest that cannot be read or mixed with other inputs,
    InputError (`carid.runtime.predict_io`) for paths as `carid predict` does.
    """
    if len(inputs) == 1 and _list_kind(Path(inputs[0])) is not None:
        return Plan(tuple(read_list(Path(inputs[0]))), shard_size)
    for item in inputs:
        if _list_kind(Path(item)) is not None and Path(item).is_file():
            raise ScaleError(f"{item}: a list file or manifest must be the only SOURCE")
    gathered = gather_inputs(inputs)
    skipped = [Item(str(entry.path), skipped_prediction(entry).error) for entry in gathered.skipped]
    return Plan((*skipped, *(Item(str(path)) for path in gathered.images)), shard_size)


def read_list(path: Path) -> list[Item]:
    """The photos of a list file or a manifest (by its suffix), in its order, repeats dropped."""
    kind = _list_kind(path)
    if kind is None:
        raise ScaleError(f"{path}: expected a list file ({', '.join(LIST_SUFFIXES)}) or a .csv manifest")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScaleError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ScaleError(f"{path}: cannot read this file ({exc.strerror or exc})") from None
    entries = _manifest_paths(path, text) if kind == "manifest" else _list_paths(text)
    if not entries:
        raise ScaleError(f"{path}: names no photos")
    folder = path.parent
    items: dict[str, Item] = {}
    for entry in entries:
        photo = Path(entry).expanduser()
        if not photo.is_absolute():
            photo = folder / photo
        key = os.path.abspath(photo)
        if key not in items:
            unusable = unusable_entry(photo)
            error = None if unusable is None else skipped_prediction(unusable).error
            items[key] = Item(str(photo), error)
    return list(items.values())


def _list_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in LIST_SUFFIXES:
        return "list"
    return "manifest" if suffix == MANIFEST_SUFFIX else None


def _list_paths(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _manifest_paths(path: Path, text: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    if MANIFEST_COLUMN not in columns:
        found = ", ".join(repr(column) for column in columns) or "none"
        raise ScaleError(f"{path}: a manifest needs a {MANIFEST_COLUMN!r} column (columns found: {found})")
    paths = []
    for number, row in enumerate(reader, start=2):
        value = (row.get(MANIFEST_COLUMN) or "").strip()
        if not value:
            raise ScaleError(f"{path}: row {number} has an empty {MANIFEST_COLUMN!r}")
        paths.append(value)
    return paths
