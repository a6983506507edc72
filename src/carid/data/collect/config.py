"""`CollectConfig`: how the collector downloads (concurrency, timeouts, retries, size and format limits)."""

from __future__ import annotations

from dataclasses import dataclass

from carid import __version__
from carid.config import STRICT

DEFAULT_USER_AGENT = f"carid/{__version__} (image collector for a car-recognition dataset; python-httpx)"


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
