"""Running the app: uvicorn with the connection-level guards `carid serve` needs.

    run_server(model_path, settings)       check the port, load the model, serve until Ctrl+C
    uvicorn_options(settings) -> dict      the one place that turns ServeSettings into uvicorn's
                                           options (tests and the load benchmark use it too)
    app_from_environment() -> FastAPI      the app of each worker process (uvicorn --factory)
    check_port(host, port)                 ServeError when the address cannot be listened on
    GuardedH11Protocol                     uvicorn's h11 protocol plus a header timeout

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but waits forever for the rest
of a request's headers: 60 clients sending half a header each hold 60 connections open for good
(slow loris). `GuardedH11Protocol` starts a timer when a connection opens and whenever a new
request's first byte arrives, and closes the connection (after a JSON 408 when part of a request
had arrived) if the headers are not complete in `header_timeout` seconds. It also closes a
connection whose body is still arriving `body_timeout` + 2 s after its headers: the app's own
body timeout (`carid.serve.security.BodyTimeout`) answers 408 first whenever the app reads the
body, this catches the bodies the app never reads. The protocol is handed to uvicorn as a
`functools.partial` of a module-level class, so it pickles into worker processes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import h11
from fastapi import FastAPI
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from carid.serve.api import create_app
from carid.serve.settings import ServeError, ServeSettings, allowed_hosts_for, api_key_for

log = logging.getLogger("carid.serve")

ENV_MODEL = "CARID_SERVE_MODEL"  # how `run_server` hands the model path to uvicorn worker processes
ENV_SETTINGS = "CARID_SERVE_SETTINGS"  # ServeSettings as JSON, likewise
BODY_GRACE_S = 2.0  # the app answers a late body with 408 first; the connection closes this much later
_TIMEOUT_BODY = json.dumps(
    {"error": {"code": "header_timeout", "message": "the request headers did not arrive in time"}}
).encode("ascii")
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode("ascii") + b"\r\n\r\n" + _TIMEOUT_BODY
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's headers and one for its body.

    header_timeout: seconds from a connection's start, or from a new request's first byte, to the
        end of that request's headers; body_timeout: seconds from the end of the headers to the
        end of the body, after which (plus BODY_GRACE_S) the connection is closed.
    """

    def __init__(
        self,
        config: Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float = ServeSettings.header_timeout,
        body_timeout: float = ServeSettings.body_timeout,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "header" or "body" while a deadline runs
        self._received = False  # part of the current request has arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start("header", self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._phase is None and self.conn.their_state is h11.IDLE:
            self._start("header", self.header_timeout)  # a new request on a kept-alive connection
        self._received = self._received or bool(data)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Move the deadline along with the request: headers (IDLE), body (SEND_BODY), then none."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._start("body", self.body_timeout + BODY_GRACE_S)
            self._received = False
        elif state is not h11.IDLE:  # DONE, MUST_CLOSE, CLOSED, ERROR, ...: nothing more to wait for
            self._stop()
            self._received = False

    def _start(self, phase: str, seconds: float) -> None:
        self._stop()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self, phase: str, seconds: float) -> None:
        self._deadline, self._phase = None, None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("closing the connection of %s: the request %s took longer than %g s", client, phase, seconds)
        if phase == "header" and self._received and self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """uvicorn's options under `settings`: host, port, the keep-alive timeout and the guarded h11
    protocol (the one place that turns ServeSettings into uvicorn's; tests and benchmarks use it)."""
    protocol = functools.partial(
        GuardedH11Protocol, header_timeout=settings.header_timeout, body_timeout=settings.body_timeout
    )
    return {
        "host": settings.host,
        "port": settings.port,
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "timeout_graceful_shutdown": 5,
    }


def app_from_environment() -> FastAPI:
    """The app for uvicorn worker processes (`--factory`): model and settings from CARID_SERVE_*."""
    model = os.environ.get(ENV_MODEL)
    if not model:
        raise ServeError(f"{ENV_MODEL} is not set: it must name the model to serve")
    try:
        settings = ServeSettings.from_dict(json.loads(os.environ.get(ENV_SETTINGS) or "{}"))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ServeError(f"{ENV_SETTINGS}: not a JSON object of serve settings ({exc})") from None
    return create_app(model, settings)


def check_port(host: str, port: int) -> None:
    """Raise ServeError when `host:port` cannot be listened on (in use, no such address)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ServeError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from None


def server_settings(settings: ServeSettings) -> ServeSettings:
    """`settings` with the allowed hosts decided for the address it listens on (`allowed_hosts_for`;
    ("*",) for any)."""
    allowed = allowed_hosts_for(settings)
    return replace(settings, allowed_hosts=allowed if allowed is not None else ("*",))


def run_server(
    model_path: Path | str, settings: ServeSettings | None = None, say: Callable[[str], None] = print
) -> None:
    """Serve until interrupted. With workers > 1 each uvicorn process loads its own copy of the model
    (after this process has loaded it once, so that a broken model fails here with one message)."""
    import uvicorn

    settings = server_settings(settings or ServeSettings())
    api_key_for(settings)  # an unusable key setting fails before the model loads
    check_port(settings.host, settings.port)
    app = create_app(model_path, settings)
    url = f"http://{settings.host}:{settings.port}"
    say(f"serving {model_path} at {url}/ (API docs at {url}/docs); Ctrl+C stops")
    if settings.allowed_hosts == ("*",):
        say("every Host name is answered; behind a public name, set --allowed-hosts (docs/serve.md)")
    options = uvicorn_options(settings)
    if settings.workers == 1:
        uvicorn.run(app, **options)
        return
    del app
    os.environ[ENV_MODEL] = str(Path(model_path).resolve())
    os.environ[ENV_SETTINGS] = json.dumps(settings.to_dict())
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=settings.workers, **options)
