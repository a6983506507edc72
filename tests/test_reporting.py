"""The shared report helpers: atomic files, figures, embedded images, boxes on thumbnails, pages."""

from __future__ import annotations

import base64
import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from jinja2 import UndefinedError
from matplotlib.figure import Figure
from PIL import Image

from carid.files import write_atomic, write_json
from carid.reporting import (
    FIGURES_DIR,
    ReportFigure,
    add_figure,
    data_uri,
    draw_boxes,
    figure_png,
    jpeg_bytes,
    page_environment,
    render_page,
    write_figures,
)

PAGES = (
    ("carid.data", "report.html"),
    ("carid.evaluation", "evaluation.html"),
    ("carid.evaluation", "compare.html"),
)


def _compare_context(**changes) -> dict:
    context = {
        "title": "Runs <b>",
        "metric": "val/acc",
        "mode": "max",
        "best": "run-a",
        "columns": ["run", "val acc"],
        "rows": [["run-a", "0.9"], ["run-<b>", "0.8"]],
        "best_index": 0,
        "notes": [("run-b", "no checkpoint")],
        "curves_uri": data_uri(b"png bytes"),
    }
    context.update(changes)
    return context


def test_write_atomic_creates_folders_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_write_json_is_indented_utf8_and_stringifies_unknown_values(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.json"
    write_json(target, {"name": "Škoda", "path": tmp_path})
    text = target.read_text(encoding="utf-8")
    assert "Škoda" in text and text.endswith("}\n") and '\n  "name"' in text
    assert json.loads(text) == {"name": "Škoda", "path": str(tmp_path)}


def test_add_figure_skips_none_and_stores_png(tmp_path: Path) -> None:
    figures: list[ReportFigure] = []
    figure = Figure(figsize=(2, 1))
    figure.add_subplot().plot([0, 1], [1, 0])
    add_figure(figures, "a.png", "A", "caption", figure)
    add_figure(figures, "b.png", "B", "caption", None)
    assert [f.name for f in figures] == ["a.png"]
    assert figures[0].data == figure_png(figure) and figures[0].data.startswith(b"\x89PNG")
    with Image.open(BytesIO(figures[0].data)) as image:
        assert image.size == (200, 100)  # 2 x 1 inches at 100 dpi


def test_write_figures_writes_and_removes_only_known_stale_files(tmp_path: Path) -> None:
    folder = tmp_path / FIGURES_DIR
    folder.mkdir()
    (folder / "old.png").write_bytes(b"stale")
    (folder / "mine.txt").write_bytes(b"not a report figure")
    figures = [ReportFigure("new.png", "New", "", b"new"), ReportFigure("grid.jpg", "Grid", "", b"jpg")]
    paths = write_figures(figures, tmp_path, known={"old.png", "new.png", "grid.jpg"})
    assert paths == {"new.png": folder / "new.png", "grid.jpg": folder / "grid.jpg"}
    assert sorted(p.name for p in folder.iterdir()) == ["grid.jpg", "mine.txt", "new.png"]
    assert (folder / "new.png").read_bytes() == b"new"


def test_data_uri_round_trips() -> None:
    uri = data_uri(b"\x00\xffabc", "image/jpeg")
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix) and base64.b64decode(uri[len(prefix) :]) == b"\x00\xffabc"
    assert ReportFigure("a.png", "A", "", b"xyz").data_uri == data_uri(b"xyz", "image/png")


def test_jpeg_bytes_converts_to_rgb() -> None:
    data = jpeg_bytes(Image.new("RGBA", (30, 20), (0, 0, 255, 255)))
    with Image.open(BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (30, 20))


def test_draw_boxes_scales_sorts_and_skips() -> None:
    image = Image.new("RGB", (50, 40), (0, 0, 0))
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    draw_boxes(
        image,
        [
            (np.array([10.0, 10.0, 40.0, 30.0]), red),  # -> x 5..20, y 10..30
            ([80.0, 30.0, 60.0, 20.0], green),  # inverted -> x 30..40, y 20..30 once sorted
            (None, blue),
            (np.array([0.0, np.nan, 10.0, 10.0]), blue),
        ],
        scale=(0.5, 1.0),
        width=1,
    )
    assert image.getpixel((5, 20)) == red and image.getpixel((20, 10)) == red
    assert image.getpixel((12, 20)) == (0, 0, 0)  # outlines only
    assert image.getpixel((30, 25)) == green and image.getpixel((40, 25)) == green
    assert blue not in {image.getpixel((x, y)) for x in range(50) for y in range(40)}


def test_every_page_extends_the_shared_base() -> None:
    for package, name in PAGES:
        environment = page_environment(package)
        source, _, _ = environment.loader.get_source(environment, name)
        assert source.startswith('{% extends "base.html" %}'), name


def test_a_page_is_self_contained_escaped_and_dated() -> None:
    html = render_page("carid.evaluation", "compare.html", **_compare_context())
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html and "max-width: 1400px" in html
    assert "<link" not in html and "<script" not in html and "http" not in html
    assert "Runs &lt;b&gt;" in html and "run-&lt;b&gt;" in html and "<b>" not in html
    assert "Generated " in html and " by carid " in html
    assert html.count('class="best"') == 1


def test_a_missing_variable_is_an_error() -> None:
    context = _compare_context()
    del context["rows"]
    with pytest.raises(UndefinedError):
        render_page("carid.evaluation", "compare.html", **context)
