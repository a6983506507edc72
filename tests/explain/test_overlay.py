"""Heat-map geometry and the explanation pictures (NumPy + Pillow only)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from carid.explain.overlay import (
    BOX_COLOR,
    CAPTION_HEIGHT,
    fit_size,
    heatmap_to_original,
    png_bytes,
    render_heatmap_overlay,
    render_shap_panels,
    save_png,
)
from carid.preprocess import PreprocessSpec, compute_geometry


def test_content_region_of_a_letterboxed_input_fills_the_original():
    spec = PreprocessSpec(image_size=(64, 64), resize_mode="letterbox")
    geometry = compute_geometry((200, 100), spec)  # content 64 x 32, border of 16 rows above and below
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[16:48, :] = 1.0
    mapped = heatmap_to_original(heat, geometry)
    assert mapped.shape == (100, 200)
    assert mapped[2:-2, 2:-2].min() == pytest.approx(1.0)


@pytest.mark.parametrize("resolution", [64, 16])
def test_a_hot_spot_lands_on_the_same_photo_pixels(resolution):
    """A hot region drawn in network coordinates comes back where Geometry maps it, at any map resolution."""
    spec = PreprocessSpec(image_size=(64, 64), resize_mode="letterbox")
    geometry = compute_geometry((100, 200), spec)  # tall: content 32 x 64, 16 columns of border each side
    original_square = np.array([[25.0, 50.0, 75.0, 150.0]])  # network pixels 24..40 x 16..48: whole cells
    normalized = geometry.boxes_to_network(original_square)[0]
    heat = np.zeros((resolution, resolution), dtype=np.float32)
    x1, y1, x2, y2 = np.round(normalized * resolution).astype(int)
    heat[y1:y2, x1:x2] = 1.0
    mapped = heatmap_to_original(heat, geometry)
    rows, cols = np.nonzero(mapped > 0.5)
    assert cols.min() == pytest.approx(25, abs=2) and cols.max() + 1 == pytest.approx(75, abs=2)
    assert rows.min() == pytest.approx(50, abs=2) and rows.max() + 1 == pytest.approx(150, abs=2)


def test_heatmap_to_original_at_a_chosen_size():
    geometry = compute_geometry((400, 300), PreprocessSpec(image_size=(32, 32)))
    assert heatmap_to_original(np.ones((32, 32)), geometry, size=(40, 30)).shape == (30, 40)
    with pytest.raises(ValueError, match="2-D"):
        heatmap_to_original(np.ones((1, 32, 32)), geometry)


def test_fit_size():
    assert fit_size((800, 400), 384) == (384, 192)
    assert fit_size((50, 100), 384) == (192, 384)
    assert fit_size((50, 100), 384, enlarge=False) == (50, 100)


def test_overlay_colours_heat_draws_the_box_and_adds_a_caption():
    photo = Image.new("RGB", (200, 100), (128, 128, 128))
    heat = np.zeros((100, 200), dtype=np.float32)
    heat[:, 100:] = 1.0  # right half hot
    overlay = render_heatmap_overlay(
        photo, heat, caption="Audi TTS Coupe 2012 91%", box=(20, 20, 80, 80), max_side=100, alpha=0.5
    )
    assert overlay.size == (100, 50 + CAPTION_HEIGHT)
    pixels = np.asarray(overlay, dtype=int)
    cold, hot = pixels[25, 30], pixels[25, 95]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red for 1, blue for 0
    assert tuple(pixels[25, 10]) == BOX_COLOR  # left edge of the box, scaled by 100 / 200
    assert pixels[50:, :].mean() < 80  # the dark caption band


def test_shap_panels_layout_and_shape_check():
    image = np.full((20, 40, 3), 200, dtype=np.uint8)
    values = np.zeros((2, 20, 40), dtype=np.float32)
    values[0, :, :20] = 0.5
    values[1, :, 20:] = -0.5
    sheet = render_shap_panels(image, values, ["a 60%", "b 30%"], panel_side=80)
    assert sheet.height == 40 + 2 * CAPTION_HEIGHT
    assert sheet.width == 3 * 80 + 2 * 4
    pixels = np.asarray(sheet, dtype=int)
    positive, negative = pixels[20, 84 + 10], pixels[20, 168 + 70]
    assert positive[0] > positive[2] and negative[2] > negative[0]  # red raises, blue lowers
    with pytest.raises(ValueError, match="matching the image"):
        render_shap_panels(image, values[:, :10], ["a", "b"])


def test_png_files_are_written_whole(tmp_path):
    image = Image.new("RGB", (10, 10), (1, 2, 3))
    path = save_png(image, tmp_path / "sub" / "x.png")
    assert path.read_bytes() == png_bytes(image)
    assert png_bytes(image).startswith(b"\x89PNG")
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644
