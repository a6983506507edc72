"""Download candidate images into class folders, with a manifest that makes every run resumable.

Engine: asyncio with one shared ``httpx.AsyncClient``, rather than sync clients in a thread pool,
for three reasons. Per-host limits are semaphores that cost nothing while a task waits (a thread
blocked on a busy host would sit on one of the global slots). A whole-response deadline is one
``asyncio.timeout`` around headers and body (httpx's own read timeout applies to each read, so a
server dripping a byte every second would hold a sync worker for ever). And Ctrl-C cancels every
task at its current ``await``, so each one unwinds through its ``finally`` blocks. Decoding and
file writes run in worker threads (``asyncio.to_thread``) so the event loop keeps serving; at
most one decode per CPU core runs at a time, which bounds the memory a burst of large photos takes.

What happens to one URL (each way it can end is an `Outcome` in the manifest):

1. Only http and https URLs with a host are fetched; anything else (file:, data:, ftp:, junk) is
   ``bad_url`` without touching the network.
2. GET with redirects followed by hand, at most ``max_redirects`` hops; every hop is checked like
   the URL itself (a redirect to file:// is refused), a hop back to a visited URL is a
   ``redirect_loop``, and the hops are reported in the record.
3. Connection errors, timeouts, 408, 429 and 5xx are retried up to ``retries`` times with
   exponential backoff and jitter; a Retry-After header (seconds or HTTP date) is honoured, and
   pauses the whole host, unless it asks for more than ``max_retry_after``. Other 4xx are final.
4. The body: a Content-Length above ``max_bytes`` is refused before reading, a stream passing
   ``max_bytes`` is cut, and the first bytes must carry an image signature (JPEG, PNG, GIF, WEBP,
   BMP, TIFF, ...), so an HTML page served as image/jpeg is stopped after its first chunk. The
   Content-Type header is recorded but not trusted either way.
5. The bytes are decoded fully with `carid.images.probe_image` (truncated or corrupt pixel
   data is ``broken_image``), the format must be accepted and the shorter side at least
   ``min_side``.
6. Same bytes (sha256) as an image already stored: ``duplicate``, stored once, with the first
   URL named. Otherwise the file is written to a hidden temporary name, fsynced, and renamed to
   ``<out>/<folder>/<sha256(url)[:20]>.<extension of the real format>``.

Resuming: the manifest (`manifest.py`) is read first; URLs collected earlier whose file is still
there are skipped, failed ones too unless ``retry_failed``. A label changed in the input since
the earlier run moves the file to the new label's folder without downloading it again.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from carid import __version__
from carid.config import STRICT
from carid.data.collect.manifest import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    CollectError,
    CollectSummary,
    FolderNames,
    ManifestRecord,
    ManifestState,
    ManifestWriter,
    Outcome,
    count_outcomes,
    read_manifest,
    url_file_stem,
)
from carid.data.collect.sources import Candidate, SourceError, detect_source, get_source, search_all
from carid.data.samples import Problem, Severity
from carid.files import write_atomic, write_json
from carid.images import ImageError, probe_image

DEFAULT_USER_AGENT = f"carid/{__version__} (image collector for a car-recognition dataset; python-httpx)"
ACCEPT = "image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PART_SUFFIX = ".part"  # temporary downloads end so; `_remove_partial_files` deletes leftovers
SNIFF_BYTES = 12  # enough for every signature below (WEBP needs 12)

# Pillow format -> file extension of the stored file.
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "ICO": ".ico",
}
# Signatures Pillow decodes: failing to decode one of these means a broken file, not a foreign format.
_PILLOW_SIGNATURES = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO"})


@dataclass(frozen=True)
class CollectConfig:
    """How `collect_images` downloads. Times in seconds, sizes in bytes or pixels.

    workers: requests in flight at once, over all hosts; per_host: at once to one host name.
    connect_timeout: to open a connection; read_timeout: the longest silence between two chunks;
        total_timeout: the deadline for one response, headers and whole body (a slow-drip server
        cannot hold a worker longer than this).
    retries: extra attempts after a connection error, timeout, 408, 429 or 5xx; the wait before
        retry n is backoff_base * 2**(n-1), capped at backoff_max, times a random 0.5-1.0 (jitter),
        or the server's Retry-After when it gives one (at most max_retry_after, else no retry).
    max_redirects: hops followed per attempt.
    max_bytes: largest body accepted (by Content-Length and while streaming, after decompression).
    min_side: smallest accepted shorter image side, pixels (after EXIF orientation).
    formats: accepted Pillow formats; the stored file gets the real format's extension.
    user_agent: sent with every request; fsync: flush each image to disk before renaming it.
    """

    __pydantic_config__ = STRICT

    workers: int = 8
    per_host: int = 2
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0
    max_redirects: int = 5
    max_bytes: int = 20_000_000
    min_side: int = 32
    formats: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    user_agent: str = DEFAULT_USER_AGENT
    fsync: bool = True

    def __post_init__(self) -> None:
        positive = ("workers", "per_host", "connect_timeout", "read_timeout", "total_timeout", "max_bytes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"collect.{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "retries",
            "backoff_base",
            "backoff_max",
            "max_retry_after",
            "max_redirects",
            "min_side",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"collect.{name} must be >= 0, got {getattr(self, name)}")
        if not self.formats:
            raise ValueError("collect.formats must name at least one image format, e.g. JPEG")
        if not self.user_agent.strip():
            raise ValueError("collect.user_agent must not be empty")


# --- pure helpers -----------------------------------------------------------------------------


def url_problem(url: str) -> str | None:
    """Why `url` will not be fetched, or None when it is an http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        return f"not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        scheme = f"scheme {parsed.scheme!r}" if parsed.scheme else "no scheme"
        return f"{scheme}: only http and https URLs are fetched"
    if not parsed.host:
        return "no host in the URL"
    return None


def sniff_image_format(data: bytes) -> str | None:
    """The image format the first bytes announce (Pillow's name, or "HEIF"/"AVIF"), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIF"
    return None


def describe_bytes(data: bytes) -> str:
    """A few words on what a non-image body looks like, for messages."""
    if not data:
        return "an empty body"
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "an HTML page"
    if head.startswith((b"<?xml", b"<svg")):
        return "XML or SVG text"
    if head.startswith((b"{", b"[")):
        return "JSON-like text"
    return f"no image signature (first bytes {data[:8].hex(' ')})"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _HasUrl(Protocol):
    @property
    def url(self) -> str: ...


_JobLike = TypeVar("_JobLike", bound=_HasUrl)


def _host_of(url: str) -> str:
    try:
        return httpx.URL(url).host
    except (httpx.InvalidURL, TypeError, ValueError):
        return ""


def interleave_by_host(items: Sequence[_JobLike]) -> list[_JobLike]:
    """`items` (anything with a `.url`) reordered round-robin over their hosts, in first-seen order.

    [a1, a2, a3, b1, c1, c2] -> [a1, b1, c1, a2, c2, a3]; the order within a host is kept.
    """
    by_host: dict[str, list[_JobLike]] = {}
    for item in items:
        by_host.setdefault(_host_of(item.url), []).append(item)
    turns = deque((queue, 0) for queue in by_host.values())  # (host's items, next index)
    result: list[_JobLike] = []
    while turns:
        queue, index = turns.popleft()
        result.append(queue[index])
        if index + 1 < len(queue):
            turns.append((queue, index + 1))
    return result


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- one request ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One distinct URL of the input, with its label, safe folder and where it came from."""

    url: str
    label: str
    folder: str
    origin: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Redirect:
    status: int
    location: str


@dataclass(frozen=True)
class _Fetched:
    data: bytes
    status: int
    content_type: str | None
    final_url: str | None = None
    redirects: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Failed:
    outcome: Outcome
    message: str
    retryable: bool = False
    status: int | None = None
    retry_after: float | None = None
    content_type: str | None = None
    final_url: str | None = None
    redirects: tuple[str, ...] = ()


class _Engine:
    """Runs the jobs: scheduling, limits, retries, storage. One instance per `collect_images` call."""

    def __init__(
        self,
        config: CollectConfig,
        out_dir: Path,
        writer: ManifestWriter,
        latest: dict[str, ManifestRecord],
        sha_index: dict[str, tuple[str, str, str]],
        on_record: Callable[[ManifestRecord], None] | None,
        bar: _Bar,
    ) -> None:
        self.config = config
        self.out_dir = out_dir
        self.out_root = out_dir.resolve()
        self.writer = writer
        self.latest = latest
        self.sha_index = sha_index  # sha256 -> (relative path, url, label) of the stored copy
        self.on_record = on_record
        self.bar = bar
        self.this_run: Counter[str] = Counter()
        self._random = random.Random()
        self._global_slots: asyncio.Semaphore | None = None
        self._decode_slots: asyncio.Semaphore | None = None  # full decodes at once (memory, CPU)
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._host_resume_at: dict[str, float] = {}
        self._client: httpx.AsyncClient | None = None

    # scheduling ---------------------------------------------------------------------------

    async def run(self, jobs: Sequence[_Job]) -> None:
        """Fetch every job, recording each outcome as it completes.

        Jobs are taken round-robin over hosts, and at most a window of tasks exists at a time
        (memory stays flat for long lists, and a list sorted by host does not leave every task
        in the window queueing for that one host's slots). On Ctrl-C
        (cancellation) or an exception from `on_record`, unfinished tasks are cancelled, the
        finished ones are still recorded, and the exception goes on up.
        """
        config = self.config
        self._global_slots = asyncio.Semaphore(config.workers)
        self._decode_slots = asyncio.Semaphore(max(1, os.cpu_count() or 1))
        timeout = httpx.Timeout(
            connect=config.connect_timeout,
            read=config.read_timeout,
            write=config.read_timeout,
            pool=config.total_timeout,
        )
        limits = httpx.Limits(max_connections=config.workers, max_keepalive_connections=config.workers)
        headers = {"User-Agent": config.user_agent, "Accept": ACCEPT}
        window = max(64, 8 * config.workers)
        pending: set[asyncio.Task[ManifestRecord]] = set()
        queue = iter(interleave_by_host(jobs))
        async with httpx.AsyncClient(
            headers=headers, timeout=timeout, limits=limits, follow_redirects=False
        ) as client:
            self._client = client
            try:
                exhausted = False
                while True:
                    while not exhausted and len(pending) < window:
                        job = next(queue, None)
                        if job is None:
                            exhausted = True
                        else:
                            pending.add(asyncio.create_task(self.fetch(job)))
                    if not pending:
                        return
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        pending.discard(task)
                        self.finish(task.result(), notify=True)
            except BaseException:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for task in pending:
                    if not task.cancelled() and task.exception() is None:
                        self.finish(task.result(), notify=False)
                raise

    def finish(self, record: ManifestRecord, notify: bool) -> None:
        """Append the record to the manifest (flushed), count it, then tell `on_record`."""
        self.writer.write(record)
        self.latest[record.url] = record
        self.this_run[str(record.outcome)] += 1
        self.bar.advance(record)
        if notify and self.on_record is not None:
            self.on_record(record)

    # one URL ------------------------------------------------------------------------------

    async def fetch(self, job: _Job) -> ManifestRecord:
        """The manifest record for `job`; never raises except on cancellation."""
        start = time.monotonic()
        try:
            return await self._fetch(job, start)
        except Exception as exc:  # a bug or an OS error must cost one URL, not the run
            return self._record(job, Outcome.ERROR, start, message=f"{type(exc).__name__}: {exc}")

    async def _fetch(self, job: _Job, start: float) -> ManifestRecord:
        problem = url_problem(job.url)
        if problem is not None:
            return self._record(job, Outcome.BAD_URL, start, message=problem)
        attempts = 0
        while True:
            attempts += 1
            result = await self._follow(job.url)
            if isinstance(result, _Fetched) or not result.retryable or attempts > self.config.retries:
                break
            delay = self._retry_delay(attempts, result.retry_after)
            if delay is None:
                result = replace(
                    result,
                    message=f"{result.message}; not retried: Retry-After {result.retry_after:g} s exceeds "
                    f"max_retry_after={self.config.max_retry_after:g} s",
                )
                break
            await asyncio.sleep(delay)
        if isinstance(result, _Failed):
            tries = f" (after {attempts} attempts)" if attempts > 1 else ""
            return self._record(
                job,
                result.outcome,
                start,
                message=result.message + tries,
                attempts=attempts,
                http_status=result.status,
                content_type=result.content_type,
                final_url=result.final_url,
                redirects=result.redirects,
            )
        return await self._store(job, result, attempts, start)

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `attempt`; None when Retry-After is beyond the cap."""
        if retry_after is not None:
            return retry_after if retry_after <= self.config.max_retry_after else None
        backoff = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return backoff * self._random.uniform(0.5, 1.0)

    async def _follow(self, url: str) -> _Fetched | _Failed:
        """One attempt: GET `url`, following redirects by hand."""
        hops: list[str] = []
        visited = {str(httpx.URL(url))}
        current = url
        while True:
            answer = await self._request(current)
            if not isinstance(answer, _Redirect):
                return replace(answer, final_url=current, redirects=tuple(hops))
            target = answer.location
            chain = " -> ".join([url, *hops, target])
            if target in visited:
                return _Failed(
                    Outcome.REDIRECT_LOOP,
                    f"redirect loop: {chain}",
                    status=answer.status,
                    final_url=current,
                    redirects=(*hops, target),
                )
            if len(hops) >= self.config.max_redirects:
                return _Failed(
                    Outcome.TOO_MANY_REDIRECTS,
                    f"more than max_redirects={self.config.max_redirects} redirects: {chain}",
                    status=answer.status,
                    final_url=current,
                    redirects=(*hops, target),
                )
            problem = url_problem(target)
            if problem is not None:
                return _Failed(
                    Outcome.BAD_URL,
                    f"redirected to {target}: {problem}",
                    status=answer.status,
                    final_url=current,
                    redirects=(*hops, target),
                )
            hops.append(target)
            visited.add(target)
            current = target

    def _host_slot(self, host: str) -> asyncio.Semaphore:
        if host not in self._host_slots:
            self._host_slots[host] = asyncio.Semaphore(self.config.per_host)
        return self._host_slots[host]

    async def _wait_for_host(self, host: str) -> None:
        """Sleep while the host asked (Retry-After) to be left alone."""
        loop = asyncio.get_running_loop()
        while (wait := self._host_resume_at.get(host, 0.0) - loop.time()) > 0:
            await asyncio.sleep(wait)

    async def _request(self, url: str) -> _Fetched | _Failed | _Redirect:
        """One GET within the limits and the total deadline; errors become `_Failed`."""
        config = self.config
        assert self._client is not None and self._global_slots is not None
        host = httpx.URL(url).host
        await self._wait_for_host(host)
        async with self._host_slot(host), self._global_slots:
            try:
                async with asyncio.timeout(config.total_timeout):
                    async with self._client.stream("GET", url) as response:
                        answer = await self._read(response)
            except TimeoutError:
                answer = _Failed(
                    Outcome.TIMEOUT,
                    f"no complete response within total_timeout={config.total_timeout:g} s",
                    retryable=True,
                )
            except httpx.ConnectTimeout:
                answer = _Failed(
                    Outcome.TIMEOUT,
                    f"no connection within connect_timeout={config.connect_timeout:g} s",
                    True,
                )
            except httpx.ReadTimeout:
                answer = _Failed(
                    Outcome.TIMEOUT, f"no data for read_timeout={config.read_timeout:g} s", retryable=True
                )
            except httpx.TimeoutException as exc:
                answer = _Failed(Outcome.TIMEOUT, f"{type(exc).__name__}: {exc}", retryable=True)
            except httpx.UnsupportedProtocol as exc:
                answer = _Failed(Outcome.BAD_URL, f"unsupported protocol ({exc})")
            except httpx.TransportError as exc:
                detail = str(exc) or "no detail"
                answer = _Failed(Outcome.CONNECTION_ERROR, f"{type(exc).__name__}: {detail}", retryable=True)
            except httpx.HTTPError as exc:  # e.g. a body that fails its Content-Encoding
                answer = _Failed(Outcome.HTTP_ERROR, f"bad response: {type(exc).__name__}: {exc}")
        if isinstance(answer, _Failed) and answer.retry_after:
            resume_at = asyncio.get_running_loop().time() + min(answer.retry_after, config.max_retry_after)
            self._host_resume_at[host] = max(self._host_resume_at.get(host, 0.0), resume_at)
        return answer

    async def _read(self, response: httpx.Response) -> _Fetched | _Failed | _Redirect:
        """Status handling, size caps and the early signature check while streaming the body."""
        config = self.config
        status = response.status_code
        content_type = response.headers.get("content-type")
        if status in REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                return _Failed(
                    Outcome.HTTP_ERROR, f"HTTP {status} redirect without a Location", status=status
                )
            try:
                return _Redirect(status, str(response.url.join(location)))
            except httpx.InvalidURL as exc:
                return _Failed(
                    Outcome.BAD_URL, f"redirect to an invalid URL {location!r} ({exc})", status=status
                )
        if not 200 <= status < 300:
            retryable = status in (408, 429) or status >= 500
            retry_after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
            return _Failed(
                Outcome.HTTP_ERROR,
                f"HTTP {status} {response.reason_phrase}".strip(),
                retryable=retryable,
                status=status,
                retry_after=retry_after,
                content_type=content_type,
            )
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > config.max_bytes:
            return _Failed(
                Outcome.TOO_LARGE,
                f"Content-Length {int(declared):,} bytes exceeds max_bytes={config.max_bytes:,}; "
                "not downloaded",
                status=status,
                content_type=content_type,
            )
        body = bytearray()
        sniffed = False
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > config.max_bytes:
                said = f"Content-Length said {declared}" if declared else "no Content-Length"
                return _Failed(
                    Outcome.TOO_LARGE,
                    f"stopped after {len(body):,} bytes, more than max_bytes={config.max_bytes:,} ({said})",
                    status=status,
                    content_type=content_type,
                )
            if not sniffed and len(body) >= SNIFF_BYTES:
                sniffed = True
                if sniff_image_format(bytes(body[:SNIFF_BYTES])) is None:
                    return _Failed(
                        Outcome.NOT_AN_IMAGE,
                        f"{describe_bytes(bytes(body))} served as {content_type or 'no Content-Type'}; "
                        "download stopped",
                        status=status,
                        content_type=content_type,
                    )
        return _Fetched(bytes(body), status, content_type)

    # storing ------------------------------------------------------------------------------

    async def _store(self, job: _Job, fetched: _Fetched, attempts: int, start: float) -> ManifestRecord:
        """Check the bytes (signature, full decode, format, size, duplicate) and write the file."""
        config = self.config
        data = fetched.data
        common: dict[str, Any] = {
            "attempts": attempts,
            "http_status": fetched.status,
            "content_type": fetched.content_type,
            "final_url": fetched.final_url,
            "redirects": fetched.redirects,
            "size_bytes": len(data),
        }
        signature = sniff_image_format(data)
        if signature is None:
            served = fetched.content_type or "no Content-Type"
            return self._record(
                job,
                Outcome.NOT_AN_IMAGE,
                start,
                message=f"{describe_bytes(data)} served as {served}",
                **common,
            )
        digest = hashlib.sha256(data).hexdigest()
        common["sha256"] = digest
        assert self._decode_slots is not None
        try:
            async with self._decode_slots:
                info = await asyncio.to_thread(probe_image, data, job.url)
        except ImageError as exc:
            outcome, message = _classify_image_error(exc, signature)
            return self._record(job, outcome, start, message=message, format=signature, **common)
        common.update(width=info.width, height=info.height, format=info.format)
        if info.format not in config.formats:
            accepted = ", ".join(config.formats)
            message = f"{info.format} image; accepted formats: {accepted}"
            return self._record(job, Outcome.UNSUPPORTED_FORMAT, start, message=message, **common)
        if min(info.width, info.height) < config.min_side:
            message = f"{info.width}x{info.height} px: shorter side below min_side={config.min_side}"
            return self._record(job, Outcome.TOO_SMALL, start, message=message, **common)
        via = f"via {len(fetched.redirects)} redirect(s)" if fetched.redirects else ""
        stored = self.sha_index.get(digest)
        if stored is not None:
            path, first_url, first_label = stored
            other_label = f" (filed under label {first_label!r})" if first_label != job.label else ""
            message = f"same bytes as {first_url}{other_label}; stored once at {path}"
            return self._record(
                job, Outcome.DUPLICATE, start, message=message, path=path, duplicate_of=first_url, **common
            )
        extension = FORMAT_EXTENSIONS.get(info.format, "." + info.format.lower())
        relative = f"{job.folder}/{url_file_stem(job.url)}{extension}"
        target = self.out_dir / job.folder / f"{url_file_stem(job.url)}{extension}"
        if not target.resolve().is_relative_to(
            self.out_root
        ):  # cannot happen with safe names; belt and braces
            raise CollectError(f"refusing to write {target}: outside {self.out_dir}")
        self.sha_index[digest] = (relative, job.url, job.label)  # claimed before the await: no race
        write = asyncio.ensure_future(
            asyncio.to_thread(write_atomic, target, data, config.fsync, PART_SUFFIX)
        )
        try:
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                # The write runs in a thread that cannot be stopped: let it finish and return its
                # record (the run's Ctrl-C handler keeps finished records), so that the files on
                # disk and the manifest always agree.
                await write
        except BaseException as exc:
            del self.sha_index[digest]
            if isinstance(exc, OSError):
                return self._record(
                    job, Outcome.ERROR, start, message=f"cannot write {relative}: {exc}", **common
                )
            raise
        return self._record(job, Outcome.OK, start, message=via, path=relative, **common)

    def _record(self, job: _Job, outcome: Outcome, start: float, **fields: Any) -> ManifestRecord:
        return ManifestRecord(
            url=job.url,
            label=job.label,
            folder=job.folder,
            outcome=outcome,
            origin=job.origin,
            extra=dict(job.extra),
            seconds=time.monotonic() - start,
            fetched_at=_now(),
            **fields,
        )


def _classify_image_error(error: ImageError, signature: str) -> tuple[Outcome, str]:
    if error.kind == "too_many_pixels":
        return Outcome.TOO_LARGE, error.reason
    if error.kind == "not_an_image" and signature not in _PILLOW_SIGNATURES:
        return Outcome.UNSUPPORTED_FORMAT, f"{signature} image, which this Pillow cannot decode"
    return Outcome.BROKEN_IMAGE, f"{signature} signature but {error.reason}"


# --- progress ---------------------------------------------------------------------------------


class _Bar:
    """A rich progress bar (URLs done, collected/failed counts, elapsed, ETA), or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.collected = 0
        self.failed = 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]collect"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[green]{task.fields[collected]} ok[/] [red]{task.fields[failed]} failed[/]"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("collect", total=self.total, collected=0, failed=0)
        return self

    def advance(self, record: ManifestRecord) -> None:
        if record.succeeded:
            self.collected += 1
        else:
            self.failed += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, collected=self.collected, failed=self.failed)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# --- planning and the public entry points -------------------------------------------------------


@dataclass
class _Plan:
    jobs: list[_Job]  # every distinct URL of the input, in input order
    todo: list[_Job]  # those to fetch in this run
    folders: dict[str, str]


def _jobs_from_candidates(
    candidates: Iterable[Candidate], folders: FolderNames, problems: list[Problem]
) -> list[_Job]:
    """Distinct, complete candidates as jobs; empty fields and repeated URLs become problems."""
    jobs: list[_Job] = []
    first: dict[str, _Job] = {}
    for candidate in candidates:
        url, label = candidate.url.strip(), candidate.label.strip()
        where = candidate.origin or "input"
        if not url:
            problems.append(Problem("missing_url", f"no URL (label {label!r}); skipped", source=where))
            continue
        if not label:
            problems.append(Problem("missing_label", f"no label for {url}; skipped", source=where))
            continue
        earlier = first.get(url)
        if earlier is not None:
            if earlier.label == label:
                problems.append(
                    Problem(
                        "repeated_url",
                        f"{url} is listed again (first at {earlier.origin}); fetched once",
                        source=where,
                        severity=Severity.INFO,
                    )
                )
            else:
                problems.append(
                    Problem(
                        "conflicting_label",
                        f"{url} is labelled {label!r} here but {earlier.label!r} at {earlier.origin}; "
                        f"kept {earlier.label!r}",
                        source=where,
                        severity=Severity.WARNING,
                    )
                )
            continue
        job = _Job(url, label, folders.folder(label), where, dict(candidate.meta))
        first[url] = job
        jobs.append(job)
    return jobs


def _relabel(
    previous: ManifestRecord, job: _Job, out_dir: Path, writer: ManifestWriter, problems: list[Problem]
) -> ManifestRecord | None:
    """Move an earlier run's file to the folder of the URL's new label (no download).

    Returns the new record (already written), or None when the file cannot be moved (a WARNING
    problem ``relabel_failed`` says why, and the URL is to be fetched again).
    """
    path = previous.path
    message = f"label changed from {previous.label!r} to {job.label!r}"
    if previous.outcome is Outcome.OK and path is not None:
        new_path = f"{job.folder}/{Path(path).name}"
        target = out_dir / new_path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out_dir / path, target)
        except OSError as exc:
            problems.append(
                Problem(
                    "relabel_failed",
                    f"{job.url}: cannot move {path} to {new_path} ({exc}); fetching it again",
                    source=job.origin,
                    severity=Severity.WARNING,
                )
            )
            return None
        message += f"; moved from {path}"
        path = new_path
    record = replace(
        previous, label=job.label, folder=job.folder, path=path, message=message, fetched_at=_now()
    )
    writer.write(record)
    problems.append(Problem("relabelled", f"{job.url}: {message}", source=job.origin, severity=Severity.INFO))
    return record


def _plan(
    candidates: Iterable[Candidate],
    state: ManifestState,
    out_dir: Path,
    writer: ManifestWriter,
    retry_failed: bool,
    problems: list[Problem],
) -> _Plan:
    folders = FolderNames(state.folders())
    jobs = _jobs_from_candidates(candidates, folders, problems)
    todo: list[_Job] = []
    for job in jobs:
        previous = state.latest.get(job.url)
        if previous is None:
            todo.append(job)
        elif previous.succeeded:
            if previous.path is None or not (out_dir / previous.path).is_file():
                todo.append(job)  # collected earlier, but the file is gone
            elif previous.label != job.label:
                moved = _relabel(previous, job, out_dir, writer, problems)
                if moved is None:
                    todo.append(job)
                else:
                    state.latest[job.url] = moved
        elif retry_failed or previous.label != job.label:
            todo.append(job)
    return _Plan(jobs, todo, {job.label: job.folder for job in jobs})


def _sha_index(state: ManifestState, out_dir: Path) -> dict[str, tuple[str, str, str]]:
    """sha256 -> (path, url, label) of every stored image the manifest knows and the disk still has."""
    index: dict[str, tuple[str, str, str]] = {}
    for record in state.latest.values():
        if (
            record.outcome is Outcome.OK
            and record.sha256
            and record.path
            and (out_dir / record.path).is_file()
        ):
            index.setdefault(record.sha256, (record.path, record.url, record.label))
    return index


def _remove_partial_files(out_dir: Path, problems: list[Problem]) -> None:
    """Delete ``.<name>.part`` files an earlier run left when it was killed mid-write."""
    leftovers = [path for path in out_dir.glob("*/.*.part") if path.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers:
        problems.append(
            Problem(
                "partial_files_removed",
                f"removed {len(leftovers)} unfinished download(s) left by an interrupted run",
                source=str(out_dir),
                severity=Severity.INFO,
            )
        )


def collect_images(
    candidates: Iterable[Candidate],
    out_dir: Path | str,
    config: CollectConfig | None = None,
    *,
    retry_failed: bool = False,
    max_new: int | None = None,
    progress: bool = True,
    on_record: Callable[[ManifestRecord], None] | None = None,
    problems: Iterable[Problem] = (),
) -> CollectSummary:
    """Download `candidates` into ``out_dir/<folder>/``, resuming from the manifest already there.

    retry_failed: fetch again the URLs an earlier run failed on (by default they keep their outcome).
    max_new: fetch at most this many URLs in this run (the rest stay pending for the next run).
    on_record: called with each record right after it is written to the manifest.
    problems: input problems found before (by the sources), carried into the summary.

    Ctrl-C (KeyboardInterrupt, also when raised by `on_record`) stops the run cleanly: unfinished
    downloads are cancelled, finished ones are recorded, and the summary is returned with
    ``interrupted=True``. Writes manifest.jsonl (appended) and summary.json (atomically).
    Raises CollectError when `out_dir` cannot be used.
    """
    started = time.monotonic()
    config = config or CollectConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CollectError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    all_problems = list(problems)
    manifest_path = out_dir / MANIFEST_NAME
    interrupted = False
    with ManifestWriter(manifest_path) as writer:
        state = read_manifest(manifest_path)
        all_problems.extend(state.problems)
        plan = _plan(candidates, state, out_dir, writer, retry_failed, all_problems)
        todo = plan.todo if max_new is None else plan.todo[: max(0, max_new)]
        _remove_partial_files(out_dir, all_problems)
        with _Bar(len(todo), progress) as bar:
            engine = _Engine(
                config, out_dir, writer, state.latest, _sha_index(state, out_dir), on_record, bar
            )
            try:
                asyncio.run(engine.run(todo))
            except KeyboardInterrupt:
                interrupted = True
    counts, labels = count_outcomes(((job.url, job.label) for job in plan.jobs), state.latest)
    fetched = sum(engine.this_run.values())
    summary = CollectSummary(
        out_dir=str(out_dir),
        manifest=str(manifest_path),
        total=len(plan.jobs),
        fetched=fetched,
        skipped=len(plan.jobs) - len(plan.todo),
        counts=counts,
        this_run=dict(engine.this_run),
        labels=labels,
        folders=plan.folders,
        problems=tuple(all_problems),
        interrupted=interrupted,
        seconds=time.monotonic() - started,
    )
    write_json(out_dir / SUMMARY_NAME, summary.to_dict(), fsync=True)
    return summary


def collect(
    queries: Sequence[str],
    out_dir: Path | str,
    *,
    source: str | None = None,
    per_query: int = 0,
    source_options: Mapping[str, Any] | None = None,
    config: CollectConfig | None = None,
    retry_failed: bool = False,
    max_new: int | None = None,
    progress: bool = True,
    on_record: Callable[[ManifestRecord], None] | None = None,
) -> CollectSummary:
    """Ask `source` for candidates for each query, then `collect_images` them into `out_dir`.

    source: a registered or plugin source name; None picks "csv" for .csv files and "list" for
        .txt files or folders (every query must pick the same one).
    per_query: the `limit` handed to `ImageSource.search` (0 = all; per label for csv and list).
    Raises SourceError (unknown source, unreadable input) or CollectError (unusable out_dir).
    """
    queries = [str(query) for query in queries]
    if not queries:
        raise SourceError("nothing to collect from: give a CSV file, a URL list or search queries")
    if source is None:
        detected = {detect_source(query) for query in queries}
        if len(detected) > 1:
            raise SourceError(
                f"the inputs need different sources ({', '.join(sorted(detected))}); run once per kind"
            )
        source = detected.pop()
    image_source = get_source(source, **dict(source_options or {}))
    candidates, problems = search_all(image_source, queries, per_query)
    return collect_images(
        candidates,
        out_dir,
        config,
        retry_failed=retry_failed,
        max_new=max_new,
        progress=progress,
        on_record=on_record,
        problems=problems,
    )
