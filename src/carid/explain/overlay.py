"""Pictures of explanations: heat maps mapped back onto the original photo, overlays, SHAP panels, PNGs.

Everything here is NumPy + Pillow (+ matplotlib's colormaps only, no pyplot, so no backend is ever
selected): the pictures are drawn pixel by pixel with Pillow, which gives exact sizes, needs no
figure/backend state and is safe in a web server.

Geometry: a heat map computed at the network input [h, w] covers the letterbox border too.
`heatmap_to_original` cuts out the region where the photo sits (`Geometry`: scale and padding) and
resizes it to the photo's pixels, so the heat lines up with the photo for stretch and letterbox
alike.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from carid import boxes as box_math
from carid.files import write_atomic
from carid.preprocess import Geometry

OVERLAY_MAX_SIDE = 384
SHAP_PANEL_SIDE = 192
CAPTION_HEIGHT = 20
HEAT_ALPHA = 0.45
BOX_COLOR = (0, 255, 0)
SHAP_POSITIVE = (255, 13, 87)  # shap's red: pushes the class score up
SHAP_NEGATIVE = (30, 136, 229)  # shap's blue: pushes it down


def heatmap_to_original(
    network_heatmap: np.ndarray, geometry: Geometry, size: tuple[int, int] | None = None
) -> np.ndarray:
    """A heat map over the network input [h, w] -> the same heat over the original photo [H, W].

    The photo's region of the network input (without letterbox border) is cut out and resized
    (bilinear) to `size` = (width, height), default the original photo size. The map may have any
    resolution: it is taken to span the whole network input. Returns float32 [H, W], values kept.
    """
    heat = np.ascontiguousarray(network_heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heat map must be 2-D [h, w], got shape {heat.shape}")
    width, height = size or (geometry.original_width, geometry.original_height)
    per_x = heat.shape[1] / geometry.network_width  # heat-map cells per network pixel
    per_y = heat.shape[0] / geometry.network_height
    region = (
        geometry.pad_left * per_x,
        geometry.pad_top * per_y,
        (geometry.pad_left + geometry.original_width * geometry.scale_x) * per_x,
        (geometry.pad_top + geometry.original_height * geometry.scale_y) * per_y,
    )
    resized = Image.fromarray(heat).resize((int(width), int(height)), Image.Resampling.BILINEAR, box=region)
    return np.asarray(resized, dtype=np.float32)


def fit_size(size: tuple[int, int], max_side: int, enlarge: bool = True) -> tuple[int, int]:
    """(width, height) scaled so the longer side is `max_side` (smaller sizes kept when not `enlarge`)."""
    width, height = size
    factor = max_side / max(width, height)
    if not enlarge:
        factor = min(1.0, factor)
    return max(1, round(width * factor)), max(1, round(height * factor))


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Heat [H, W] in [0, 1] -> uint8 RGB [H, W, 3] through a matplotlib colormap."""
    rgba = colormaps[colormap](np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def _font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the small bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def add_caption(image: Image.Image, caption: str, height: int = CAPTION_HEIGHT) -> Image.Image:
    """The image with a dark band of `height` pixels below it holding `caption` (cut to fit)."""
    framed = Image.new("RGB", (image.width, image.height + height), (20, 20, 20))
    framed.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(framed)
    font = _font(max(9, height - 7))
    text = _fit_text(draw, caption, font, image.width - 8)
    draw.text((4, image.height + height / 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    return framed


def render_heatmap_overlay(
    photo: Image.Image,
    heatmap: np.ndarray,
    caption: str = "",
    box: Sequence[float] | None = None,
    original_size: tuple[int, int] | None = None,
    max_side: int = OVERLAY_MAX_SIDE,
    alpha: float = HEAT_ALPHA,
    colormap: str = "jet",
    box_color: tuple[int, int, int] = BOX_COLOR,
) -> Image.Image:
    """The photo with the heat map blended over it, the box drawn and a caption band below.

    photo: the RGB photo (any decode size: it is resized so its longer side is `max_side`).
    heatmap: float [H, W] in [0, 1] over the photo frame (any resolution; resized to the overlay).
    box: xyxy in original photo pixels, or None; drawn in `box_color` (default green, the predicted box).
    original_size: (width, height) of the frame `box` is given in; default the photo's size.
    """
    size = fit_size(photo.size, max_side)
    base = np.asarray(photo.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    heat = np.asarray(
        Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32)).resize(
            size, Image.Resampling.BILINEAR
        ),
        dtype=np.float32,
    )
    colors = colorize(heat, colormap).astype(np.float32)
    blended = Image.fromarray(np.clip(base * (1 - alpha) + colors * alpha + 0.5, 0, 255).astype(np.uint8))
    if box is not None:
        frame_w, frame_h = original_size or photo.size
        scaled = box_math.scale(box, size[0] / frame_w, size[1] / frame_h)
        x1, y1, x2, y2 = box_math.clip(scaled, size[0] - 1, size[1] - 1)[0]
        ImageDraw.Draw(blended).rectangle((x1, y1, x2, y2), outline=box_color, width=2)
    return add_caption(blended, caption) if caption else blended


def render_shap_panels(
    image: np.ndarray,
    values: np.ndarray,
    titles: Sequence[str],
    panel_side: int = SHAP_PANEL_SIDE,
    frame_size: tuple[int, int] | None = None,
    footer: str = "SHAP: red raises the class probability, blue lowers it",
) -> Image.Image:
    """The photo and one panel per explained class, side by side, like `shap.image_plot`.

    image: uint8 RGB [h, w, 3], the image the values belong to.
    values: float [k, h, w] SHAP values per pixel (summed over RGB), one map per class.
    titles: k captions (class and probability). Each class panel shows the photo in light grey with
    red (positive) / blue (negative) drawn with opacity |value| / max|value| over all k maps, so
    the panels share one colour scale, given in the footer (probability per pixel).
    frame_size: (width, height) of the photo the image shows, so a stretched network image is drawn
    with the photo's aspect ratio; default the image's own size.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 3 or values.shape[1:] != image.shape[:2] or len(titles) != values.shape[0]:
        raise ValueError(
            f"SHAP panels need values [k, h, w] matching the image {image.shape[:2]} and k titles; "
            f"got {values.shape} and {len(titles)} titles"
        )
    size = fit_size(frame_size or (image.shape[1], image.shape[0]), panel_side)
    photo = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    grey = np.asarray(photo.convert("L"), dtype=np.float32)[..., None]
    background = 255.0 - 0.35 * (255.0 - grey)  # a faded grey photo, as shap.image_plot shows it
    scale = float(np.abs(values).max()) or 1.0
    panels = [add_caption(photo, "photo")]
    for value_map, title in zip(values, titles, strict=True):
        resized_image = Image.fromarray(np.ascontiguousarray(value_map)).resize(
            size, Image.Resampling.BILINEAR
        )
        resized = np.asarray(resized_image, dtype=np.float32)
        opacity = np.clip(np.abs(resized) / scale, 0.0, 1.0)[..., None]
        color = np.where(resized[..., None] >= 0, SHAP_POSITIVE, SHAP_NEGATIVE).astype(np.float32)
        pixels = background * (1 - opacity) + color * opacity
        panels.append(add_caption(Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)), title))
    gap = 4
    width = sum(panel.width for panel in panels) + gap * (len(panels) - 1)
    sheet = Image.new("RGB", (width, panels[0].height), (255, 255, 255))
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + gap
    return add_caption(sheet, f"{footer} (colour scale ±{scale:.2g} per pixel)")


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG file bytes (optimized), e.g. for an HTTP response."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path) -> Path:
    """Write the image as a PNG atomically (temporary file in the same folder, then rename)."""
    return write_atomic(path, png_bytes(image))
