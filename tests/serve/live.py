"""A real uvicorn server for tests: `live_server(app, settings)` runs `app` in a thread on a free
127.0.0.1 port, with the options `carid serve` uses (`carid.serve.server.uvicorn_options`: the
guarded h11 protocol, its timeouts), and yields its base URL; the server stops on exit.

The listening socket is bound before the server starts, so there is no race for the port.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from carid.serve.server import uvicorn_options
from carid.serve.settings import ServeSettings


@contextmanager
def live_server(app: FastAPI, settings: ServeSettings | None = None) -> Iterator[str]:
    """`app` served on a free loopback port under `settings`' connection options; yields the URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    options = {**uvicorn_options(settings or ServeSettings()), "port": port, "log_level": "warning"}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()


def raw_connection(url: str, timeout: float = 10.0) -> socket.socket:
    """A plain TCP connection to the server at `url` (for clients that misbehave on purpose)."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_until_closed(connection: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took
    (raises socket.timeout when it is still open after `limit_s`)."""
    connection.settimeout(limit_s)
    started = time.monotonic()
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received, time.monotonic() - started
