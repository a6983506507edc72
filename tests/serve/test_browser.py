"""The web page in a real browser: Debian's Chromium driven by Python playwright.

A uvicorn server runs the tiny bundle of tests/test_export.py in a thread on a free loopback port.
The page gets a real car photo (the shared Stanford photo when present, else a made-up JPEG) via
its file input and via drag and drop; the tests check that the label it shows is the API's answer
and that the numbered box sits on the API's box scaled to the displayed image (within 2 px), at
two window widths, that a small photo is scaled up, and that a server with an API key makes the
page ask for it.

The pipeline test serves a `PipelinePredictor` whose detector is a fake that answers the shared
car-frames frame with the most cars with that frame's true boxes (boxes.csv) and a frame without a
car with none, and whose identifier is a stub with one chosen answer per car (sure, unsure, "not
sure"): every box and every car must be on the page with its number, label, probability, warning
and detection score; the page is rendered to /tmp/page-cars.png.

Skipped with a reason when /usr/bin/chromium or playwright is missing (install with `pip install
playwright`; no `playwright install` needed, the system Chromium is used), or, for the pipeline
test, when the car-frames dataset is absent.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from carid.artifacts.pipeline import Pipeline
from carid.config import shared_datasets_dir
from carid.runtime.detection import Detection
from carid.runtime.pipeline import PipelinePredictor, decode_photo
from carid.serve.api import build_app, create_app
from carid.serve.settings import ServeSettings
from tests.runtime.test_pipeline import FakeMetadata
from tests.runtime.test_predictor import CAR_CLASSES, StubBackend, stub_predictor
from tests.serve.live import live_server
from tests.serve.test_api import tiny_bundle  # noqa: F401  (the module-scoped fixture)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SHARED_PHOTO = Path("stanford-cars-devkit/cars_train/04530.jpg")
TOLERANCE_PX = 2.0
SCREENSHOT = Path("/tmp/page-cars.png")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[str]:  # noqa: F811
    """The app on a free 127.0.0.1 port (uvicorn in a thread, as `carid serve` runs it)."""
    settings = ServeSettings()
    with live_server(create_app(tiny_bundle, settings), settings) as url:
        yield url


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real car photo from the shared data when present, else a made-up 400x300 JPEG."""
    shared = shared_datasets_dir()
    if shared is not None and (shared / SHARED_PHOTO).is_file():
        return shared / SHARED_PHOTO
    path = tmp_path_factory.mktemp("photo") / "car.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, format="JPEG")
    return path


@contextmanager
def open_page(server: str) -> Iterator[Any]:
    """A fresh page of the app at `server`; fails on a script error or a request to another origin."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            script_errors: list[str] = []
            foreign: list[str] = []
            page.on("pageerror", lambda error: script_errors.append(str(error)))
            page.on(
                "request",
                lambda request: (
                    None
                    if request.url.startswith((server, "data:", "blob:"))
                    else foreign.append(request.url)
                ),
            )
            page.goto(f"{server}/")  # the page's content security policy stays on (no bypass_csp)
            yield page
            assert script_errors == [], script_errors
            assert foreign == [], f"the page fetched from elsewhere: {foreign}"
        finally:
            browser.close()


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    with open_page(server) as page:
        sync_api.expect(page.locator("#model-summary")).to_have_text(re.compile(r"^Model: "))
        yield page


def api_answer(server: str, photo: Path) -> dict[str, Any]:
    response = httpx.post(
        f"{server}/predict", params={"top_k": 5}, files={"file": (photo.name, photo.read_bytes())}
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_answer(page: Any, boxes: int = 1) -> None:
    """Until the answer is rendered and its `boxes` boxes are drawn (once the photo has loaded)."""
    # Locator waits, not wait_for_function: the page's content security policy forbids eval.
    page.wait_for_selector("#result:not([hidden]):not([aria-busy]) #timing:not(:empty)")
    sync_api.expect(page.locator("#boxes .box")).to_have_count(boxes)


def assert_box_matches(page: Any, answer: dict[str, Any], number: int = 1) -> None:
    """Box `number` is the API box of car `number` (original pixels) scaled to the displayed photo,
    within 2 px."""
    shown = page.locator("#photo").bounding_box()
    drawn = page.locator(f'#boxes .box[data-number="{number}"]').bounding_box()
    assert shown is not None and drawn is not None
    width, height = answer["image_size"]
    scale_x, scale_y = shown["width"] / width, shown["height"] / height
    box = answer["cars"][number - 1]["box"]
    expected = {
        "x": shown["x"] + box["x1"] * scale_x,
        "y": shown["y"] + box["y1"] * scale_y,
        "width": (box["x2"] - box["x1"]) * scale_x,
        "height": (box["y2"] - box["y1"]) * scale_y,
    }
    for key, value in expected.items():
        assert abs(drawn[key] - value) <= TOLERANCE_PX, (key, drawn, expected, shown)


def test_uploaded_photo_shows_the_api_answer_and_box(server: str, page: Any, photo: Path) -> None:
    answer = api_answer(server, photo)
    assert answer["box"] is not None
    page.set_input_files("#file-input", str(photo))
    wait_for_answer(page)

    assert len(answer["cars"]) == 1  # a single model answers the photo as one car
    sync_api.expect(page.locator("#cars .car")).to_have_count(1)
    car = page.locator('#cars .car[data-number="1"]')
    expected_label = "Not sure" if answer["unknown"] else answer["label"]
    assert car.locator(".car-label").text_content() == expected_label
    assert car.get_attribute("data-label") == answer["label"]
    assert page.locator('#boxes .box[data-number="1"]').text_content() == "1"
    names = car.locator(".top-k .name").all_text_contents()
    assert names == [score["label"] for score in answer["top_k"]]
    values = car.locator(".top-k .value").all_text_contents()
    assert values == [f"{score['probability'] * 100:.1f}%" for score in answer["top_k"]]
    assert car.locator(".detection").count() == 0  # no detector, no detection score
    warned = car.locator(".warning").count() == 1
    assert warned == (not answer["unknown"] and answer["probability"] < 0.5)
    assert page.is_hidden("#explain-control")  # the ONNX backend offers no Grad-CAM, and says why
    assert "--backend torch" in page.text_content("#explain-note") and page.is_visible("#explain-note")

    assert_box_matches(page, answer)
    full_width = page.locator("#photo").bounding_box()["width"]
    page.set_viewport_size({"width": 300, "height": 700})  # the photo shrinks: the box must follow
    deadline = time.monotonic() + 10
    while page.locator("#photo").bounding_box()["width"] > full_width - 20:
        assert time.monotonic() < deadline, "the photo did not shrink with the window"
        page.wait_for_timeout(50)
    page.wait_for_timeout(100)  # let the resize observer redraw
    assert_box_matches(page, answer)


def test_dropped_photo_and_refused_file(server: str, page: Any, photo: Path) -> None:
    answer = api_answer(server, photo)
    encoded = base64.b64encode(photo.read_bytes()).decode("ascii")
    page.evaluate(
        """([encoded, name]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            const zone = document.getElementById("drop-zone");
            const options = { dataTransfer: transfer, bubbles: true, cancelable: true };
            zone.dispatchEvent(new DragEvent("drop", options));
        }""",
        [encoded, photo.name],
    )
    wait_for_answer(page)
    assert page.get_attribute('#cars .car[data-number="1"]', "data-label") == answer["label"]
    assert_box_matches(page, answer)

    # a small photo is scaled up to the column's width, its box with it
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, size=(110, 165, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    small = buffer.getvalue()
    page.set_input_files("#file-input", {"name": "small.png", "mimeType": "image/png", "buffer": small})
    wait_for_answer(page)
    shown = page.locator("#photo").bounding_box()
    assert shown["width"] >= 3 * 165 and abs(shown["width"] / shown["height"] - 1.5) < 0.02, shown
    assert_box_matches(page, httpx.post(f"{server}/predict", files={"file": ("small.png", small)}).json())

    text = b"not a photo at all\n" * 10
    page.set_input_files("#file-input", {"name": "notes.txt", "mimeType": "text/plain", "buffer": text})
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert "notes.txt" in message and "not a JPEG" in message
    assert page.is_hidden("#result")


def test_a_server_with_an_api_key_asks_for_it(
    tiny_bundle: Path,  # noqa: F811
    photo: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a key the page asks for it, says when it is wrong, and sends it once typed."""
    key = "browser-test-key-0123456789"
    monkeypatch.setenv("CARID_BROWSER_TEST_KEY", key)
    settings = ServeSettings(api_key_env="CARID_BROWSER_TEST_KEY", warmup=False)
    with live_server(create_app(tiny_bundle, settings), settings) as url, open_page(url) as page:
        sync_api.expect(page.locator("#key-form")).to_be_visible()
        sync_api.expect(page.locator("#model-summary")).to_have_text("This server needs an API key.")
        page.fill("#key-input", "not-the-key")
        page.click("#key-form button")
        sync_api.expect(page.locator("#key-error")).to_have_text(re.compile("did not accept"))
        page.fill("#key-input", key)
        page.click("#key-form button")
        sync_api.expect(page.locator("#model-summary")).to_have_text(re.compile(r"^Model: "))
        assert page.is_hidden("#key-form")
        page.set_input_files("#file-input", str(photo))
        wait_for_answer(page)
        answer = httpx.post(
            f"{url}/predict", files={"file": (photo.name, photo.read_bytes())}, headers={"X-API-Key": key}
        ).json()
        assert page.get_attribute('#cars .car[data-number="1"]', "data-label") == answer["label"]


# --- a pipeline: every car of a real frame ---------------------------------------------------------------

# The stub identifier's answer for the i-th crop of a batch (largest car first): sure, low
# confidence (31 %), under the unknown threshold (0.3), then sure again, in turn.
CAR_LOGITS = (
    (3.0, 0.0, 0.0, 0.0),
    (0.0, 0.2988, 0.0, 0.0),
    (0.0, 0.0, 0.2, 0.0),
    (0.0, 0.0, 0.0, 2.5),
    (0.0, 1.8, 0.0, 0.0),
    (0.0, 0.0, 2.2, 0.0),
    (1.2, 0.0, 0.0, 0.0),
)
UNKNOWN_THRESHOLD = 0.3


class PerCarBackend(StubBackend):
    """The i-th image of each batch gets CAR_LOGITS[i] (cycling), so each car has its own answer."""

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = super().run(batch)
        rows = [CAR_LOGITS[index % len(CAR_LOGITS)] for index in range(len(batch))]
        outputs["logits"] = np.asarray(rows, dtype=np.float32)
        return outputs


def sentence(text: str) -> str:
    """A reason as the page writes it: its first letter capitalized."""
    return text[:1].upper() + text[1:]


def pixels_key(data: bytes) -> str:
    """What the fake detector knows a photo by: a hash of the pixels the pipeline decodes from it."""
    decoded = decode_photo(data, "key")
    assert decoded.image is not None, decoded.error
    return hashlib.sha1(np.asarray(decoded.image).tobytes()).hexdigest()


class FrameDetector:
    """Answers each known photo with its true boxes (original pixels, score given), others with none."""

    def __init__(self, frames: dict[str, list[tuple[tuple[float, float, float, float], float]]]) -> None:
        self.frames = frames
        self.metadata = FakeMetadata()

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> list[Detection]:
        found = self.frames.get(hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest(), [])
        return [Detection(box, score) for box, score in found]


def car_frames() -> tuple[Path, list[tuple[float, float, float, float]], Path]:
    """The car-frames frame with the most cars, its true boxes, and a frame with no car."""
    shared = shared_datasets_dir()
    root = None if shared is None else shared / "car-frames"
    if root is None or not (root / "boxes.csv").is_file():
        pytest.skip("the shared car-frames dataset (../shared/datasets/car-frames) is not present")
    with (root / "boxes.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    counts = Counter(row["image_id"] for row in rows)
    busiest = min(counts, key=lambda name: (-counts[name], name))
    boxes = [
        (float(row["xmin"]), float(row["ymin"]), float(row["xmax"]), float(row["ymax"]))
        for row in rows
        if row["image_id"] == busiest
    ]
    empty = next(path for path in sorted((root / "images").glob("*.jpg")) if path.name not in counts)
    return root / "images" / busiest, boxes, empty


def test_a_pipeline_shows_every_car_of_a_real_frame(tmp_path: Path) -> None:
    frame, true_boxes, empty = car_frames()
    assert len(true_boxes) >= 3
    scores = [round(0.95 - 0.06 * index, 2) for index in range(len(true_boxes))]
    detector = FrameDetector({pixels_key(frame.read_bytes()): list(zip(true_boxes, scores, strict=True))})
    identifier, _ = stub_predictor(unknown_threshold=UNKNOWN_THRESHOLD)
    identifier.backend = PerCarBackend(np.zeros(len(CAR_CLASSES)))
    predictor = PipelinePredictor(Pipeline(path=tmp_path), detector, identifier)  # type: ignore[arg-type]
    settings = ServeSettings(warmup=False)
    with live_server(build_app(predictor, settings), settings) as url, open_page(url) as page:
        sync_api.expect(page.locator("#model-summary")).to_have_text(re.compile("finds every car"))
        assert page.is_hidden("#explain-control") and "pipeline" in page.text_content("#explain-note")
        answer = api_answer(url, frame)
        cars = answer["cars"]
        assert len(cars) == len(true_boxes)
        page.set_input_files("#file-input", str(frame))
        wait_for_answer(page, boxes=len(cars))

        assert page.text_content("#result-heading") == f"{len(cars)} cars, largest first"
        numbers = [str(number) for number in range(1, len(cars) + 1)]
        drawn = page.locator("#boxes .box")
        assert [drawn.nth(i).get_attribute("data-number") for i in range(len(cars))] == numbers
        assert page.locator("#boxes .box-number").all_text_contents() == numbers
        for number in range(1, len(cars) + 1):
            assert_box_matches(page, answer, number)
        items = page.locator("#cars .car")
        sync_api.expect(items).to_have_count(len(cars))
        assert items.locator(".number").all_text_contents() == numbers
        seen = {"sure": 0, "low": 0, "unknown": 0}
        for index, car in enumerate(cars):
            item = items.nth(index)
            assert item.get_attribute("data-number") == str(index + 1)
            assert item.get_attribute("data-label") == car["label"]
            label = item.locator(".car-label").text_content()
            assert item.locator(".probability").text_content() == f"{car['probability'] * 100:.1f}%"
            detection = item.locator(".detection").text_content()
            assert detection == f"Detection score: {car['detection_score'] * 100:.1f}%"
            assert item.locator(".levels dd").first.text_content().startswith(car["make"]["value"])
            if car["unknown"]:
                seen["unknown"] += 1
                reason = item.locator(".reason").text_content()
                best = car["top_k"][0]
                assert label == "Not sure" and sentence(car["reason"]) in reason
                assert f"Best guess: {best['label']} ({best['probability'] * 100:.1f}%)" in reason
            elif car["probability"] < 0.5:
                seen["low"] += 1
                assert label == car["label"] and item.locator(".warning").is_visible()
                assert "Low confidence" in item.locator(".warning").text_content()
            else:
                seen["sure"] += 1
                assert label == car["label"] and item.locator(".warning").count() == 0
        assert all(seen.values()), seen  # the frame showed each kind of answer
        assert abs(cars[1]["probability"] - 0.31) < 0.005  # the low-confidence example of issue 24
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        page.set_input_files("#file-input", str(empty))
        wait_for_answer(page, boxes=0)
        assert page.text_content("#result-heading") == "No car found"
        assert page.locator("#cars .car").count() == 0
        no_car = api_answer(url, empty)
        assert no_car["cars"] == [] and page.text_content("#no-car") == sentence(no_car["reason"])
        assert no_car["reason"].startswith("no car found")
