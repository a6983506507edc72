"""The sample grid of the data report: thumbnails per class (or with / without box), boxes drawn.

Only the images shown are decoded, at reduced size (`carid.images.load_rgb(min_side=...)`); a file
that cannot be read becomes a placeholder naming the error. `sample_grid` picks and draws the
rows, `grid_image` pastes them into one picture (``sample_grid.jpg``). With more than
`MANY_CLASSES` classes the grid is one gallery row of one image per class, captioned with the
class, so the page stays short.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from carid.data.eda_figures import MANY_CLASSES
from carid.data.samples import Sample, SampleTable
from carid.data.text import file_text
from carid.images import ImageError, load_rgb
from carid.reporting import draw_boxes

THUMB_SIZE = 160  # pixels, longer side of a grid thumbnail
GRID_COLUMNS = 8  # thumbnails per line in sample_grid.jpg
BOX_COLOURS = [(255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255)]


@dataclass(frozen=True)
class GridCell:
    """One thumbnail of the sample grid."""

    image: Image.Image
    caption: str  # file name
    source: str
    note: str | None = None  # "no box", "excluded: <kind>", "cannot read: <kind>"


@dataclass
class GridRow:
    """One titled row of the sample grid (a class, or images with / without a box)."""

    title: str
    total: int  # images in the group (the row shows a sample of them)
    cells: list[GridCell] = field(default_factory=list)
    gallery: bool = False  # one image per class, each captioned with its class


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _placeholder(text: str, size: int = THUMB_SIZE) -> Image.Image:
    tile = Image.new("RGB", (size, size * 3 // 4), (90, 90, 90))
    draw = ImageDraw.Draw(tile)
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if len(candidate) > 24 and line:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    draw.multiline_text((6, 6), "\n".join(lines[:7]), fill=(255, 255, 255), font=_font(11))
    return tile


def _label(image: Image.Image, text: str, colour: tuple[int, int, int] = (0, 0, 0)) -> None:
    draw = ImageDraw.Draw(image)
    font = _font(11)
    left, top, right, bottom = draw.textbbox((4, 3), text, font=font)
    draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=colour)
    draw.text((4, 3), text, fill=(255, 255, 255), font=font)


def _thumbnail(sample: Sample, mark_no_box: bool, excluded: str | None) -> GridCell:
    """A ~THUMB_SIZE px thumbnail with the boxes drawn; a placeholder naming the error if unreadable."""
    try:
        known_size = bool(sample.width and sample.height)
        image = load_rgb(sample.path, min_side=THUMB_SIZE if known_size else None)
        original_width = sample.width if known_size else image.width
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    except ImageError as exc:
        return GridCell(
            _placeholder(f"cannot read: {exc.reason}"),
            file_text(sample.path.name),
            sample.source,
            f"cannot read: {exc.kind}",
        )
    except Exception as exc:  # a report must not stop at one odd file, whatever Pillow raises
        return GridCell(
            _placeholder(f"cannot read: {exc}"), file_text(sample.path.name), sample.source, "cannot read"
        )
    factor = image.width / float(original_width)
    colours = [BOX_COLOURS[i % len(BOX_COLOURS)] for i in range(len(sample.boxes))]
    draw_boxes(image, zip(sample.boxes, colours, strict=True), scale=(factor, factor))
    note = None
    if excluded:
        note = f"excluded: {excluded}"
        _label(image, "excluded", (180, 0, 0))
    elif mark_no_box and not sample.has_box:
        note = "no box"
        _label(image, "no box")
    return GridCell(image, file_text(sample.path.name), sample.source, note)


def _pick(samples: Sequence[Sample], count: int, rng: np.random.Generator) -> list[Sample]:
    ordered = sorted(samples, key=lambda s: str(s.path))
    if len(ordered) <= count:
        return ordered
    chosen = sorted(int(i) for i in rng.choice(len(ordered), count, replace=False))
    return [ordered[i] for i in chosen]


def sample_grid(
    table: SampleTable, excluded: Mapping[str, str], samples_per_class: int, max_classes: int, seed: int
) -> tuple[list[GridRow], str]:
    """Rows of sampled thumbnails and a note saying what the grid shows.

    excluded: path -> why the sample is excluded, in words (its first ERROR problem's kind); those
        thumbnails are marked "excluded".
    """
    rng = np.random.default_rng(seed)
    samples = table.samples
    counts = table.class_counts()
    groups: list[tuple[str, list[Sample]]] = []
    if counts:
        by_label: dict[str, list[Sample]] = defaultdict(list)
        for sample in samples:
            by_label[sample.label if sample.label is not None else ""].append(sample)
        order = {name: i for i, name in enumerate(table.classes)}
        names = sorted(counts, key=lambda name: (-counts[name], order.get(name, len(order)), name))
        if len(counts) > MANY_CLASSES:  # a gallery: one image per class, named by its class
            shown = names[:max_classes]
            row = GridRow(
                f"One image of each of {len(shown):,} classes", sum(counts[n] for n in shown), gallery=True
            )
            for name in shown:
                sample = _pick(by_label[name], 1, rng)[0]
                cell = _thumbnail(sample, table.has_boxes, excluded.get(str(sample.path)))
                row.cells.append(replace(cell, caption=name, source=f"{cell.caption}: {cell.source}"))
            which = f"{len(shown):,} largest of {len(counts):,}" if len(counts) > len(shown) else "all"
            note = (
                f"One random image of each of the {which} classes, its class under it (hover for the file)."
            )
            return [row], note + " Boxes are drawn in colour."
        groups = [(name, by_label[name]) for name in names[:max_classes]]
        if "" in by_label and len(groups) < max_classes:
            groups.append(("(no class label)", by_label[""]))
        per_group = samples_per_class
        if len(counts) > max_classes:
            note = (
                f"Showing the {max_classes} largest of {len(counts)} classes, "
                f"{samples_per_class} random images each."
            )
        else:
            note = f"{samples_per_class} random images per class."
    else:
        per_group = samples_per_class * 3
        if table.has_boxes:
            groups = [
                ("with box", [s for s in samples if s.has_box]),
                ("no box", [s for s in samples if not s.has_box]),
            ]
            groups = [(title, members) for title, members in groups if members]
        elif samples:
            groups = [("random images", list(samples))]
        note = "The images have no class labels: random images, with and without boxes."
    rows = []
    for title, members in groups:
        row = GridRow(title, len(members))
        for sample in _pick(members, per_group, rng):
            row.cells.append(_thumbnail(sample, table.has_boxes, excluded.get(str(sample.path))))
        rows.append(row)
    return rows, note + " Boxes are drawn in colour."


def grid_image(rows: Sequence[GridRow]) -> Image.Image | None:
    """All thumbnails in one image: a title band per row, then its tiles with file names."""
    if not rows:
        return None
    title_height, caption_height, gap = 18, 14, 4
    columns = min(GRID_COLUMNS, max((len(row.cells) for row in rows), default=0)) or 1
    tile = THUMB_SIZE + caption_height
    width = columns * (THUMB_SIZE + gap) + gap
    lines = [max(1, -(-len(row.cells) // columns)) for row in rows]
    height = sum(title_height + line_count * (tile + gap) for line_count in lines) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    y = gap
    for row in rows:
        draw.text((gap, y + 2), f"{row.title} ({row.total:,})", fill=(0, 0, 0), font=font)
        y += title_height
        for index, cell in enumerate(row.cells):
            if index and index % columns == 0:
                y += tile + gap
            x = gap + (index % columns) * (THUMB_SIZE + gap)
            canvas.paste(
                cell.image,
                (x + (THUMB_SIZE - cell.image.width) // 2, y + (THUMB_SIZE - cell.image.height) // 2),
            )
            caption = cell.caption if len(cell.caption) <= 26 else cell.caption[:23] + "..."
            draw.text((x, y + THUMB_SIZE + 1), caption, fill=(60, 60, 60), font=font)
        y += tile + gap
    return canvas
