"""Tests for carid.serve.api: the REST API, its limits and its errors (the checks of
carid.serve.limits on their own: tests/serve/test_limits.py).

Most tests serve the stub predictor of tests/runtime/test_predictor.py (outputs the test chooses,
no model file), so each expected answer is the predictor's own answer on the same bytes. The tests
marked slow serve the tiny trained bundle of tests/test_export.py through `create_app`, and run the
load benchmark for a few seconds against it. Every car of a pipeline's answer, and the answers'
shapes (carid.serve.schemas): tests/serve/test_schemas.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from carid.runtime.predictor import Predictor
from carid.serve import api as serve_api
from carid.serve.api import InferenceGate, build_app, create_app, gradcam_caption
from carid.serve.limits import (
    MULTIPART_OVERHEAD_BYTES,
    ApiError,
)
from carid.serve.schemas import PredictAnswer
from carid.serve.settings import ServeSettings
from tests.conftest import write_image
from tests.runtime.test_predictor import CAR_CLASSES, StubBackend, stub_predictor

REPO = Path(__file__).resolve().parents[2]
STATIC_FILES = ("index.html", "app.js", "style.css")


# --- helpers -----------------------------------------------------------------------------------------


def image_bytes(tmp_path: Path, name: str, **kwargs: Any) -> bytes:
    """The bytes of a small image written by tests.conftest.write_image (format from the suffix)."""
    return write_image(tmp_path / name, **kwargs).read_bytes()


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR chunk declares width x height (CRC fixed): a decompression bomb's header."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def client_for(predictor: Predictor, **settings: Any) -> TestClient:
    return TestClient(build_app(predictor, ServeSettings(**settings)), raise_server_exceptions=False)


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is the JSON error shape with this status and code; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["message"]


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    """A prediction dict without its timings, its cars' included (they differ between two runs)."""
    kept = {key: value for key, value in answer.items() if key != "timing"}
    if "cars" in kept:
        kept["cars"] = [comparable(car) for car in kept["cars"]]
    return kept


@pytest.fixture
def stub() -> tuple[Predictor, StubBackend]:
    return stub_predictor()


@pytest.fixture
def client(stub: tuple[Predictor, StubBackend]) -> TestClient:
    return client_for(stub[0])


# --- good photos ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("car.jpg", {"size": (96, 64), "seed": 1}),
        ("car.png", {"size": (64, 96), "seed": 2}),
        ("alpha.png", {"size": (40, 30), "mode": "RGBA"}),
        ("cmyk.jpg", {"size": (50, 70), "mode": "CMYK"}),
        ("grey.png", {"size": (33, 21), "mode": "L"}),
        ("car.webp", {"size": (48, 32), "seed": 3}),
    ],
)
def test_predict_answers_as_the_predictor_does(
    client: TestClient, stub: tuple[Predictor, StubBackend], tmp_path: Path, name: str, options: dict
) -> None:
    data = image_bytes(tmp_path, name, **options)
    response = client.post("/predict", files={"file": (name, data, "application/octet-stream")})
    assert response.status_code == 200, response.text
    answer = response.json()
    (expected,) = stub[0].predict([data], names=[name])
    assert comparable(answer) == comparable(expected.to_dict())
    PredictAnswer.model_validate(answer)
    assert answer["ok"] and answer["source"] == name and answer["label"] == CAR_CLASSES[0]
    assert answer["image_size"] == list(options["size"])
    assert answer["box"] is not None and "explanation" not in answer
    assert len(answer["top_k"]) == len(CAR_CLASSES)  # default top_k 5, capped by the 4 classes
    for level in ("make", "body_type", "year"):  # rolled up: at least the top class's probability
        assert set(answer[level]) == {"value", "probability"}
        assert answer[level]["probability"] >= answer["top_k"][0]["probability"] - 1e-6


def test_top_k_and_type_from_bytes_not_from_name_or_header(client: TestClient, tmp_path: Path) -> None:
    data = image_bytes(tmp_path, "car.jpg", seed=4)
    response = client.post("/predict", params={"top_k": 2}, files={"file": ("notes.txt", data, "text/plain")})
    assert response.status_code == 200, response.text
    assert [score["label"] for score in response.json()["top_k"]] == list(CAR_CLASSES[:2])
    message = assert_error(
        client.post("/predict", params={"top_k": 0}, files={"file": data}), 422, "invalid_parameter"
    )
    assert "top_k" in message
    assert_error(
        client.post("/predict", params={"top_k": "many"}, files={"file": data}), 422, "invalid_parameter"
    )


def test_unknown_label_is_reported(tmp_path: Path) -> None:
    predictor, _ = stub_predictor(logits=[0.0, 0.0, 0.0, 0.1], unknown_threshold=0.9)
    response = client_for(predictor).post("/predict", files={"file": image_bytes(tmp_path, "a.png")})
    answer = response.json()
    assert response.status_code == 200 and answer["unknown"] is True and answer["label"] == "unknown"
    assert answer["top_k"][0]["label"] == CAR_CLASSES[3]
    assert [car["label"] for car in answer["cars"]] == ["unknown"] and answer["cars"][0]["reason"]


# --- bad input -----------------------------------------------------------------------------------------


def test_empty_file(client: TestClient) -> None:
    message = assert_error(client.post("/predict", files={"file": ("car.jpg", b"")}), 400, "empty_file")
    assert "car.jpg" in message and "empty" in message


def test_text_file_is_refused_whatever_it_claims(client: TestClient) -> None:
    text = b"this is not a photo of a car\n" * 20
    for name, content_type in (("notes.txt", "text/plain"), ("car.jpg", "image/jpeg")):
        response = client.post("/predict", files={"file": (name, text, content_type)})
        message = assert_error(response, 415, "unsupported_media_type")
        assert name in message and "text" in message and "JPEG" in message


def test_other_files_say_what_they_are(client: TestClient) -> None:
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64
    message = assert_error(
        client.post("/predict", files={"file": ("p.heic", heic)}), 415, "unsupported_media_type"
    )
    assert "HEIC" in message
    pdf = b"%PDF-1.7\n" + bytes(range(256))
    assert "PDF" in assert_error(
        client.post("/predict", files={"file": ("a.pdf", pdf)}), 415, "unsupported_media_type"
    )


def test_truncated_jpeg(client: TestClient, stub: tuple[Predictor, StubBackend], tmp_path: Path) -> None:
    data = image_bytes(tmp_path, "car.jpg", size=(256, 192), seed=5)
    message = assert_error(
        client.post("/predict", files={"file": ("cut.jpg", data[: len(data) // 2])}), 422, "truncated_image"
    )
    assert "cut.jpg" in message
    assert stub[1].batches == [], "a truncated photo must not reach the network"
    # cut inside the header: the magic number says JPEG, Pillow cannot read the rest
    assert_error(client.post("/predict", files={"file": ("head.jpg", data[:20])}), 422, "unreadable_image")


def test_huge_declared_size_is_refused_from_the_header(
    stub: tuple[Predictor, StubBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor, backend = stub
    client = client_for(predictor)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    bomb = png_declaring(30000, 30000)
    assert len(bomb) < 200
    started = time.perf_counter()
    assert_error(client.post("/predict", files={"file": ("bomb.png", bomb)}), 413, "too_many_pixels")
    # below Pillow's own bomb guard (89 MP) but above the server's default 50 MP limit
    big = png_declaring(8000, 8000)
    message = assert_error(client.post("/predict", files={"file": ("big.png", big)}), 413, "too_many_pixels")
    assert "8000x8000" in message and f"{ServeSettings().max_pixels:,}" in message
    assert time.perf_counter() - started < 5.0
    assert backend.batches == []


def test_max_pixels_setting(stub: tuple[Predictor, StubBackend], tmp_path: Path) -> None:
    client = client_for(stub[0], max_pixels=64 * 48 - 1)
    data = image_bytes(tmp_path, "a.png", size=(64, 48))
    assert "64x48" in assert_error(client.post("/predict", files={"file": data}), 413, "too_many_pixels")
    assert client_for(stub[0], max_pixels=64 * 48).post("/predict", files={"file": data}).status_code == 200


def test_wrong_or_missing_field_names_file(client: TestClient, tmp_path: Path) -> None:
    data = image_bytes(tmp_path, "car.jpg")
    for response in (
        client.post("/predict", files={"image": ("car.jpg", data)}),
        client.post("/predict", content=data, headers={"content-type": "image/jpeg"}),
        client.post("/predict"),
    ):
        message = assert_error(response, 422, "missing_file")
        assert "'file'" in message and "multipart/form-data" in message
    message = assert_error(client.post("/predict", data={"file": "car.jpg"}), 422, "invalid_file_field")
    assert "'file'" in message


def test_oversized_upload(stub: tuple[Predictor, StubBackend], tmp_path: Path) -> None:
    limit = 20_000
    client = client_for(stub[0], max_upload_mb=limit / (1024 * 1024))
    noise = image_bytes(tmp_path, "noise.png", size=(200, 200), seed=6)
    assert len(noise) > limit + MULTIPART_OVERHEAD_BYTES
    # refused from the declared Content-Length, before reading the body
    assert "19.5 KB" in assert_error(client.post("/predict", files={"file": noise}), 413, "file_too_large")
    # just over the photo limit but within the multipart allowance: refused while reading the file
    over = noise[: limit + 1]
    assert_error(client.post("/predict", files={"file": ("over.png", over)}), 413, "file_too_large")
    # chunked, no Content-Length: counted while streaming
    boundary = "carid-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="n.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + noise
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert_error(response, 413, "file_too_large")
    assert stub[1].batches == []
    assert client.post("/predict", files={"file": noise[:100]}).status_code != 413


# --- errors that are the server's ---------------------------------------------------------------------


class FailingBackend(StubBackend):
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("secret detail: /srv/models/private.onnx exploded")


def test_model_failures_are_logged_not_leaked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    predictor, _ = stub_predictor()
    predictor.backend = FailingBackend(np.zeros(len(CAR_CLASSES)))
    with caplog.at_level(logging.ERROR, logger="carid.serve"):
        response = client_for(predictor).post("/predict", files={"file": image_bytes(tmp_path, "a.png")})
    message = assert_error(response, 500, "internal_error")
    assert "secret" not in response.text and "Traceback" not in response.text and "logged" in message
    assert "secret detail" in caplog.text


def test_unexpected_errors_get_the_generic_500(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> None:
        raise KeyError("internal state /srv/x")

    monkeypatch.setattr(serve_api, "check_upload", broken)
    with caplog.at_level(logging.ERROR, logger="carid.serve"):
        response = client.post("/predict", files={"file": image_bytes(tmp_path, "a.png")})
    assert_error(response, 500, "internal_error")
    assert "/srv/x" not in response.text and "/srv/x" in caplog.text


def test_http_errors_are_json(client: TestClient) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")


def test_inference_gate_queues_and_refuses_beyond_the_queue() -> None:
    async def scenario() -> list[str]:
        gate = InferenceGate(slots=1, max_waiting=1)
        events: list[str] = []
        release = asyncio.Event()

        async def holder() -> None:
            async with gate.slot():
                events.append("first running")
                await release.wait()

        async def waiter() -> None:
            async with gate.slot():
                events.append("second running")

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        second = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        assert gate.to_dict() == {"slots": 1, "running": 1, "waiting": 1}
        with pytest.raises(ApiError) as caught:
            async with gate.slot():
                pass
        assert caught.value.status == 503
        release.set()
        await asyncio.gather(first, second)
        assert gate.to_dict() == {"slots": 1, "running": 0, "waiting": 0}
        return events

    assert asyncio.run(scenario()) == ["first running", "second running"]


class SlowBackend(StubBackend):
    """Records how many inferences overlap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.active = 0
        self.most_active = 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.05)
        with self.lock:
            self.active -= 1
        return super().run(batch)


@pytest.mark.parametrize("slots", [1, 2])
def test_concurrent_requests_share_the_inference_slots(tmp_path: Path, slots: int) -> None:
    predictor, _ = stub_predictor()
    backend = SlowBackend(np.linspace(1.0, 0.0, len(CAR_CLASSES)))
    predictor.backend = backend
    app = build_app(predictor, ServeSettings(inference_slots=slots))
    data = image_bytes(tmp_path, "a.png")

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(
                *(client.post("/predict", files={"file": ("a.png", data)}) for _ in range(6))
            )
        return [response.status_code for response in responses]

    assert asyncio.run(burst()) == [200] * 6
    assert backend.most_active == slots


# --- model, health, docs, page ------------------------------------------------------------------------


def test_model_description_without_server_paths(tmp_path: Path) -> None:
    secret = "/srv/secret-models/run-7/checkpoints/best.ckpt"
    predictor, _ = stub_predictor(source_checkpoint=secret, temperature=1.5, unknown_threshold=0.3)
    predictor.source = Path("/srv/secret-models/run-7/export")
    response = client_for(predictor, top_k=3).get("/model")
    assert response.status_code == 200
    model = response.json()
    assert "/srv/secret-models" not in response.text
    assert model["num_classes"] == len(CAR_CLASSES) and model["class_names"] == list(CAR_CLASSES)
    assert model["taxonomy_levels"] == ["class", "make", "body_type", "year"]
    assert model["input_size"] == {"height": 32, "width": 32} and model["with_box"] is True
    assert model["backend"] == "stub" and model["versions"] == dict(predictor.metadata.versions)
    assert (model["temperature"], model["unknown_threshold"]) == (1.5, 0.3)
    assert model["default_top_k"] == 3 and model["limits"]["max_upload_bytes"] == 10 * 1024 * 1024
    assert model["explain"]["available"] is False and "--backend torch" in model["explain"]["reason"]
    assert model["kind"] == "model" and model["pipeline"] is False


def test_health(client: TestClient) -> None:
    first = client.get("/health").json()
    time.sleep(0.01)
    second = client.get("/health").json()
    assert first["status"] == "ok" and first["model_loaded"] is True and first["backend"] == "stub"
    assert 0 <= first["uptime_s"] < second["uptime_s"]
    assert first["inference"] == {"slots": 1, "running": 0, "waiting": 0}


def test_openapi_docs_and_no_model_choice_in_the_api(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/predict", "/model", "/health"}
    predict = schema["paths"]["/predict"]["post"]
    assert sorted(p["name"] for p in predict["parameters"]) == ["explain", "top_k"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    if "$ref" in body:
        body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    assert list(body["properties"]) == ["file"]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            names = [p["name"] for p in operation.get("parameters", [])]
            assert not any("model" in n or "path" in n for n in names), (path, names)


def test_no_request_can_select_a_model_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor, _ = stub_predictor()
    loaded: list[str] = []

    def fake_load(path: Path | str, backend: str = "auto", **_: Any) -> Predictor:
        loaded.append(str(path))
        return predictor

    monkeypatch.setattr(Predictor, "load", staticmethod(fake_load))
    startup = tmp_path / "the-model"
    other = tmp_path / "other-model"
    client = TestClient(create_app(startup, ServeSettings(warmup=False)))
    before = client.get("/model").json()
    data = image_bytes(tmp_path, "a.png")
    hostile = {"model": str(other), "model_path": str(other), "path": str(other), "bundle": str(other)}
    response = client.post(
        "/predict",
        params=hostile,
        data=hostile,
        files={"file": ("a.png", data)},
        headers={"X-Model": str(other)},
    )
    assert response.status_code == 200 and response.json()["label"] == CAR_CLASSES[0]
    assert client.get("/model", params=hostile).json() == before
    assert loaded == [str(startup)]


def test_web_page_and_its_files_are_local(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and 'id="file-input"' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    for name in STATIC_FILES:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["x-content-type-options"] == "nosniff"
        assert "http://" not in response.text and "https://" not in response.text, name
    assert client.get("/static/../api.py").status_code == 404


# --- explanations ---------------------------------------------------------------------------------------


def test_explain_without_torch_backend_says_why(client: TestClient, tmp_path: Path) -> None:
    response = client.post(
        "/predict", params={"explain": "true"}, files={"file": image_bytes(tmp_path, "a.png")}
    )
    assert response.status_code == 200
    explanation = response.json()["explanation"]
    assert explanation["available"] is False and "torch" in explanation["reason"]


def test_gradcam_caption_gives_the_answers_probability(tmp_path: Path) -> None:
    logits = [4.0, 0.0, 0.0, 0.0]
    predictor, _ = stub_predictor(logits=logits, temperature=3.0)
    (answer,) = predictor.predict([image_bytes(tmp_path, "a.png")])
    raw = float(np.exp(4.0) / np.exp(logits).sum())  # what carid.explain's own caption would print
    assert abs(answer.probability - raw) > 0.3
    assert gradcam_caption(answer) == f"Grad-CAM for {CAR_CLASSES[0]} ({answer.probability * 100:.1f}%)"
    unsure, _ = stub_predictor(logits=[0.0, 0.0, 0.0, 0.1], unknown_threshold=0.9)
    (guess,) = unsure.predict([image_bytes(tmp_path, "a.png")])
    caption = gradcam_caption(guess)
    assert CAR_CLASSES[3] in caption and "not sure" in caption
    assert f"({guess.probability * 100:.1f}%;" in caption


@pytest.mark.slow  # importing torch and pytorch-grad-cam takes about 10 s
def test_explain_with_the_torch_backend(tmp_path: Path) -> None:
    pytest.importorskip("pytorch_grad_cam")
    from carid.artifacts.bundle import BundleMetadata
    from carid.runtime.backends import TorchBackend
    from tests.explain.helpers import tiny_metadata, tiny_network

    network = tiny_network()
    backend = TorchBackend(network)
    metadata = BundleMetadata.from_checkpoint_metadata(
        tiny_metadata().to_dict(),
        output_names=backend.output_names,
        embedding_dim=network.backbone.num_features,
    )
    client = client_for(Predictor(backend, metadata))
    assert client.get("/model").json()["explain"] == {"available": True, "method": "gradcam", "reason": None}
    data = image_bytes(tmp_path, "car.jpg", size=(80, 50), seed=7)
    plain = client.post("/predict", files={"file": data}).json()
    answer = client.post("/predict", params={"explain": "true"}, files={"file": data}).json()
    assert comparable(answer) == {**comparable(plain), "explanation": answer["explanation"]}
    explanation = answer["explanation"]
    assert explanation["available"] is True and explanation["method"] == "gradcam"
    assert explanation["target_label"] == answer["top_k"][0]["label"]
    # the caption gives the answer's probability, not the network's raw softmax
    assert explanation["probability"] == answer["probability"]
    expected_caption = f"Grad-CAM for {answer['top_k'][0]['label']} ({answer['probability'] * 100:.1f}%)"
    assert explanation["caption"] == expected_caption
    PredictAnswer.model_validate(answer)
    overlay = Image.open(io.BytesIO(base64.b64decode(explanation["png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (explanation["width"], explanation["height"])


# --- the real tiny bundle -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from tests.test_export import tiny_bundle_dir

    return tiny_bundle_dir(tmp_path_factory)


@pytest.mark.slow
def test_serving_the_tiny_bundle(tiny_bundle: Path) -> None:
    photos = sorted((tiny_bundle.parents[2] / "data" / "images").glob("*.png"))
    assert photos
    client = TestClient(create_app(tiny_bundle))
    model = client.get("/model")
    assert model.json()["class_names"] == ["blue", "green", "red"] and model.json()["backend"] == "onnx"
    assert str(tiny_bundle.parent) not in model.text
    predictor = Predictor.load(tiny_bundle)
    for photo in photos[:3]:
        data = photo.read_bytes()
        response = client.post("/predict", params={"top_k": 3}, files={"file": (photo.name, data)})
        assert response.status_code == 200, response.text
        (expected,) = predictor.predict([data], top_k=3, names=[photo.name])
        answer = response.json()
        assert answer["label"] == expected.label and answer["image_size"] == [64, 48]
        assert answer["box"] == pytest.approx(expected.to_dict()["box"], abs=1e-3)
        assert [s["probability"] for s in answer["top_k"]] == pytest.approx(
            [s.probability for s in expected.top_k], abs=1e-5
        )


@pytest.mark.slow
def test_serving_with_tta_answers_like_the_predictor_with_tta(tiny_bundle: Path) -> None:
    photo = sorted((tiny_bundle.parents[2] / "data" / "images").glob("*.png"))[0]
    client = TestClient(create_app(tiny_bundle, ServeSettings(tta="hflip", warmup=False)))
    assert client.get("/model").json()["tta"] == "hflip"
    data = photo.read_bytes()
    answer = client.post("/predict", files={"file": (photo.name, data)}).json()
    (expected,) = Predictor.load(tiny_bundle, tta="hflip").predict([data])
    (plain,) = Predictor.load(tiny_bundle).predict([data])
    assert answer["box"] == pytest.approx(expected.to_dict()["box"], abs=1e-3)
    assert answer["box"] != pytest.approx(plain.to_dict()["box"], abs=1e-4)


@pytest.mark.slow
def test_load_benchmark_runs_bounded(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve-load.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_serve.py"),
        str(tiny_bundle),
        "--duration",
        "3",
        "--warmup",
        "0.5",
        "--clients",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["errors"] == 0 and report["ok"] == report["requests"] > 0
    assert report["backend"] == "onnx" and report["clients"] == 2
    assert 2.5 < report["seconds"] < 30
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert report["requests_per_s"] == pytest.approx(report["ok"] / report["seconds"], rel=0.01)
    assert "req/s" in result.stdout and "p99 ms" in result.stdout
