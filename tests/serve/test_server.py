"""Tests for carid.serve.server: the header and body deadlines of the connection (slow clients), the
500 that closes its connection cleanly, uvicorn's options, the allowed hosts `run_server` decides,
and `carid serve --help`. Each timing test runs a real uvicorn server (tests/serve/live.py) with
the stub predictor and timeouts of about a second.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from carid.cli import app as cli_app
from carid.serve import api as serve_api
from carid.serve import server as serve_server
from carid.serve.api import build_app
from carid.serve.server import (
    ENV_MODEL,
    GuardedH11Protocol,
    app_from_environment,
    check_port,
    server_settings,
    uvicorn_options,
)
from carid.serve.settings import ServeError, ServeSettings
from tests.hostile.encoders import valid_jpeg
from tests.runtime.test_predictor import stub_predictor
from tests.serve.live import live_server, raw_connection, read_until_closed

HEADER_TIMEOUT = 1.0
MARGIN_S = 1.5  # scheduling slack on a loaded 2-core machine


def quick_settings(**changes: Any) -> ServeSettings:
    values: dict[str, Any] = {"header_timeout": HEADER_TIMEOUT, "body_timeout": 1.0, "keep_alive_timeout": 30}
    return ServeSettings(**{**values, **changes})


@pytest.fixture
def url() -> Any:
    predictor, _ = stub_predictor()
    settings = quick_settings()
    with live_server(build_app(predictor, settings), settings) as base:
        yield base


def closed_within(connection: socket.socket, limit_s: float) -> tuple[bytes, float]:
    try:
        return read_until_closed(connection, limit_s)
    except ConnectionResetError:
        return b"", 0.0


def read_response(connection: socket.socket) -> bytes:
    """One whole response (headers, then Content-Length bytes of body) from a raw connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


# --- slow clients --------------------------------------------------------------------------------------


def test_half_a_header_is_cut_off_at_the_header_timeout(url: str) -> None:
    """Slow loris: the headers never end; the server answers 408 and closes within the timeout."""
    with raw_connection(url) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        received, seconds = closed_within(connection, HEADER_TIMEOUT + MARGIN_S)
    assert seconds < HEADER_TIMEOUT + MARGIN_S
    assert received.startswith(b"HTTP/1.1 408 ")
    body = json.loads(received.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "header_timeout"


def test_a_silent_connection_is_closed(url: str) -> None:
    with raw_connection(url) as connection:
        received, seconds = closed_within(connection, HEADER_TIMEOUT + MARGIN_S)
    assert received == b"" and seconds < HEADER_TIMEOUT + MARGIN_S


def test_a_dripping_header_cannot_stretch_the_deadline(url: str) -> None:
    """One byte every 0.2 s keeps an idle timer alive forever; the deadline still ends it."""
    started = time.monotonic()
    with raw_connection(url) as connection:
        try:
            for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
                connection.sendall(bytes([byte]))
                time.sleep(0.2)
                assert time.monotonic() - started < HEADER_TIMEOUT + MARGIN_S, "still open"
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed_within(connection, MARGIN_S)
    assert time.monotonic() - started < HEADER_TIMEOUT + MARGIN_S


def test_the_next_request_on_a_kept_alive_connection_has_a_header_deadline_too(url: str) -> None:
    with raw_connection(url) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(connection).startswith(b"HTTP/1.1 200 ")
        time.sleep(HEADER_TIMEOUT * 1.5)  # idle between requests: the keep-alive timer (30 s) applies
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: unfinished
        received, seconds = closed_within(connection, HEADER_TIMEOUT + MARGIN_S)
    assert received.startswith(b"HTTP/1.1 408 ") and seconds < HEADER_TIMEOUT + MARGIN_S


def test_a_body_that_stops_coming_gets_408(url: str) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="car.jpg"\r\n\r\n\xff\xd8\xff'
    )
    with raw_connection(url) as connection:
        connection.sendall(head)
        received, seconds = closed_within(connection, 1.0 + MARGIN_S)
    assert seconds < 1.0 + MARGIN_S
    status, _, rest = received.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408 "), received
    assert b"connection: close" in rest.lower()
    error = json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "body_timeout" and "1 s" in error["message"]


def test_a_body_the_app_never_reads_does_not_hold_the_connection(url: str) -> None:
    """GET /health answers at once without reading its (announced) body; the connection still closes."""
    with raw_connection(url) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
        received, seconds = closed_within(connection, 1.0 + serve_server.BODY_GRACE_S + MARGIN_S)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert seconds < 1.0 + serve_server.BODY_GRACE_S + MARGIN_S


def test_a_500_closes_its_connection_and_the_client_carries_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The 500 says `Connection: close`, so a keep-alive client sends its next request on a new one."""
    predictor, _ = stub_predictor()
    calls = {"n": 0}
    real_check = serve_api.check_upload

    def fails_once(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("internal state")
        return real_check(*args)

    monkeypatch.setattr(serve_api, "check_upload", fails_once)
    photo = valid_jpeg((64, 48))
    settings = quick_settings()
    with (
        caplog.at_level(logging.CRITICAL, logger="uvicorn.error"),
        live_server(build_app(predictor, settings), settings) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        failed = client.post("/predict", files={"file": ("a.jpg", photo)})
        assert failed.status_code == 500 and failed.headers["connection"] == "close"
        assert failed.json()["error"]["code"] == "internal_error"
        for _ in range(3):
            assert client.post("/predict", files={"file": ("a.jpg", photo)}).status_code == 200


# --- options, hosts, the command -----------------------------------------------------------------------


def test_uvicorn_options_carry_the_timeouts_and_pickle_into_workers() -> None:
    settings = ServeSettings(header_timeout=3, body_timeout=7, keep_alive_timeout=2, port=8123)
    options = uvicorn_options(settings)
    assert options["port"] == 8123 and options["timeout_keep_alive"] == 2
    protocol = pickle.loads(pickle.dumps(options["http"]))  # workers get the config through spawn
    assert protocol.func is GuardedH11Protocol
    assert protocol.keywords == {"header_timeout": 3, "body_timeout": 7}


@pytest.mark.parametrize(
    ("host", "given", "expected"),
    [
        ("127.0.0.1", None, ("localhost", "127.0.0.1", "::1")),
        ("::1", None, ("localhost", "127.0.0.1", "::1")),
        ("localhost", None, ("localhost", "127.0.0.1", "::1")),
        ("0.0.0.0", None, ("*",)),
        ("192.168.1.5", None, ("*",)),
        ("0.0.0.0", ("cars.example.org",), ("cars.example.org",)),
        ("127.0.0.1", ("*",), ("*",)),
    ],
)
def test_run_server_decides_the_allowed_hosts(host: str, given: Any, expected: tuple[str, ...]) -> None:
    assert server_settings(ServeSettings(host=host, allowed_hosts=given)).allowed_hosts == expected


def test_run_server_refuses_an_unusable_key_before_loading_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARID_TEST_KEY", raising=False)
    monkeypatch.setattr(serve_server, "create_app", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ServeError, match="CARID_TEST_KEY"):
        serve_server.run_server(Path("m"), ServeSettings(api_key_env="CARID_TEST_KEY"), say=lambda _: None)


def test_serve_help_lists_the_protection_options() -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for option in (
        "--header-timeout",
        "--body-timeout",
        "--keep-alive-timeout",
        "--concurrency-limit",
        "--api-key-env",
        "--allowed-hosts",
    ):
        assert option in result.output, option
    assert "X-API-Key" in result.output and "docs/serve.md" in result.output


def test_serve_command_passes_the_options_on(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServeSettings] = []
    monkeypatch.setattr(serve_server, "run_server", lambda model, settings, say: seen.append(settings))
    arguments = ["serve", "m", "--header-timeout", "3", "--body-timeout", "20", "--concurrency-limit", "7"]
    arguments += ["--api-key-env", "MY_KEY", "--allowed-hosts", "cars.example.org, *.example.net"]
    result = CliRunner().invoke(cli_app, arguments)
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert (settings.header_timeout, settings.body_timeout, settings.concurrency_limit) == (3, 20, 7)
    assert settings.api_key_env == "MY_KEY"
    assert settings.allowed_hosts == ("cars.example.org", "*.example.net")


def test_app_from_environment_needs_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MODEL, raising=False)
    with pytest.raises(ServeError, match=ENV_MODEL):
        app_from_environment()


def test_a_port_in_use_is_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"127.0.0.1:{port}.*choose another --port"):
            check_port("127.0.0.1", port)
