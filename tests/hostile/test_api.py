"""The hostile corpus (tests/hostile/corpus.py) against `carid serve`: a real uvicorn server on a free
loopback port, serving the tiny exported bundle of tests/test_export.py, and one keep-alive
httpx client. For every hostile upload (and hostile multipart form):

* the answer is never a 5xx: a 2xx, or a 4xx that the case allows, as JSON
  {"error": {"code", "message"}} whose message names the file and whose code names the problem;
* the connection survives: the answer does not say `Connection: close`, and a valid photo sent
  next goes over the SAME connection (same local port) and gets 200.

The corpus includes the heavy 7000x7000 RGBA PNG; the fuzzer's 200 mutations run too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from carid.serve.api import create_app
from carid.serve.limits import upload_name
from carid.serve.settings import ServeSettings
from tests.hostile.corpus import HostileCase, case_by_name, hostile_cases, mutations
from tests.serve.live import live_server
from tests.serve.test_api import tiny_bundle  # noqa: F401  (the module-scoped fixture)

pytestmark = [
    pytest.mark.slow,
    # the EXIF bomb's 5,000 absurd entries: Pillow warns once per entry (and then answers normally)
    pytest.mark.filterwarnings("ignore:Tag data larger than file:UserWarning"),
]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[str]:  # noqa: F811
    settings = ServeSettings(warmup=False)
    with live_server(create_app(tiny_bundle, settings), settings) as url:
        yield url


@pytest.fixture(scope="module")
def valid_photo(tiny_bundle: Path) -> bytes:  # noqa: F811
    return sorted((tiny_bundle.parents[2] / "data" / "images").glob("*.png"))[0].read_bytes()


def local_port(response: httpx.Response) -> int | None:
    """The client's port of the connection that carried `response` (None: that connection is closed)."""
    try:
        return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    except OSError:
        return None


def sent_name(filename: str) -> str:
    """The file name as the server displays it: httpx escapes '"', '\\' and control characters in a
    multipart header (as browsers do), then the server keeps the last path part (`upload_name`)."""
    escaped = re.sub(
        r'["\x00-\x1a\x1c-\x1f]', lambda m: "%22" if m[0] == '"' else f"%{ord(m[0]):02X}", filename
    )
    return upload_name(escaped.replace("\\", "\\\\"))


def problems_with(case: HostileCase, response: httpx.Response) -> list[str]:
    """What is wrong with the server's answer to `case` (empty: nothing)."""
    found: list[str] = []
    status = response.status_code
    if response.headers.get("content-type", "").split(";")[0] != "application/json":
        return [f"{status} is not JSON: {response.text[:200]!r}"]
    body: dict[str, Any] = response.json()
    if 200 <= status < 300:
        source = body.get("source", "")
        if not body.get("ok") or "/" in source or _CONTROL.search(source) or len(source) > 100:
            found.append(f"200 with ok={body.get('ok')} source={source!r}")
        if not case.allows(status):
            found.append(f"200, but the case expects {sorted(case.statuses)}")
        return found
    error = body.get("error") if set(body) == {"error"} else None
    if not isinstance(error, dict) or set(error) != {"code", "message"}:
        return [f"{status} without the JSON error shape: {body}"]
    if not case.allows(status, error["code"]):
        found.append(f"{status} {error['code']}: expected {sorted(case.statuses)} {sorted(case.codes)}")
    shown = sent_name(case.filename)
    if error["code"] == "bad_request":  # the form could not be read: there is no file name to give
        if "multipart/form-data" not in error["message"]:
            found.append(f"the message does not say what is wrong with the form: {error['message']!r}")
    elif shown not in error["message"]:
        found.append(f"the message does not name {shown!r}: {error['message']!r}")
    return found


def run_cases(url: str, photo: bytes, cases: list[HostileCase]) -> list[str]:
    """Post each case, then a valid photo on the same keep-alive client; every problem found."""
    failures: list[str] = []
    with httpx.Client(base_url=url, timeout=120.0) as client:
        for case in cases:
            try:
                response = client.post(
                    "/predict", files={"file": (case.filename, case.data, case.content_type)}
                )
                port = local_port(response)
                problems = problems_with(case, response)
                if response.headers.get("connection", "").lower() == "close":
                    problems.append(f"{response.status_code} said Connection: close")
                valid = client.post("/predict", files={"file": ("valid.png", photo, "image/png")})
                if valid.status_code != 200:
                    problems.append(f"the valid photo after it got {valid.status_code}: {valid.text[:200]}")
                elif port is None or local_port(valid) != port:
                    problems.append("the valid photo after it needed a new connection")
            except httpx.HTTPError as exc:
                problems = [f"{type(exc).__name__}: {exc}"]
            failures += [f"{case.name}: {problem}" for problem in problems]
    return failures


def test_the_corpus_is_deterministic_and_writes_safe_file_names(tmp_path: Path) -> None:
    from tests.hostile import corpus

    cases = hostile_cases()
    assert len(cases) >= 30 and all(case.statuses for case in cases)
    rebuilt = corpus._light_cases.__wrapped__()
    assert [(case.name, case.data) for case in rebuilt] == [(case.name, case.data) for case in cases]
    assert [case.data for case in mutations(50, seed=3)] == [case.data for case in mutations(50, seed=3)]
    assert [case.data for case in mutations(50, seed=3)] != [case.data for case in mutations(50, seed=4)]
    folder = tmp_path / "corpus"
    paths = corpus.write_cases(folder, [*cases, *mutations(20)])
    assert len({path.name for path in paths}) == len(paths) and all(path.parent == folder for path in paths)
    assert (folder / "name_path_traversal.jpg").read_bytes() == case_by_name("name_path_traversal").data


def test_the_corpus_gets_no_5xx_and_keeps_the_connection(server: str, valid_photo: bytes) -> None:
    cases = hostile_cases(heavy=True)
    assert len({case.name for case in cases}) >= 30
    assert run_cases(server, valid_photo, cases) == []


def test_the_fuzzer_gets_no_5xx_and_keeps_the_connection(server: str, valid_photo: bytes) -> None:
    cases = mutations(200, seed=0)
    assert len({case.data for case in cases}) > 190  # nearly all different
    assert run_cases(server, valid_photo, cases) == []


# --- hostile forms -----------------------------------------------------------------------------------------

BOUNDARY = "hostile-boundary"


def _form(*parts: bytes, close: bool = True) -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + part + b"\r\n" for part in parts)
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _file_part(disposition: bytes, data: bytes) -> bytes:
    return b"Content-Disposition: form-data; " + disposition + b"\r\nContent-Type: image/png\r\n\r\n" + data


def hostile_forms(photo: bytes) -> list[tuple[str, str, bytes, frozenset[int]]]:
    """(name, Content-Type header, body, acceptable statuses) of malformed or odd multipart forms."""
    multipart = f"multipart/form-data; boundary={BOUNDARY}"
    fields = [f'Content-Disposition: form-data; name="f{i}"\r\n\r\nx'.encode() for i in range(500)]
    return [
        (
            "raw_crlf_in_file_name",
            multipart,
            _form(_file_part(b'name="file"; filename="a\r\nX: 1.png"', photo)),
            frozenset({200, 400, 422}),
        ),
        (
            "rfc5987_file_name",
            multipart,
            _form(_file_part(b"name=\"file\"; filename*=UTF-8''%E8%BB%8A.png", photo)),
            frozenset({200, 422}),
        ),
        (
            "no_boundary",
            "multipart/form-data",
            _form(_file_part(b'name="file"; filename="a.png"', photo)),
            frozenset({400, 422}),
        ),
        (
            "wrong_boundary",
            "multipart/form-data; boundary=other",
            _form(_file_part(b'name="file"; filename="a.png"', photo)),
            frozenset({400, 422}),
        ),
        (
            "unterminated",
            multipart,
            _form(_file_part(b'name="file"; filename="a.png"', photo), close=False),
            frozenset({200, 400, 422}),
        ),
        (
            "no_disposition_name",
            multipart,
            _form(_file_part(b'filename="a.png"', photo)),
            frozenset({400, 422}),
        ),
        ("empty_form", multipart, f"--{BOUNDARY}--\r\n".encode(), frozenset({400, 422})),
        ("garbage_body", multipart, b"\x00\xff" * 500, frozenset({400, 422})),
        (
            "many_text_fields",
            multipart,
            _form(*fields, _file_part(b'name="file"; filename="a.png"', photo)),
            frozenset({200, 400}),
        ),
        (
            "three_file_parts",
            multipart,
            _form(*[_file_part(b'name="file"; filename="a.png"', photo)] * 3),
            frozenset({400}),
        ),
        ("json_body", "application/json", b'{"file": "a.png"}', frozenset({422})),
        ("urlencoded_body", "application/x-www-form-urlencoded", b"file=a.png", frozenset({422})),
    ]


def test_hostile_forms_get_json_4xx_and_keep_the_connection(server: str, valid_photo: bytes) -> None:
    failures: list[str] = []
    with httpx.Client(base_url=server, timeout=60.0) as client:
        for name, content_type, body, statuses in hostile_forms(valid_photo):
            response = client.post("/predict", content=body, headers={"content-type": content_type})
            port = local_port(response)
            error = response.json().get("error") if response.status_code >= 400 else None
            if response.status_code not in statuses:
                failures.append(f"{name}: {response.status_code} {response.text[:200]}")
            elif error is not None and (set(error) != {"code", "message"} or not error["message"]):
                failures.append(f"{name}: not the JSON error shape: {response.text[:200]}")
            valid = client.post("/predict", files={"file": ("valid.png", valid_photo, "image/png")})
            same = port is not None and local_port(valid) == port
            same = same or response.headers.get("connection") == "close"
            if valid.status_code != 200 or not same:
                failures.append(
                    f"{name}: the valid photo after it got {valid.status_code} (same connection: {same})"
                )
    assert failures == []
