"""The web page in a real browser: Debian's Chromium driven by Python playwright.

A uvicorn server runs the tiny bundle of tests/test_export.py in a thread on a free loopback port.
The page gets a real car photo (the shared Stanford photo when present, else a made-up JPEG) via
its file input and via drag and drop; the tests check that the label it shows is the API's answer
and that the box element sits on the API's box scaled to the displayed image (within 2 px), at
two window widths; a server with an API key makes the page ask for it. Skipped with a reason when
/usr/bin/chromium or playwright is missing (install with `pip install playwright`; no
`playwright install` needed, the system Chromium is used).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from carid.config import shared_datasets_dir
from carid.serve.api import create_app
from carid.serve.settings import ServeSettings
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


def wait_for_answer(page: Any) -> None:
    # Locator waits, not wait_for_function: the page's content security policy forbids eval.
    page.wait_for_selector("#label:not(:empty)")
    page.wait_for_selector("#box:not([hidden])")


def assert_box_matches(page: Any, answer: dict[str, Any]) -> None:
    """The box element is the API box (original pixels) scaled to the displayed photo, within 2 px."""
    shown = page.locator("#photo").bounding_box()
    drawn = page.locator("#box").bounding_box()
    assert shown is not None and drawn is not None
    width, height = answer["image_size"]
    scale_x, scale_y = shown["width"] / width, shown["height"] / height
    box = answer["box"]
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

    expected_label = "Unknown car" if answer["unknown"] else answer["label"]
    assert page.text_content("#label") == expected_label
    assert page.get_attribute("#label", "data-label") == answer["label"]
    names = page.locator("#top-k .name").all_text_contents()
    assert names == [score["label"] for score in answer["top_k"]]
    values = page.locator("#top-k .value").all_text_contents()
    assert values == [f"{score['probability'] * 100:.1f}%" for score in answer["top_k"]]
    assert page.is_hidden("#explain-control")  # the ONNX backend offers no Grad-CAM

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
    assert page.get_attribute("#label", "data-label") == answer["label"]
    assert_box_matches(page, answer)

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
        assert page.get_attribute("#label", "data-label") == answer["label"]
