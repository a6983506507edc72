"""Tests for carid.serve.security (and the refusals of the app that go with it): allowed hosts, the
API key, the concurrency limit (61 slow uploads against a limit of 60 on a real server), the body
timeout, and a form with more than one file part.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from carid.serve.api import build_app
from carid.serve.security import host_allowed, host_name
from carid.serve.settings import ServeError, ServeSettings, allowed_hosts_for, api_key_for
from tests.hostile.encoders import valid_jpeg, valid_png
from tests.runtime.test_predictor import stub_predictor
from tests.serve.live import live_server, raw_connection
from tests.serve.test_api import assert_error

KEY = "k3y-for-the-tests-0123456789"


def client_for(**settings: Any) -> TestClient:
    predictor, _ = stub_predictor()
    return TestClient(build_app(predictor, ServeSettings(**settings)), raise_server_exceptions=False)


@pytest.fixture
def photo() -> bytes:
    return valid_jpeg((64, 48))


# --- allowed hosts -------------------------------------------------------------------------------------


def test_a_foreign_host_name_is_refused(photo: bytes) -> None:
    """DNS rebinding: a page on evil.example resolves its name to 127.0.0.1; the Host header gives it away."""
    client = client_for(allowed_hosts=("localhost", "127.0.0.1", "::1"))
    for host in ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io:8000"):
        response = client.post("/predict", files={"file": photo}, headers={"host": host})
        message = assert_error(response, 400, "invalid_host")
        assert host.split(":")[0] in message and "--allowed-hosts" in message
        assert response.headers["connection"] == "close"
        assert_error(client.get("/health", headers={"host": host}), 400, "invalid_host")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        assert client.post("/predict", files={"file": photo}, headers={"host": host}).status_code == 200, host


def test_host_patterns() -> None:
    allowed = ("cars.example.org", "*.example.net")
    assert host_allowed("cars.example.org", allowed) and host_allowed("example.net", allowed)
    assert host_allowed("a.b.example.net", allowed)
    assert not host_allowed("example.org", allowed) and not host_allowed("badexample.net", allowed)
    assert host_allowed("anything", ("*",))
    assert host_name("Example.ORG:8000") == "example.org" and host_name("[::1]:80") == "::1"
    assert host_name("::1") == "::1"


def test_without_allowed_hosts_an_app_answers_any_name(photo: bytes) -> None:
    """build_app checks only the names it is given; `run_server` decides the default (test_server.py)."""
    assert client_for().get("/health", headers={"host": "whatever.example"}).status_code == 200
    assert allowed_hosts_for(ServeSettings(host="127.0.0.1")) == ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts_for(ServeSettings(host="0.0.0.0")) is None


# --- the API key ---------------------------------------------------------------------------------------


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("CARID_API_KEY", KEY)
    return client_for()


def test_requests_without_the_key_are_refused(keyed: TestClient, photo: bytes) -> None:
    for headers, code in (({}, "missing_api_key"), ({"X-API-Key": "wrong"}, "invalid_api_key")):
        response = keyed.post("/predict", files={"file": photo}, headers=headers)
        message = assert_error(response, 401, code)
        assert "X-API-Key" in message and KEY not in response.text
        assert response.headers["www-authenticate"].startswith("ApiKey")
        assert_error(keyed.get("/model", headers=headers), 401, code)
        assert_error(keyed.get("/nowhere", headers=headers), 401, code)  # no probing for paths
    assert keyed.post("/predict", files={"file": photo}, headers={"X-API-Key": KEY}).status_code == 200
    assert keyed.get("/model", headers={"X-API-Key": KEY}).status_code == 200
    twice = [("X-API-Key", KEY), ("X-API-Key", KEY)]
    assert_error(keyed.get("/model", headers=twice), 401, "invalid_api_key")


def test_health_the_page_and_the_docs_need_no_key(keyed: TestClient) -> None:
    assert keyed.get("/health").json()["status"] == "ok"
    for path in ("/", "/static/app.js", "/static/style.css", "/docs"):
        assert keyed.get(path).status_code == 200, path
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert schema["paths"]["/predict"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_the_key_comes_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert api_key_for(ServeSettings(), {}) is None
    assert api_key_for(ServeSettings(), {"CARID_API_KEY": KEY}) == KEY
    assert api_key_for(ServeSettings(api_key_env="MY_KEY"), {"MY_KEY": KEY, "CARID_API_KEY": "x" * 20}) == KEY
    with pytest.raises(ServeError, match="MY_KEY is not set"):
        api_key_for(ServeSettings(api_key_env="MY_KEY"), {"CARID_API_KEY": KEY})
    with pytest.raises(ServeError, match="at least 16"):
        api_key_for(ServeSettings(), {"CARID_API_KEY": "short"})
    with pytest.raises(ServeError, match="api_key_env must name an environment variable"):
        ServeSettings(api_key_env="not a name")
    monkeypatch.setenv("CARID_API_KEY", KEY)
    assert KEY not in str(ServeSettings().to_dict())


# --- the concurrency limit -----------------------------------------------------------------------------


def test_the_request_past_the_concurrency_limit_gets_503() -> None:
    """61 uploads that send their headers and then nothing, against a limit of 60: the 61st is
    refused at once with a JSON 503; /health still answers; the others go on when it is over."""
    predictor, _ = stub_predictor()
    settings = ServeSettings(concurrency_limit=60, body_timeout=60, header_timeout=60)
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    )
    with live_server(build_app(predictor, settings), settings) as url, httpx.Client(base_url=url) as client:
        slow = [raw_connection(url) for _ in range(60)]
        try:
            for connection in slow:
                connection.sendall(head)
            deadline = time.monotonic() + 20
            while client.get("/health").json()["requests"]["active"] < 60:
                assert time.monotonic() < deadline, client.get("/health").json()
                time.sleep(0.05)
            assert client.get("/health").json()["requests"] == {"active": 60, "limit": 60}
            started = time.monotonic()
            response = client.post("/predict", files={"file": ("car.jpg", valid_jpeg((64, 48)))})
            assert time.monotonic() - started < 5
            message = assert_error(response, 503, "busy")
            assert "60" in message and response.headers["retry-after"] == "1"
        finally:
            for connection in slow:
                connection.close()
        deadline = time.monotonic() + 20
        while client.get("/health").json()["requests"]["active"]:
            assert time.monotonic() < deadline, "the slow requests were not released"
            time.sleep(0.05)
        assert client.post("/predict", files={"file": ("car.jpg", valid_jpeg((64, 48)))}).status_code == 200


# --- one file only -------------------------------------------------------------------------------------


def test_a_form_with_two_file_parts_is_refused(photo: bytes) -> None:
    predictor, backend = stub_predictor()
    client = TestClient(build_app(predictor, ServeSettings()))
    other = valid_png((32, 32))
    for files in (
        [("file", ("a.jpg", photo)), ("file", ("b.png", other))],
        [("file", ("a.jpg", photo)), ("extra", ("b.png", other))],
    ):
        message = assert_error(client.post("/predict", files=files), 400, "too_many_files")
        assert "2 file parts" in message and "'file'" in message
    assert backend.batches == []
    # text fields beside the one file are ignored (tests/serve/test_api.py: no field selects a model)
    assert client.post("/predict", files={"file": photo}, data={"note": "x"}).status_code == 200
