"""Where image URLs come from: the `ImageSource` plugin interface, its registry and two built-ins.

A source turns a query into `Candidate`s (url, label, meta). Built in:

- ``csv``: the query is a CSV file with a header holding ``label`` and ``url`` columns (any case,
  any order); other columns travel into the manifest as ``extra``; blank lines are skipped.
- ``list``: the query is a text file of URLs, one per line, all labelled with the file's stem
  (``sedan.txt`` -> "sedan"), or a folder of such ``.txt`` files; ``#`` comments and blank lines
  are skipped.

Anything else (a web search API, a photo site, an internal catalogue) is a plugin: a class or
factory registered in code with `register_source`, or published by an installed package under the
entry-point group ``carid.sources`` (see docs/collect.md). Plugins are looked up by name only when
asked for, so one broken plugin cannot break the others.

Sources only propose URLs; validating them (empty fields, repeats, conflicting labels) and
downloading is the collector's job (`carid.data.collect.download`), the same for every source.
"""

from __future__ import annotations

import csv
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from carid.data.samples import Problem, Severity
from carid.errors import CaridError

ENTRY_POINT_GROUP = "carid.sources"


class SourceError(CaridError, ValueError):
    """A source cannot be found, built or read (unknown name, missing file, no header): user-fixable."""


@dataclass(frozen=True)
class Candidate:
    """One image URL proposed by a source.

    label: the class the image should be filed under (any text; made folder-safe later).
    meta: JSON-serialisable facts to keep in the manifest (extra CSV columns, a search rank, the
        page the image was found on, its licence, ...).
    origin: where the candidate came from, for messages ("urls.csv line 7", "bing query 'audi a4'");
        the collector fills it in when a source leaves it empty.
    """

    url: str
    label: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    origin: str = ""


@runtime_checkable
class ImageSource(Protocol):
    """The plugin interface.

    name: the source's registry name.
    search(query, limit): candidate images for `query`, at most `limit` of them (0 = no limit);
        sources whose one query yields several labels (the CSV and list files) apply the limit per
        label. It may be a generator. Raise `SourceError` for a problem the user must fix (bad
        query, missing credentials); any other exception is recorded as a problem for that query
        and the other queries go on.
    """

    name: str

    def search(self, query: str, limit: int) -> Iterable[Candidate]: ...


SourceFactory = Callable[..., ImageSource]


@dataclass(frozen=True)
class _Registration:
    factory: SourceFactory
    description: str


_SOURCES: dict[str, _Registration] = {}


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def register_source(
    name: str, factory: SourceFactory | None = None, *, description: str = ""
) -> Callable[[SourceFactory], SourceFactory] | SourceFactory:
    """Register `factory` (a class or function returning an ImageSource) under `name`.

    Use as ``register_source("mine", MySource)`` or as a decorator ``@register_source("mine")``.
    `get_source(name, **options)` calls ``factory(**options)``. A second registration of a name
    is an error. `description` defaults to the first line of the factory's docstring.
    """

    def decorate(target: SourceFactory) -> SourceFactory:
        if name in _SOURCES:
            raise ValueError(f"image source {name!r} is registered twice")
        _SOURCES[name] = _Registration(target, description or _first_line(target.__doc__))
        return target

    return decorate(factory) if factory is not None else decorate


def unregister_source(name: str) -> None:
    """Forget a registration (for tests and interactive sessions); unknown names are ignored."""
    _SOURCES.pop(name, None)


def _entry_points(name: str | None = None) -> list[importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return [ep for ep in found if name is None or ep.name == name]


def _plugin_description(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    package = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin {entry_point.value}{package}"


def available_sources() -> dict[str, str]:
    """Source name -> one-line description: registered ones, then installed plugins (not imported)."""
    names = {name: registration.description for name, registration in _SOURCES.items()}
    for entry_point in _entry_points():
        names.setdefault(entry_point.name, _plugin_description(entry_point))
    return names


def _load_plugin(name: str) -> SourceFactory | ImageSource:
    found = _entry_points(name)
    if not found:
        known = ", ".join(sorted(available_sources()))
        raise SourceError(
            f"unknown image source {name!r}; known: {known}. Plugins register under the entry-point "
            f"group {ENTRY_POINT_GROUP!r} (see docs/collect.md)"
        )
    values = sorted({ep.value for ep in found})
    if len(values) > 1:
        raise SourceError(f"image source {name!r} is declared by several plugins: {', '.join(values)}")
    try:
        return found[0].load()
    except Exception as exc:
        raise SourceError(
            f"image source plugin {name!r} ({_plugin_description(found[0])}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def get_source(name: str, **options: Any) -> ImageSource:
    """Build the source registered (or installed as a plugin) under `name` with `options`.

    A plugin's entry point may name a class, a factory function, or a ready instance (then no
    options may be given). Raises SourceError naming the problem.
    """
    target: SourceFactory | ImageSource = _SOURCES[name].factory if name in _SOURCES else _load_plugin(name)
    if not isinstance(target, type) and isinstance(target, ImageSource):
        if options:
            raise SourceError(f"image source {name!r} is a ready instance and takes no options")
        source = target
    elif callable(target):
        try:
            source = target(**options)
        except TypeError as exc:
            raise SourceError(f"image source {name!r}: cannot build it with {options}: {exc}") from exc
    else:
        raise SourceError(f"image source {name!r} is a {type(target).__name__}, not a class or factory")
    if not isinstance(source, ImageSource):
        raise SourceError(
            f"image source {name!r} gave a {type(source).__name__}, "
            "which lacks `name` or `search(query, limit)`"
        )
    return source


def detect_source(query: str) -> str:
    """The built-in source for a path: "csv" for a .csv file, "list" for a .txt file or a folder."""
    path = Path(query)
    if path.suffix.lower() == ".csv":
        return "csv"
    if path.suffix.lower() == ".txt" or path.is_dir():
        return "list"
    raise SourceError(
        f"{query!r}: cannot tell which source reads it (a .csv file is read by 'csv', a .txt file or "
        f"a folder of them by 'list'); pass --source (known: {', '.join(sorted(available_sources()))})"
    )


def search_all(
    source: ImageSource, queries: Sequence[str], limit: int = 0
) -> tuple[list[Candidate], list[Problem]]:
    """Every candidate `source` gives for `queries`, with an origin on each, and the problems met.

    SourceError propagates (the user must fix something); any other failure of one query, and any
    item that is not a Candidate, becomes an ERROR problem (``source_error``) and the rest goes on.
    """
    candidates: list[Candidate] = []
    problems: list[Problem] = []
    for query in queries:
        where = f"{source.name} query {query!r}"
        try:
            for number, item in enumerate(source.search(query, limit), start=1):
                if not isinstance(item, Candidate):
                    problems.append(
                        Problem(
                            "source_error",
                            f"result {number} is a {type(item).__name__}, not a carid Candidate; ignored",
                            source=where,
                        )
                    )
                    continue
                candidates.append(item if item.origin else replace(item, origin=f"{where} result {number}"))
        except SourceError:
            raise
        except Exception as exc:
            problems.append(
                Problem(
                    "source_error",
                    f"search failed after {len(candidates)} candidates: {type(exc).__name__}: {exc}",
                    source=where,
                    severity=Severity.ERROR,
                )
            )
    return candidates, problems


class _PerLabelLimit:
    """Counts candidates per label; `full(label)` once `limit` (> 0) were taken."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken: dict[str, int] = {}

    def take(self, label: str) -> bool:
        if self.limit > 0 and self.taken.get(label, 0) >= self.limit:
            return False
        self.taken[label] = self.taken.get(label, 0) + 1
        return True


@register_source("csv", description="a CSV file with a header and label,url columns (others kept)")
class CsvSource:
    """Read candidates from a CSV file with a header holding `label` and `url` (other columns kept).

    Rows may have fewer cells than the header (missing ones are empty, so the collector reports a
    missing URL or label); cells beyond the header go to meta["extra_cells"].
    """

    name = "csv"

    def __init__(self, delimiter: str = ",", encoding: str = "utf-8-sig") -> None:
        self.delimiter = delimiter
        self.encoding = encoding

    def search(self, query: str, limit: int = 0) -> Iterator[Candidate]:
        path = Path(query)
        if not path.is_file():
            raise SourceError(f"{path}: no such CSV file")
        counter = _PerLabelLimit(limit)
        try:
            with path.open(newline="", encoding=self.encoding) as handle:
                reader = csv.reader(handle, delimiter=self.delimiter)
                header = next((row for row in reader if any(cell.strip() for cell in row)), None)
                if header is None:
                    raise SourceError(f"{path}: empty file; expected a header line such as 'label,url'")
                names = [cell.strip() for cell in header]
                lowered = [name.lower() for name in names]
                missing = [column for column in ("label", "url") if column not in lowered]
                if missing:
                    raise SourceError(
                        f"{path} line {reader.line_num}: the header {names} has no {' or '.join(missing)} "
                        "column; the first line must name the columns, e.g. 'label,url'"
                    )
                repeated = sorted({name for name in lowered if lowered.count(name) > 1})
                if repeated:
                    raise SourceError(f"{path} line {reader.line_num}: repeated column(s) {repeated}")
                label_at, url_at = lowered.index("label"), lowered.index("url")
                for row in reader:
                    if not any(cell.strip() for cell in row):
                        continue
                    cells = row + [""] * (len(names) - len(row))
                    label = cells[label_at].strip()
                    if not counter.take(label):
                        continue
                    meta: dict[str, Any] = {
                        name: cells[i] for i, name in enumerate(names) if i not in (label_at, url_at)
                    }
                    if len(row) > len(names):
                        meta["extra_cells"] = row[len(names) :]
                    yield Candidate(
                        url=cells[url_at].strip(),
                        label=label,
                        meta=meta,
                        origin=f"{path} line {reader.line_num}",
                    )
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}: not UTF-8 text ({exc})") from exc
        except csv.Error as exc:
            raise SourceError(f"{path}: not a readable CSV ({exc})") from exc


@register_source("list", description="a text file of URLs labelled by its stem, or a folder of them")
class ListSource:
    """Read URLs from `<label>.txt` (one per line, # comments), or from every .txt file in a folder."""

    name = "list"

    def __init__(self, encoding: str = "utf-8-sig") -> None:
        self.encoding = encoding

    def search(self, query: str, limit: int = 0) -> Iterator[Candidate]:
        path = Path(query)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
            if not files:
                raise SourceError(f"{path}: no .txt URL lists in this folder (expected <label>.txt files)")
        elif path.is_file():
            files = [path]
        else:
            raise SourceError(f"{path}: no such file or folder")
        for file in files:
            yield from self._read(file, limit)

    def _read(self, file: Path, limit: int) -> Iterator[Candidate]:
        label = file.stem
        taken = 0
        try:
            with file.open(encoding=self.encoding) as handle:
                for number, line in enumerate(handle, start=1):
                    url = line.strip()
                    if not url or url.startswith("#"):
                        continue
                    if limit > 0 and taken >= limit:
                        return
                    taken += 1
                    yield Candidate(url=url, label=label, origin=f"{file} line {number}")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{file}: not UTF-8 text ({exc})") from exc
