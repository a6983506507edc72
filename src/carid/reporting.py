"""Shared pieces of carid's self-contained HTML reports (data report, evaluation, run comparison).

- files: `write_atomic` (temporary name, then rename), `write_json`, `write_figures` (a report's
  figures/ folder, stale figures of an earlier report removed);
- images: `ReportFigure` (one figure of a page) and `add_figure`, `figure_png` (matplotlib figure
  -> PNG bytes), `jpeg_bytes`, `data_uri` (bytes -> a base64 `data:` URI, so a page embeds its
  images and can be mailed as one file), `draw_boxes` (outline xyxy boxes on a thumbnail);
- pages: `render_page` renders a package's ``templates/<name>.html`` with Jinja2 (autoescaping, so
  class names, file names and messages can never inject markup; a missing variable is an error).
  The pages extend ``base.html`` of this module's own ``templates/`` folder, which holds the
  ``<head>`` and the CSS they share (inline: no external assets), and import the table and figure
  macros of ``macros.html`` there.

Figures use matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined
from PIL import Image, ImageDraw

from carid import __version__
from carid.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_NAME = "report.html"
FIGURES_DIR = "figures"
TEMPLATES_DIR = "templates"
DPI = 100  # of every report figure
JPEG_QUALITY = 85

RGB = tuple[int, int, int]


# --- files ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFigure:
    """One figure of a report: its file name in figures/, title, caption and PNG/JPEG bytes."""

    name: str
    title: str
    caption: str
    data: bytes
    mime: str = "image/png"

    @property
    def data_uri(self) -> str:
        return data_uri(self.data, self.mime)


def add_figure(
    figures: list[ReportFigure], name: str, title: str, caption: str, figure: Figure | None
) -> None:
    """Append `figure` to `figures` as a PNG `ReportFigure`; skip None (a figure the data cannot give)."""
    if figure is not None:
        figures.append(ReportFigure(name, title, caption, figure_png(figure)))


def write_figures(
    figures: Sequence[ReportFigure], out_dir: Path, known: Iterable[str] = ()
) -> dict[str, Path]:
    """Write each figure to ``out_dir/figures/<name>`` and remove the `known` file names of figures/
    that this report does not produce (so no figure of an earlier report stays beside it).

    Returns {figure name: path written}, in the order of `figures`.
    """
    folder = out_dir / FIGURES_DIR
    paths: dict[str, Path] = {}
    for figure in figures:
        paths[figure.name] = folder / figure.name
        write_atomic(paths[figure.name], figure.data)
    for stale in set(known) - set(paths):
        (folder / stale).unlink(missing_ok=True)
    return paths


# --- images --------------------------------------------------------------------------------------


def figure_png(figure: Figure, dpi: int = DPI) -> bytes:
    """PNG bytes of a matplotlib figure (Agg canvas)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of a PIL image (converted to RGB first when it is not)."""
    buffer = io.BytesIO()
    (image if image.mode == "RGB" else image.convert("RGB")).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...``: the bytes embedded in a page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def draw_boxes(
    image: Image.Image,
    boxes: Iterable[tuple[np.ndarray | Sequence[float] | None, RGB]],
    scale: tuple[float, float] = (1.0, 1.0),
    width: int = 2,
) -> None:
    """Outline boxes on `image` in place.

    boxes: (box, colour) pairs; a box is [4] xyxy in the photo's pixels, multiplied by
        scale = (x factor, y factor) to land on `image` (a thumbnail of the photo). None and
        boxes with a non-finite value are skipped; an inverted box (x2 < x1, bad data) is drawn too.
    """
    draw = ImageDraw.Draw(image)
    scale_x, scale_y = scale
    for box, colour in boxes:
        if box is None or not np.all(np.isfinite(box)):
            continue
        x1, y1, x2, y2 = (float(value) for value in np.asarray(box, dtype=np.float64).reshape(4))
        x1, x2 = sorted((x1 * scale_x, x2 * scale_x))
        y1, y2 = sorted((y1 * scale_y, y2 * scale_y))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)


# --- pages ---------------------------------------------------------------------------------------


def page_environment(package: str) -> Environment:
    """Jinja2 with `package`'s templates/ folder first, then the shared one (base.html)."""
    loader = ChoiceLoader([PackageLoader(package, TEMPLATES_DIR), PackageLoader("carid", TEMPLATES_DIR)])
    return Environment(
        loader=loader, autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )


def render_page(package: str, template: str, **context: Any) -> str:
    """Render ``<package>/templates/<template>`` (e.g. "carid.evaluation", "compare.html").

    `generated` (UTC time) and `version` (carid's) are supplied; every other variable the template
    uses must be in `context` (a missing one raises `jinja2.UndefinedError`).
    """
    return (
        page_environment(package)
        .get_template(template)
        .render(generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=__version__, **context)
    )
