"""The record of a photo collection: one JSON line per URL outcome, and the run summary.

Layout of a collection folder (``carid data collect ... --out out``)::

    out/manifest.jsonl          one `ManifestRecord` per line, appended and flushed as each URL ends
    out/summary.json            `CollectSummary.to_dict()`, rewritten atomically at the end of a run
    out/<folder>/<stem>.<ext>   the images; <folder> is the label made safe (`safe_folder_name`)

JSON Lines because it survives being killed: every complete line is a complete record, a torn
last line (power cut mid-write) is reported and ignored, and a later run appends rather than
rewrites. A URL fetched again in a later run gets a new line; the last line about a URL wins.
The manifest is locked (``flock``, where the platform has it) while a run writes to it, so two
runs cannot interleave their lines in one folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from carid.data.samples import Problem, Severity
from carid.data.text import console_text
from carid.errors import CaridError

try:  # POSIX only; elsewhere the manifest simply is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.json"
PENDING = "pending"  # summary-only state: in the input, not attempted yet (interrupted, --max-new)


class CollectError(CaridError, ValueError):
    """The collection folder cannot be used (not a folder, locked by another run): user-fixable."""


class Outcome(StrEnum):
    """What happened to one URL. Only OK and DUPLICATE count as collected."""

    OK = "ok"  # stored under <folder>/<stem>.<ext>
    DUPLICATE = "duplicate"  # same bytes (sha256) as an image already stored; `path` names that file
    BAD_URL = "bad_url"  # not http(s), no host, unparsable, or redirected to such a URL
    HTTP_ERROR = "http_error"  # a 4xx/5xx status (after retries for 408, 429 and 5xx)
    TIMEOUT = "timeout"  # connect, read gap or whole-response deadline passed (after retries)
    CONNECTION_ERROR = "connection_error"  # refused, reset, DNS, broken body (after retries)
    TOO_LARGE = "too_large"  # Content-Length or streamed bytes past max_bytes, or too many pixels
    NOT_AN_IMAGE = "not_an_image"  # the bytes carry no image signature (HTML, JSON, ...)
    BROKEN_IMAGE = "broken_image"  # an image signature, but truncated or corrupt pixel data
    UNSUPPORTED_FORMAT = "unsupported_format"  # a real image in a format not accepted (ICO, HEIF, ...)
    TOO_SMALL = "too_small"  # shorter side below min_side pixels
    REDIRECT_LOOP = "redirect_loop"  # a redirect back to a URL already visited
    TOO_MANY_REDIRECTS = "too_many_redirects"  # more hops than max_redirects
    ERROR = "error"  # anything unexpected (disk full, a bug); the message says what


SUCCESS = frozenset({Outcome.OK, Outcome.DUPLICATE})


@dataclass(frozen=True)
class ManifestRecord:
    """The outcome of one URL.

    label: the label as given (stripped of surrounding blanks); folder: the safe folder it maps to.
    path: the stored file relative to the collection folder, POSIX separators ("sedan/3f2a....jpg");
        for a DUPLICATE, the file that already holds the same bytes; None on failure.
    sha256: hex digest of the image bytes; size_bytes: their count; width/height: pixels after EXIF
        orientation; format: Pillow's name ("JPEG", "PNG").
    http_status: status of the last response (None when none arrived); final_url: the URL that
        answered after redirects; redirects: every hop's target URL, in order.
    attempts: requests made for the URL (0 when refused without network); seconds: wall time.
    duplicate_of: for a DUPLICATE, the URL whose bytes were stored first.
    origin: where the URL came from ("urls.csv line 7"); extra: the input's other columns / metadata.
    fetched_at: ISO 8601 UTC time the outcome was recorded.
    """

    url: str
    label: str
    folder: str
    outcome: Outcome
    message: str = ""
    path: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    content_type: str | None = None
    http_status: int | None = None
    final_url: str | None = None
    redirects: tuple[str, ...] = ()
    attempts: int = 0
    seconds: float = 0.0
    duplicate_of: str | None = None
    origin: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    fetched_at: str = ""

    @property
    def succeeded(self) -> bool:
        return self.outcome in SUCCESS

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "label": self.label,
            "folder": self.folder,
            "outcome": str(self.outcome),
            "message": self.message,
            "path": self.path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "content_type": self.content_type,
            "http_status": self.http_status,
            "final_url": self.final_url,
            "redirects": list(self.redirects),
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "duplicate_of": self.duplicate_of,
            "origin": self.origin,
            "extra": dict(self.extra),
            "fetched_at": self.fetched_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ManifestRecord:
        """Inverse of `to_dict`; raises ValueError naming a missing key or an unknown outcome."""
        for key in ("url", "label", "folder", "outcome"):
            if not isinstance(data.get(key), str):
                raise ValueError(f"missing or non-text {key!r}")
        try:
            outcome = Outcome(data["outcome"])
        except ValueError:
            raise ValueError(f"unknown outcome {data['outcome']!r}") from None
        known = {f for f in cls.__dataclass_fields__ if f not in ("outcome", "redirects", "extra")}
        values = {key: data[key] for key in known if key in data and data[key] is not None}
        return cls(
            outcome=outcome,
            redirects=tuple(data.get("redirects") or ()),
            extra=dict(data.get("extra") or {}),
            **values,
        )


# --- where files go -------------------------------------------------------------------------

_SAFE_PUNCTUATION = frozenset(" -_.,()+&'")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)
MAX_FOLDER_BYTES = 100  # UTF-8 bytes of the readable part of a folder name (file systems allow 255)


def timestamp_now() -> str:
    """Now as ISO 8601 UTC to the second: the format of `ManifestRecord.fetched_at`."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def safe_folder_name(label: str) -> str:
    """A folder name for `label` that is one harmless path component, stable across runs.

    Letters, digits and `` -_.,()+&'`` are kept (after NFKC normalisation), anything else (path
    separators, control characters, ...) becomes "_"; leading/trailing dots and blanks go, so
    "." and ".." cannot survive; Windows device names get a "_" prefix; long names are cut at
    MAX_FOLDER_BYTES. Whenever the result differs from the label, "-" and 8 hex digits of the
    label's sha256 are appended, so "a/b" and "a_b" stay two folders.
    """
    text = unicodedata.normalize("NFKC", label)
    name = "".join(c if (c.isalnum() or c in _SAFE_PUNCTUATION) else "_" for c in text)
    name = re.sub(r"_{2,}", "_", name).strip(" .")
    while len(name.encode("utf-8")) > MAX_FOLDER_BYTES:
        name = name[:-1].rstrip(" .")
    if not name or name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = "_" + name
    if name != label:
        name = f"{name}-{_short_hash(label)}"
    return name


class FolderNames:
    """Label -> folder, remembering earlier runs' choices and avoiding case-only clashes.

    Two labels that differ only in case ("BMW", "bmw") would share a folder on macOS and Windows;
    the later one gets the hash suffix. `known` (label -> folder, from the manifest) wins, so a
    label keeps its folder across runs.
    """

    def __init__(self, known: Mapping[str, str] | None = None) -> None:
        self._folders: dict[str, str] = {}
        self._owners: dict[str, str] = {}  # casefolded folder -> label
        for label, folder in (known or {}).items():
            self._folders[label] = folder
            self._owners.setdefault(folder.casefold(), label)

    def folder(self, label: str) -> str:
        if label in self._folders:
            return self._folders[label]
        name = safe_folder_name(label)
        owner = self._owners.get(name.casefold())
        if owner is not None and owner != label:
            name = f"{name}-{_short_hash(label)}"
        self._folders[label] = name
        self._owners[name.casefold()] = label
        return name

    def as_dict(self) -> dict[str, str]:
        return dict(self._folders)


def url_file_stem(url: str) -> str:
    """The file name (without extension) for `url`: 20 hex digits of its sha256. Stable, never a path."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:20]


# --- reading and writing --------------------------------------------------------------------


@dataclass
class ManifestState:
    """What an existing manifest says: the last record per URL, and the lines that could not be read."""

    latest: dict[str, ManifestRecord] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    lines: int = 0

    def folders(self) -> dict[str, str]:
        """Label -> folder as used by earlier runs."""
        return {record.label: record.folder for record in self.latest.values()}


def read_manifest(path: Path) -> ManifestState:
    """Read `path` if it exists; bad lines become WARNING problems (``bad_manifest_line``)."""
    state = ManifestState()
    path = Path(path)
    if not path.exists():
        return state
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            state.lines = number
            if not line.strip():
                continue
            try:
                record = ManifestRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, ValueError, TypeError) as exc:
                state.problems.append(
                    Problem(
                        "bad_manifest_line",
                        f"line ignored ({exc}); its URL, if any, counts as not fetched",
                        source=f"{path} line {number}",
                        severity=Severity.WARNING,
                    )
                )
                continue
            state.latest[record.url] = record
    return state


class ManifestWriter:
    """Appends records to the manifest, one flushed line each; a context manager.

    The file is locked for the writer's lifetime (POSIX ``flock``); a second writer on the same
    folder raises CollectError at once instead of interleaving lines. A torn last line left by an
    earlier crash is ended with a newline first, so the next record starts on its own line.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = self.path.open("a+", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._handle.close()
                raise CollectError(
                    f"{self.path}: another collection is writing to this folder (the manifest is locked)"
                ) from None
        self._handle.seek(0, os.SEEK_END)
        if self._handle.tell() > 0:
            with self.path.open("rb") as reader:
                reader.seek(-1, os.SEEK_END)
                if reader.read(1) != b"\n":
                    self._handle.write("\n")
        self.written = 0

    def write(self, record: ManifestRecord) -> None:
        self._handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        self._handle.flush()
        self.written += 1

    def close(self) -> None:
        if self._handle.closed:
            return
        self._handle.flush()
        with contextlib.suppress(OSError):
            os.fsync(self._handle.fileno())
        self._handle.close()  # closing releases the lock

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the summary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectSummary:
    """The state of a collection after a run, over the URLs of this run's input.

    counts: outcome (or "pending") -> URLs, using each URL's latest record, earlier runs included.
    this_run: outcome -> URLs fetched in this run (no network = not counted).
    labels: label -> {outcome or "pending": URLs}; folders: label -> folder name.
    total: distinct URLs in the input; fetched: attempted in this run; skipped: settled by an
    earlier run (collected with the file still there, or failed and not retried).
    problems: input problems (missing URL/label, repeated URLs, conflicting labels, bad manifest
    lines, source failures), nothing about individual downloads (those are in the manifest).
    interrupted: the run was stopped (Ctrl-C); seconds: wall time of this run.
    """

    out_dir: str
    manifest: str
    total: int
    fetched: int
    skipped: int
    counts: dict[str, int]
    this_run: dict[str, int]
    labels: dict[str, dict[str, int]]
    folders: dict[str, str]
    problems: tuple[Problem, ...] = ()
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def collected(self) -> int:
        return sum(self.counts.get(str(outcome), 0) for outcome in SUCCESS)

    @property
    def failed(self) -> int:
        return self.total - self.collected - self.counts.get(PENDING, 0)

    def exit_code(self, strict: bool = False) -> int:
        """130 when interrupted; 1 when URLs were given but none was collected, or with `strict`
        when any URL failed or is still pending; else 0."""
        if self.interrupted:
            return 130
        if self.total and not self.collected:
            return 1
        if strict and self.collected < self.total:
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "manifest": self.manifest,
            "total": self.total,
            "collected": self.collected,
            "failed": self.failed,
            "fetched": self.fetched,
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "counts": dict(self.counts),
            "this_run": dict(self.this_run),
            "labels": {label: dict(counts) for label, counts in self.labels.items()},
            "folders": dict(self.folders),
            "problems": [problem.to_dict() for problem in self.problems],
        }

    def print_summary(self, console: Any, max_problems: int = 20) -> None:
        """Outcome counts, a per-label table and the input problems, on a rich Console."""
        from rich.table import Table

        outcomes = Table(title=f"Collection: {console_text(self.out_dir)}", title_justify="left")
        outcomes.add_column("outcome")
        outcomes.add_column("URLs", justify="right")
        outcomes.add_column("this run", justify="right")
        for name, count in sorted(self.counts.items(), key=lambda item: (-item[1], item[0])):
            style = "green" if name in SUCCESS else ("yellow" if name == PENDING else "red")
            outcomes.add_row(f"[{style}]{name}[/]", str(count), str(self.this_run.get(name, 0)))
        console.print(outcomes)
        per_label = Table(title="Per label", title_justify="left")
        for column in ("label", "folder", "ok", "duplicate", "failed", "pending"):
            per_label.add_column(column, justify="left" if column in ("label", "folder") else "right")
        for label, counts in sorted(self.labels.items()):
            failed = sum(n for name, n in counts.items() if name not in SUCCESS and name != PENDING)
            per_label.add_row(
                console_text(label),
                console_text(self.folders.get(label, "")),
                str(counts.get(Outcome.OK, 0)),
                str(counts.get(Outcome.DUPLICATE, 0)),
                str(failed),
                str(counts.get(PENDING, 0)),
            )
        console.print(per_label)
        for problem in self.problems[:max_problems]:
            console.print(
                f"[yellow]{problem.severity}[/] {console_text(problem.kind)}: {console_text(problem)}",
                highlight=False,
            )
        if len(self.problems) > max_problems:
            console.print(f"... and {len(self.problems) - max_problems} more input problems (summary.json)")
        state = "[red]interrupted[/] " if self.interrupted else ""
        console.print(
            f"{state}{self.collected} of {self.total} URLs collected, {self.failed} failed, "
            f"{self.counts.get(PENDING, 0)} pending; fetched {self.fetched} this run, "
            f"skipped {self.skipped} settled earlier; {self.seconds:.1f} s",
            highlight=False,
        )
        console.print(f"manifest: {console_text(self.manifest)}", highlight=False)


def count_outcomes(
    urls_labels: Iterable[tuple[str, str]], latest: Mapping[str, ManifestRecord]
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(outcome -> count, label -> outcome -> count) over (url, label) pairs; absent URLs are pending."""
    totals: Counter[str] = Counter()
    per_label: dict[str, Counter[str]] = {}
    for url, label in urls_labels:
        record = latest.get(url)
        state = str(record.outcome) if record is not None and record.label == label else PENDING
        totals[state] += 1
        per_label.setdefault(label, Counter())[state] += 1
    return dict(totals), {label: dict(counts) for label, counts in per_label.items()}
