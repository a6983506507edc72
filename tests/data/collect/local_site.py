"""A local HTTP site on loopback for the collector's tests, serving every kind of good and bad answer."""

from __future__ import annotations

import io
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (80, 60), seed: int = 0) -> bytes:
    """A random-texture image (distinct bytes per seed) encoded in `fmt`."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


Route = Callable[[BaseHTTPRequestHandler, int], None]


@dataclass
class Site:
    """Routes (exact path or prefix ending in '/') -> handler(request, hit number); counts hits."""

    base: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    user_agents: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path

    def route_for(self, path: str) -> Route | None:
        if path in self.routes:
            return self.routes[path]
        for prefix, route in self.routes.items():
            if prefix.endswith("/") and path.startswith(prefix):
                return route
        return None


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        site: Site = self.server.site  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        with site.lock:
            site.hits[path] += 1
            hit = site.hits[path]
            site.user_agents.append(self.headers.get("User-Agent", ""))
        route = site.route_for(path)
        try:
            if route is None:
                send(self, b"not found", "text/plain", status=404)
            else:
                route(self, hit)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


def send(
    handler: BaseHTTPRequestHandler,
    body: bytes,
    content_type: str = "image/jpeg",
    status: int = 200,
    headers: dict[str, str] | None = None,
    length: bool = True,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    if length:
        handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def redirect(target: str, status: int = 302) -> Route:
    return lambda handler, hit: send(handler, b"", "text/plain", status=status, headers={"Location": target})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 refuses connections under a burst


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
