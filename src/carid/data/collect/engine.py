"""The download engine: fetch, check and store each job's URL, recording every outcome in the manifest.

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
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from carid.data.collect.config import CollectConfig
from carid.data.collect.manifest import (
    CollectError,
    ManifestRecord,
    ManifestWriter,
    Outcome,
    timestamp_now,
    url_file_stem,
)
from carid.data.collect.plan import PART_SUFFIX, Job
from carid.data.collect.progress import ProgressBar
from carid.data.collect.web import (
    FORMAT_EXTENSIONS,
    SNIFF_BYTES,
    classify_image_error,
    describe_bytes,
    interleave_by_host,
    parse_retry_after,
    sniff_image_format,
    url_problem,
)
from carid.files import write_atomic
from carid.images import ImageError, probe_image

ACCEPT = "image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


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


class Engine:
    """Runs the jobs: scheduling, limits, retries, storage. One instance per `collect_images` call."""

    def __init__(
        self,
        config: CollectConfig,
        out_dir: Path,
        writer: ManifestWriter,
        latest: dict[str, ManifestRecord],
        sha_index: dict[str, tuple[str, str, str]],
        on_record: Callable[[ManifestRecord], None] | None,
        bar: ProgressBar,
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

    async def run(self, jobs: Sequence[Job]) -> None:
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

    async def fetch(self, job: Job) -> ManifestRecord:
        """The manifest record for `job`; never raises except on cancellation."""
        start = time.monotonic()
        try:
            return await self._fetch(job, start)
        except Exception as exc:  # a bug or an OS error must cost one URL, not the run
            return self._record(job, Outcome.ERROR, start, message=f"{type(exc).__name__}: {exc}")

    async def _fetch(self, job: Job, start: float) -> ManifestRecord:
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
            failed = partial(_Failed, status=answer.status, final_url=current, redirects=(*hops, target))
            if target in visited:
                return failed(Outcome.REDIRECT_LOOP, f"redirect loop: {chain}")
            if len(hops) >= self.config.max_redirects:
                limit = self.config.max_redirects
                return failed(
                    Outcome.TOO_MANY_REDIRECTS, f"more than max_redirects={limit} redirects: {chain}"
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

    async def _store(self, job: Job, fetched: _Fetched, attempts: int, start: float) -> ManifestRecord:
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
            outcome, message = classify_image_error(exc, signature)
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

    def _record(self, job: Job, outcome: Outcome, start: float, **fields: Any) -> ManifestRecord:
        return ManifestRecord(
            url=job.url,
            label=job.label,
            folder=job.folder,
            outcome=outcome,
            origin=job.origin,
            extra=dict(job.extra),
            seconds=time.monotonic() - start,
            fetched_at=timestamp_now(),
            **fields,
        )
