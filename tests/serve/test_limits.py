"""Tests for carid.serve.limits on their own: what an upload must be (formats, names), the body-size
cap, and which exceptions are the upload's fault (`decode_failure`), also when they escape the
predictor. The API's answers to bad uploads: tests/serve/test_api.py and tests/hostile/test_api.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from carid.serve.limits import (
    MULTIPART_OVERHEAD_BYTES,
    BodyLimitMiddleware,
    UploadError,
    UploadLimits,
    check_upload,
    upload_name,
)
from tests.runtime.test_predictor import stub_predictor
from tests.serve.test_api import client_for, image_bytes


@pytest.fixture
def client() -> TestClient:
    return client_for(stub_predictor()[0])


def test_body_limit_stops_reading_at_the_limit() -> None:
    """The middleware refuses a chunked body as soon as it passes the limit, without reading the rest."""
    chunk = b"x" * 10_000
    consumed = 0
    limit = 30_000

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": consumed < 100}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = BodyLimitMiddleware(app, file_limit_bytes=limit)
    scope = {"type": "http", "path": "/predict", "headers": []}
    with pytest.raises(Exception) as caught:
        asyncio.run(middleware(scope, receive, send))
    assert getattr(caught.value, "status_code", None) == 413
    assert consumed == (limit + MULTIPART_OVERHEAD_BYTES) // len(chunk) + 1

    declared = {"type": "http", "path": "/predict", "headers": [(b"content-length", b"999999999")]}
    consumed = 0
    asyncio.run(middleware(declared, receive, send))
    assert consumed == 0 and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "file_too_large"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "PNG", "JPEG"])
def test_check_upload_accepts_the_image_formats(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 7), (200, 10, 10)).save(buffer, format=fmt)
    info = check_upload(buffer.getvalue(), "x", UploadLimits())
    assert (info.format, info.width, info.height) == (fmt, 12, 7)
    assert info.media_type.startswith("image/")


def test_check_upload_refuses_formats_pillow_reads_but_the_server_does_not() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="ICO")
    with pytest.raises(UploadError) as caught:
        check_upload(buffer.getvalue(), "icon.ico", UploadLimits())
    assert caught.value.status == 415 and "icon.ico" in caught.value.message


def test_upload_names_are_only_for_display() -> None:
    assert upload_name("../../etc/passwd") == "passwd"
    assert upload_name("C:\\photos\\car.jpg") == "car.jpg"
    assert upload_name("a\x00b\nc.jpg") == "abc.jpg"
    assert upload_name(None) == upload_name("") == upload_name("/") == "upload"
    assert len(upload_name("x" * 500)) == 100


def test_pillow_errors_on_a_header_are_the_uploads_4xx(client: TestClient) -> None:
    """Pillow raises ValueError (not an OSError) for these headers; `carid.images` maps it to an
    ImageError at the root, so each is a JSON 422 naming the file and Pillow's reason."""
    from tests.hostile.corpus import UPLOAD_CODES, case_by_name

    for name in ("png_ihdr_length_5", "png_ztxt_bomb", "tiff_width_not_a_number"):
        case = case_by_name(name, heavy=False)
        response = client.post("/predict", files={"file": (case.filename, case.data)})
        assert response.status_code == 422 and response.json()["error"]["code"] in case.codes | UPLOAD_CODES
        message = response.json()["error"]["message"]
        assert message.startswith(f"{case.filename}: cannot")
        assert response.headers.get("connection") != "close"


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        (lambda: Image.frombytes("RGB", (10, 10), b""), 422, "unreadable_image"),  # ValueError in PIL
        (lambda: Image.open(io.BytesIO(b"\xff\xd8\xff")).load(), 422, "unreadable_image"),
        (lambda: Image.new("RGB", (1, 1)).crop((0, 0, 70000, 70000)), 413, "too_many_pixels"),  # a bomb
        (lambda: (_ for _ in ()).throw(EOFError("the stub's own")), 500, "internal_error"),  # not Pillow's
    ],
)
def test_decode_errors_that_escape_the_predictor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Any, status: int, code: str | None
) -> None:
    """Whatever Pillow raises while the predictor decodes an upload is the upload's 4xx; anything
    else that escapes the predictor is the server's 500, which closes its connection."""
    import carid.runtime.predictor as predictor_module

    def prepare(*args: Any) -> Any:
        failure()
        raise AssertionError("the failure did not raise")

    monkeypatch.setattr(predictor_module, "prepare_image", prepare)
    client = client_for(stub_predictor()[0])
    response = client.post("/predict", files={"file": image_bytes(tmp_path, "a.png")})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if status < 500:
        assert response.json()["error"]["message"].startswith("upload: ")
    else:
        assert response.headers["connection"] == "close"


def test_decode_failure_maps_pillow_exceptions() -> None:
    from PIL import Image as PILImage

    from carid.serve.limits import decode_failure, raised_in_pillow

    try:
        PILImage.frombytes("RGB", (10, 10), b"")
    except ValueError as exc:
        assert raised_in_pillow(exc)
        failure = decode_failure("car.png", exc, in_pillow_only=True)
        assert failure is not None and (failure.status, failure.code) == (422, "unreadable_image")
        assert failure.message.startswith("car.png: cannot decode the image (ValueError: ")
    assert decode_failure("x", ValueError("mine"), in_pillow_only=True) is None
    assert decode_failure("x", RuntimeError("model")) is None
    bomb = decode_failure("x", PILImage.DecompressionBombError("too big"))
    assert bomb is not None and (bomb.status, bomb.code) == (413, "too_many_pixels")
    truncated = decode_failure("x", OSError("image file is truncated"))
    assert truncated is not None and truncated.code == "truncated_image"


def test_webp_uploads_have_a_lower_pixel_limit() -> None:
    """Pillow's WebP decoder needs ~15 bytes a pixel: WebP stops at 16 MP, other formats at 50 MP."""
    from carid.serve.limits import FORMAT_MAX_PIXELS

    limits = UploadLimits()
    assert limits.pixels_for("WEBP") == FORMAT_MAX_PIXELS["WEBP"] < limits.pixels_for("PNG")
    assert limits.pixels_for("PNG") == limits.max_pixels
    assert UploadLimits(max_pixels=1000).pixels_for("WEBP") == 1000
    big = io.BytesIO()
    Image.new("RGB", (4100, 4000)).save(big, format="WEBP", quality=10)  # 16.4 MP of one colour
    with pytest.raises(UploadError) as caught:
        check_upload(big.getvalue(), "big.webp", limits)
    assert caught.value.status == 413 and caught.value.code == "too_many_pixels"
    assert "the limit for WEBP images is 16,000,000" in caught.value.message
    small = io.BytesIO()
    Image.new("RGB", (4000, 4000)).save(small, format="WEBP", quality=10)
    assert check_upload(small.getvalue(), "ok.webp", limits).width == 4000
    assert limits.to_dict()["max_pixels_by_type"] == {"image/webp": 16_000_000}
