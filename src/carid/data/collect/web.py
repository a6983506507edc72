"""Pure helpers of the collector about URLs, HTTP headers and response bodies (no network, no disk).

Which URLs are fetched (`url_problem`), what a body is (`sniff_image_format`, `describe_bytes`,
`classify_image_error`), how long a server asks to wait (`parse_retry_after`), and the order jobs
are taken in (`interleave_by_host`).
"""

from __future__ import annotations

import email.utils
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import httpx

from carid.data.collect.manifest import Outcome
from carid.images import ImageError

SNIFF_BYTES = 12  # enough for every signature `sniff_image_format` knows (WEBP needs 12)

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


def classify_image_error(error: ImageError, signature: str) -> tuple[Outcome, str]:
    """The outcome and message for bytes with an image `signature` that `probe_image` refused."""
    if error.kind == "too_many_pixels":
        return Outcome.TOO_LARGE, error.reason
    if error.kind == "not_an_image" and signature not in _PILLOW_SIGNATURES:
        return Outcome.UNSUPPORTED_FORMAT, f"{signature} image, which this Pillow cannot decode"
    return Outcome.BROKEN_IMAGE, f"{signature} signature but {error.reason}"
