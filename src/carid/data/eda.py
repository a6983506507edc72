"""The data report: figures and one self-contained HTML page that describe a dataset and its problems.

`write_report(table, out_dir)` writes ``out_dir/report.html`` (every figure and thumbnail embedded
as a base64 data URI, so the single file can be mailed) and the figures as PNG files in
``out_dir/figures/`` (plus ``sample_grid.jpg``, the thumbnails pasted into one image).

What it shows: a plain-language summary of what is wrong with the data (from `table.problems` and
from the table itself), dataset facts, split counts, one table per problem kind, the check results
as key/value rows, distribution figures and a grid of sample images with their boxes drawn.

It is fast on large datasets: the distributions come from the widths, heights and boxes already in
the table (the checks fill the sizes in), and only the images shown in the grid are decoded, at
reduced size (`carid.images.load_rgb(min_side=...)`). Figures, files and the page go through
`carid.reporting` (matplotlib's object API on the Agg canvas; Jinja2 with autoescaping, so file
names and messages can never inject markup; `templates/report.html` extends the shared base page).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.files import write_atomic
from carid.images import ImageError, load_rgb
from carid.reporting import (
    REPORT_NAME,
    ReportFigure,
    add_figure,
    data_uri,
    draw_boxes,
    jpeg_bytes,
    render_page,
    write_figures,
)

TEMPLATE = "report.html"  # in carid/data/templates/
# Every file write_report may put in figures/; those a run does not produce are removed, so a
# report rewritten into the same folder never sits beside figures of an earlier dataset.
FIGURE_FILES = frozenset(
    {
        "class_counts.png",
        "split_counts.png",
        "image_sizes.png",
        "image_pixels.png",
        "box_sizes.png",
        "box_centres.png",
        "boxes_per_image.png",
        "sample_grid.jpg",
    }
)

THUMB_SIZE = 160  # pixels, longer side of a grid thumbnail
GRID_COLUMNS = 8  # thumbnails per line in sample_grid.jpg
MAX_PROBLEM_ROWS = 500  # rows per problem kind in the full list; the rest is counted
EXAMPLES_PER_KIND = 3
MANY_CLASSES = 20  # above this, class bar charts are horizontal and tall
MAX_SCATTER_POINTS = 20_000
MAX_VALUE_CHARS = 400  # longer check-summary values are cut
MAX_SUMMARY_MESSAGE = 220  # example messages in the summary are cut (the tables have them whole)
MAX_MAPPING_ROWS = 20  # larger check-summary mappings are shown as one row

UNASSIGNED = "no split"  # shown for samples whose split is None (e.g. excluded ones)
SPLITS_ORDER = ("train", "val", "test", UNASSIGNED)
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
BOX_COLOURS = [(255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255)]
SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868", UNASSIGNED: "#b0b0b0"}


@dataclass(frozen=True)
class GridCell:
    """One thumbnail of the sample grid."""

    image: Image.Image
    caption: str  # file name
    source: str
    note: str | None = None  # "no box", "excluded: <kind>", "cannot read: <kind>"


@dataclass
class GridRow:
    title: str
    total: int  # images in the group (the row shows a sample of them)
    cells: list[GridCell] = field(default_factory=list)


# --- small helpers -----------------------------------------------------------------------------


def _severity(value: Severity | str) -> str:
    return str(value.value if isinstance(value, Severity) else value).lower()


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (plural or word + 's')}"


def _has(count: int) -> str:
    return "has" if count == 1 else "have"


def _kind_text(kind: str) -> str:
    return kind.replace("_", " ").replace("-", " ")


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


# --- problems ------------------------------------------------------------------------------------


def _merge_problems(table: SampleTable, check_summary: Mapping[str, Any] | None) -> list[Problem]:
    """table.problems plus any problem dicts in check_summary["problems"] not already there."""
    problems = list(table.problems)
    seen = {(p.kind, p.source, p.path, p.message) for p in problems}
    extra = (check_summary or {}).get("problems")
    if isinstance(extra, list):
        for item in extra:
            if not isinstance(item, Mapping) or "kind" not in item:
                continue
            key = (
                str(item["kind"]),
                str(item.get("source", "")),
                item.get("path"),
                str(item.get("message", "")),
            )
            if key in seen:
                continue
            seen.add(key)
            severity = _severity(item.get("severity", "error"))
            problems.append(
                Problem(
                    kind=key[0],
                    message=key[3],
                    source=key[1],
                    severity=Severity(severity) if severity in SEVERITY_ORDER else Severity.ERROR,
                    path=None if key[2] is None else str(key[2]),
                )
            )
    return problems


def _problem_kinds(problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """One entry per kind, most severe and most frequent first."""
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for problem in problems:
        by_kind[problem.kind].append(problem)
    kinds = []
    for kind, items in by_kind.items():
        severities = Counter(_severity(p.severity) for p in items)
        worst = min(severities, key=lambda s: SEVERITY_ORDER.get(s, 9))
        rows = [
            {
                "severity": _severity(p.severity),
                "source": p.source,
                "path": p.path or "",
                "message": p.message,
            }
            for p in items[:MAX_PROBLEM_ROWS]
        ]
        kinds.append(
            {
                "kind": kind,
                "title": _kind_text(kind),
                "severity": worst,
                "severities": ", ".join(f"{s}: {n}" for s, n in sorted(severities.items())),
                "mixed": len(severities) > 1,
                "count": len(items),
                "images": len({p.path for p in items if p.path}),
                "examples": rows[:EXAMPLES_PER_KIND],
                "rows": rows,
                "more": max(0, len(items) - MAX_PROBLEM_ROWS),
            }
        )
    kinds.sort(key=lambda k: (SEVERITY_ORDER.get(k["severity"], 9), -k["count"], k["kind"]))
    return kinds


def _summary_lines(table: SampleTable, problems: Sequence[Problem], kinds: list[dict[str, Any]]) -> list[str]:
    """The plain-language "what is wrong with this data" bullets."""
    lines: list[str] = []
    excluded = {p.path for p in problems if _severity(p.severity) == "error" and p.path}
    if excluded:
        error_kinds = Counter(p.kind for p in problems if _severity(p.severity) == "error" and p.path)
        detail = ", ".join(f"{_kind_text(k)} ({n:,})" for k, n in error_kinds.most_common())
        lines.append(f"{_plural(len(excluded), 'image')} excluded from training and evaluation: {detail}.")
    for kind in kinds:
        example = kind["examples"][0]
        where = example["source"] or example["path"]
        message = example["message"]
        if len(message) > MAX_SUMMARY_MESSAGE:
            message = message[: MAX_SUMMARY_MESSAGE - 3] + "..."
        lines.append(
            f"{kind['severity'].capitalize()}: {_plural(kind['count'], 'case')} of {kind['title']}, "
            f"e.g. {where}: {message}"
        )
    samples = table.samples
    if samples and table.has_boxes:
        without = sum(not s.has_box for s in samples)
        if without:
            lines.append(f"{_plural(without, 'image')} of {len(samples):,} {_has(without)} no box.")
        multi = [len(s.boxes) for s in samples if len(s.boxes) > 1]
        if multi:
            lines.append(
                f"{_plural(len(multi), 'image')} {_has(len(multi))} more than one box (up to {max(multi)})."
            )
    labelled = sum(s.label is not None for s in samples)
    if table.classes and labelled < len(samples):
        lines.append(
            f"{_plural(len(samples) - labelled, 'image')} {_has(len(samples) - labelled)} no class label."
        )
    counts = table.class_counts()
    empty = [name for name in table.classes if counts[name] == 0]
    if table.classes and empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5:,} more" if len(empty) > 5 else "")
        lines.append(
            f"{_plural(len(empty), 'class', 'classes')} in the class list "
            f"{_has(len(empty))} no images: {shown}."
        )
    unknown_size = sum(s.width is None or s.height is None for s in samples)
    if unknown_size:
        lines.append(
            f"{_plural(unknown_size, 'image')} {_has(unknown_size)} no known size "
            "(not opened yet: run the checks first); "
            "the size and box-position figures leave them out."
        )
    if not lines:
        lines.append("No problems found.")
    return lines


# --- facts and tables ----------------------------------------------------------------------------


def _facts(table: SampleTable) -> list[tuple[str, str]]:
    samples = table.samples
    counts = table.class_counts()
    facts = [
        ("Format", table.format),
        ("Root", str(table.root)),
        ("Images", f"{len(samples):,}"),
        ("Classes", f"{len(table.classes):,}" if table.classes else "none (the images have no class labels)"),
    ]
    if counts:
        smallest = min(counts, key=lambda name: (counts[name], name))
        largest = max(counts, key=lambda name: (counts[name], name))
        if counts[smallest] == counts[largest]:
            spread = f"{counts[smallest]:,} each"
        else:
            spread = (
                f"{counts[smallest]:,} ({smallest}) to {counts[largest]:,} ({largest}); "
                f"median {float(np.median(list(counts.values()))):g}"
            )
        facts.append(("Images per class", spread))
    if table.has_boxes:
        boxes = sum(len(s.boxes) for s in samples)
        with_box = sum(s.has_box for s in samples)
        facts.append(("Boxes", f"{boxes:,}"))
        facts.append(("Images with / without a box", f"{with_box:,} / {len(samples) - with_box:,}"))
    else:
        facts.append(("Boxes", "none (the dataset has no boxes)"))
    sizes = np.array([(s.width, s.height) for s in samples if s.width and s.height], dtype=np.float64)
    if len(sizes):
        facts.append(
            (
                "Image size (w x h, pixels)",
                f"median {np.median(sizes[:, 0]):g} x {np.median(sizes[:, 1]):g}; "
                f"smallest side {sizes.min():g}, largest side {sizes.max():g}",
            )
        )
    facts.append(("Problems recorded", f"{len(table.problems):,}"))
    return facts


def _split_rows(table: SampleTable, splits: Sequence[str]) -> list[dict[str, Any]]:
    names = [s for s in SPLITS_ORDER if s in set(splits)] + sorted(set(splits) - set(SPLITS_ORDER))
    total = len(splits) or 1
    rows = []
    for name in names:
        members = [s for s, split in zip(table.samples, splits, strict=True) if split == name]
        rows.append(
            {
                "split": name,
                "images": len(members),
                "share": f"{100 * len(members) / total:.1f}%",
                "with_box": sum(s.has_box for s in members),
                "classes": len({s.label for s in members if s.label is not None}),
            }
        )
    return rows


def _check_rows(check_summary: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """check_summary flattened to (dotted key, text) rows, two levels deep.

    Long values are cut to MAX_VALUE_CHARS; a mapping with more than MAX_MAPPING_ROWS entries
    (e.g. per-class counts) and every list become one row that says how many entries they hold;
    the "problems" list is only counted, since its entries are shown by kind above.
    """
    rows: list[tuple[str, str]] = []

    def cut(text: str) -> str:
        return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + " ..."

    def add(key: str, value: Any, depth: int) -> None:
        if isinstance(value, Mapping) and value and depth < 2 and len(value) <= MAX_MAPPING_ROWS:
            for child, item in value.items():
                add(f"{key}.{child}", item, depth + 1)
        elif isinstance(value, Mapping | list | tuple):
            head = list(value.items())[:20] if isinstance(value, Mapping) else list(value)[:20]
            text = json.dumps(
                dict(head) if isinstance(value, Mapping) else head, default=str, ensure_ascii=False
            )
            rows.append((key, f"{len(value):,} entries: {cut(text)}" if value else "none"))
        else:
            rows.append((key, cut(str(value))))

    for key, value in (check_summary or {}).items():
        if key == "problems" and isinstance(value, list):
            rows.append(("problems", f"{len(value):,} (listed by kind above)"))
        else:
            add(str(key), value, 0)
    return rows


# --- figures -------------------------------------------------------------------------------------


def _class_counts_figure(table: SampleTable) -> Figure | None:
    counts = table.class_counts()
    if not counts:
        return None
    names = [name for name in table.classes if name not in counts] + list(counts)
    names = sorted(set(names), key=lambda name: (-counts[name], name))
    values = [counts[name] for name in names]
    return _bar_figure(names, {"images": values}, "images per class", colours=["#4c72b0"])


def _bar_figure(
    names: Sequence[str], stacks: Mapping[str, Sequence[int]], value_label: str, colours: Sequence[str]
) -> Figure:
    """Bars per name, stacked by the keys of `stacks`; horizontal and tall for many names."""
    many = len(names) > MANY_CLASSES
    if many:
        figure = Figure(figsize=(8.5, max(4.0, 0.16 * len(names) + 1.2)), layout="constrained")
        axes = figure.add_subplot()
        positions = np.arange(len(names))
        left = np.zeros(len(names))
        for (label, values), colour in zip(stacks.items(), colours, strict=False):
            axes.barh(positions, values, left=left, label=label, color=colour, height=0.8)
            left += np.asarray(values, dtype=float)
        axes.set_yticks(positions, [str(n) for n in names], fontsize=6)
        axes.set_ylim(len(names) - 0.5, -0.5)  # largest at the top
        axes.set_xlabel(value_label)
        axes.tick_params(axis="x", top=True, labeltop=True)  # the scale is readable at both ends
        axes.grid(axis="x", alpha=0.3)
    else:
        figure = Figure(figsize=(max(5.0, 0.45 * len(names) + 2), 4.5), layout="constrained")
        axes = figure.add_subplot()
        positions = np.arange(len(names))
        bottom = np.zeros(len(names))
        for (label, values), colour in zip(stacks.items(), colours, strict=False):
            axes.bar(positions, values, bottom=bottom, label=label, color=colour)
            bottom += np.asarray(values, dtype=float)
        axes.set_xticks(positions, [str(n) for n in names], rotation=45 if len(names) > 5 else 0, ha="right")
        axes.set_ylabel(value_label)
        axes.grid(axis="y", alpha=0.3)
    if len(stacks) > 1:
        axes.legend(loc="lower right" if many else "upper right")
    return figure


def _split_figure(table: SampleTable, splits: Sequence[str]) -> Figure:
    order = [s for s in SPLITS_ORDER if s in set(splits)] + sorted(set(splits) - set(SPLITS_ORDER))
    colours = [SPLIT_COLOURS.get(s, "#999999") for s in order]
    if table.class_counts():
        per_class: dict[str, Counter[str]] = defaultdict(Counter)
        for sample, split in zip(table.samples, splits, strict=True):
            if sample.label is not None:
                per_class[sample.label][split] += 1
        names = sorted(per_class, key=lambda name: (-sum(per_class[name].values()), name))
        stacks = {split: [per_class[name][split] for name in names] for split in order}
        return _bar_figure(names, stacks, "images per class and split", colours)
    groups = ["with box", "no box"] if table.has_boxes else ["images"]
    per_group: dict[str, Counter[str]] = defaultdict(Counter)
    for sample, split in zip(table.samples, splits, strict=True):
        group = "images" if not table.has_boxes else ("with box" if sample.has_box else "no box")
        per_group[split][group] += 1
    stacks = {group: [per_group[split][group] for split in order] for group in groups}
    return _bar_figure(order, stacks, "images per split", ["#4c72b0", "#c44e52"])


def _subsample(rng: np.random.Generator, array: np.ndarray) -> np.ndarray:
    if len(array) <= MAX_SCATTER_POINTS:
        return array
    return array[rng.choice(len(array), MAX_SCATTER_POINTS, replace=False)]


def _size_figure(sizes: np.ndarray, rng: np.random.Generator) -> Figure:
    """sizes: [N, 2] width, height in pixels."""
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    scatter, histogram = figure.subplots(1, 2)
    shown = _subsample(rng, sizes)
    scatter.scatter(shown[:, 0], shown[:, 1], s=6, alpha=0.35, color="#4c72b0", edgecolors="none")
    scatter.set_xlabel("width (px)")
    scatter.set_ylabel("height (px)")
    scatter.set_title("image width vs height")
    scatter.grid(alpha=0.3)
    histogram.hist(sizes[:, 0] / sizes[:, 1], bins=40, color="#4c72b0")
    histogram.set_xlabel("aspect ratio (width / height)")
    histogram.set_ylabel("images")
    histogram.set_title("aspect ratio")
    return figure


def _pixels_figure(sizes: np.ndarray, file_kb: np.ndarray) -> Figure:
    """sizes: [N, 2] width, height in pixels; file_kb: [M] file sizes in kB."""
    panels = 2 if len(file_kb) else 1
    figure = Figure(figsize=(5 * panels, 4.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, panels))
    axes[0].hist(sizes[:, 0] * sizes[:, 1] / 1e6, bins=40, color="#55a868")
    axes[0].set_xlabel("megapixels")
    axes[0].set_ylabel("images")
    axes[0].set_title("image resolution")
    if panels == 2:
        axes[1].hist(file_kb, bins=40, color="#8172b3")
        axes[1].set_xlabel("file size (kB)")
        axes[1].set_ylabel("images")
        axes[1].set_title("file size")
    return figure


def _relative_boxes(samples: Sequence[Sample]) -> np.ndarray:
    """[B, 4] boxes of the samples with a known size, as fractions of the image (x1, y1, x2, y2)."""
    parts = [
        s.boxes / np.array([s.width, s.height, s.width, s.height], dtype=np.float64)
        for s in samples
        if s.has_box and s.width and s.height
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 4))


def _box_size_figure(relative: np.ndarray, rng: np.random.Generator) -> Figure:
    widths = np.clip(relative[:, 2] - relative[:, 0], 0, 1)
    heights = np.clip(relative[:, 3] - relative[:, 1], 0, 1)
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    histogram, scatter = figure.subplots(1, 2)
    areas = widths * heights
    histogram.hist(areas, bins=40, range=(0, max(float(areas.max()), 1e-3) * 1.02), color="#c44e52")
    histogram.set_xlabel("box area / image area")
    histogram.set_ylabel("boxes")
    histogram.set_title("relative box area")
    points = _subsample(rng, np.stack([widths, heights], axis=1))
    scatter.scatter(points[:, 0], points[:, 1], s=6, alpha=0.35, color="#c44e52", edgecolors="none")
    scatter.set_xlim(0, 1)
    scatter.set_ylim(0, 1)
    scatter.set_aspect("equal")
    scatter.set_xlabel("box width / image width")
    scatter.set_ylabel("box height / image height")
    scatter.set_title("box width vs height")
    scatter.grid(alpha=0.3)
    return figure


def _box_centre_figure(relative: np.ndarray) -> Figure:
    centres_x = np.clip((relative[:, 0] + relative[:, 2]) / 2, 0, 1)
    centres_y = np.clip((relative[:, 1] + relative[:, 3]) / 2, 0, 1)
    heat, _, _ = np.histogram2d(centres_y, centres_x, bins=20, range=[[0, 1], [0, 1]])
    figure = Figure(figsize=(5.6, 4.6), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(heat, extent=(0, 1, 1, 0), cmap="magma", interpolation="nearest", aspect="equal")
    figure.colorbar(image, ax=axes, label="boxes")
    axes.set_xlabel("box centre x / image width")
    axes.set_ylabel("box centre y / image height (0 = top)")
    axes.set_title("where the boxes are")
    return figure


def _boxes_per_image_figure(samples: Sequence[Sample]) -> Figure:
    counts = Counter(len(s.boxes) for s in samples)
    values = list(range(max(counts) + 1))
    figure = Figure(figsize=(max(4.5, 0.5 * len(values) + 2), 3.8), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(values, [counts[v] for v in values], color="#937860")
    axes.set_xticks(values)
    axes.set_xlabel("boxes in the image")
    axes.set_ylabel("images")
    axes.grid(axis="y", alpha=0.3)
    return figure


def _file_sizes_kb(samples: Sequence[Sample]) -> np.ndarray:
    sizes = []
    for sample in samples:
        try:
            sizes.append(os.stat(sample.path).st_size / 1024)
        except OSError:
            continue
    return np.asarray(sizes, dtype=np.float64)


def _figures(
    table: SampleTable, splits: Sequence[str] | None, rng: np.random.Generator
) -> list[ReportFigure]:
    samples = table.samples
    figures: list[ReportFigure] = []
    add = partial(add_figure, figures)  # add(name, title, caption, figure or None)

    add(
        "class_counts.png",
        "Images per class",
        "Classes sorted by the number of images, largest first.",
        _class_counts_figure(table),
    )
    if splits is not None and samples:
        add(
            "split_counts.png",
            "Images per split",
            "Counts per split (stacked).",
            _split_figure(table, splits),
        )
    sizes = np.array([(s.width, s.height) for s in samples if s.width and s.height], dtype=np.float64)
    if len(sizes):
        caption = f"{len(sizes):,} images with a known size."
        add("image_sizes.png", "Image sizes", caption, _size_figure(sizes, rng))
        add(
            "image_pixels.png",
            "Resolution and file size",
            caption,
            _pixels_figure(sizes, _file_sizes_kb(samples)),
        )
    if table.has_boxes:
        relative = _relative_boxes(samples)
        if len(relative):
            caption = f"{len(relative):,} boxes in images with a known size, in fractions of the image."
            add("box_sizes.png", "Box sizes", caption, _box_size_figure(relative, rng))
            add(
                "box_centres.png",
                "Box positions",
                "Heat map of box centres; top of the image at the top.",
                _box_centre_figure(relative),
            )
        add(
            "boxes_per_image.png",
            "Boxes per image",
            "0 = images without a box.",
            _boxes_per_image_figure(samples),
        )
    return figures


# --- sample grid ---------------------------------------------------------------------------------


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


def _thumbnail(sample: Sample, mark_no_box: bool, error_kind: str | None) -> GridCell:
    """A ~THUMB_SIZE px thumbnail with the boxes drawn; a placeholder naming the error if unreadable."""
    try:
        known_size = bool(sample.width and sample.height)
        image = load_rgb(sample.path, min_side=THUMB_SIZE if known_size else None)
        original_width = sample.width if known_size else image.width
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    except ImageError as exc:
        return GridCell(
            _placeholder(f"cannot read: {exc.reason}"),
            sample.path.name,
            sample.source,
            f"cannot read: {exc.kind}",
        )
    except Exception as exc:  # a report must not stop at one odd file, whatever Pillow raises
        return GridCell(_placeholder(f"cannot read: {exc}"), sample.path.name, sample.source, "cannot read")
    factor = image.width / float(original_width)
    colours = [BOX_COLOURS[i % len(BOX_COLOURS)] for i in range(len(sample.boxes))]
    draw_boxes(image, zip(sample.boxes, colours, strict=True), scale=(factor, factor))
    note = None
    if error_kind:
        note = f"excluded: {_kind_text(error_kind)}"
        _label(image, "excluded", (180, 0, 0))
    elif mark_no_box and not sample.has_box:
        note = "no box"
        _label(image, "no box")
    return GridCell(image, sample.path.name, sample.source, note)


def _pick(samples: Sequence[Sample], count: int, rng: np.random.Generator) -> list[Sample]:
    ordered = sorted(samples, key=lambda s: str(s.path))
    if len(ordered) <= count:
        return ordered
    chosen = sorted(int(i) for i in rng.choice(len(ordered), count, replace=False))
    return [ordered[i] for i in chosen]


def _grid(
    table: SampleTable, problems: Sequence[Problem], samples_per_class: int, max_classes: int, seed: int
) -> tuple[list[GridRow], str]:
    """Rows of sampled thumbnails and a note saying what the grid shows."""
    rng = np.random.default_rng(seed)
    errors = {}
    for problem in problems:
        if _severity(problem.severity) == "error" and problem.path and problem.path not in errors:
            errors[problem.path] = problem.kind
    samples = table.samples
    counts = table.class_counts()
    groups: list[tuple[str, list[Sample]]] = []
    if counts:
        by_label: dict[str, list[Sample]] = defaultdict(list)
        for sample in samples:
            by_label[sample.label if sample.label is not None else ""].append(sample)
        order = {name: i for i, name in enumerate(table.classes)}
        names = sorted(counts, key=lambda name: (-counts[name], order.get(name, len(order)), name))
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
            row.cells.append(_thumbnail(sample, table.has_boxes, errors.get(str(sample.path))))
        rows.append(row)
    return rows, note + " Boxes are drawn in colour."


def _grid_image(rows: Sequence[GridRow]) -> Image.Image | None:
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


# --- the page ------------------------------------------------------------------------------------


def write_report(
    table: SampleTable,
    out_dir: Path | str,
    splits: Sequence[str | None] | None = None,
    check_summary: Mapping[str, Any] | None = None,
    title: str | None = None,
    samples_per_class: int = 4,
    max_classes_in_grid: int = 48,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/figures/*``; returns the path of the HTML file.

    table: the dataset, with width/height filled in where known and every problem found so far
        in `table.problems` (the report shows all samples, including excluded ones).
    splits: one of "train"/"val"/"test" per sample (aligned with table.samples), optional;
        None for a sample in no split (e.g. one excluded by the checks).
    check_summary: the JSON-ready dict of the checks; shown as key/value rows; problem dicts in
        its "problems" list are merged with table.problems.
    samples_per_class / max_classes_in_grid: size of the sample grid (largest classes first).
    seed: which images the grid shows.
    """
    out_dir = Path(out_dir)
    if splits is not None and len(splits) != len(table.samples):
        raise ValueError(f"{len(splits)} split values for {len(table.samples)} samples")
    split_names = None if splits is None else [split or UNASSIGNED for split in splits]
    rng = np.random.default_rng(seed)
    problems = _merge_problems(table, check_summary)
    kinds = _problem_kinds(problems)
    figures = _figures(table, split_names, rng)
    rows, grid_note = _grid(table, problems, samples_per_class, max_classes_in_grid, seed)
    grid_image = _grid_image(rows)
    if grid_image is not None:
        figures_for_files = [
            *figures,
            ReportFigure("sample_grid.jpg", "Sample images", grid_note, jpeg_bytes(grid_image), "image/jpeg"),
        ]
    else:
        figures_for_files = figures
    write_figures(figures_for_files, out_dir, known=FIGURE_FILES)
    grid = [
        {
            "title": row.title,
            "total": row.total,
            "cells": [
                {
                    "uri": data_uri(jpeg_bytes(cell.image), "image/jpeg"),
                    "caption": cell.caption,
                    "source": cell.source,
                    "note": cell.note,
                }
                for cell in row.cells
            ],
        }
        for row in rows
    ]
    page = render_page(
        "carid.data",
        TEMPLATE,
        title=title or f"Data report: {table.root.name or table.root}",
        summary=_summary_lines(table, problems, kinds),
        facts=_facts(table),
        split_rows=_split_rows(table, split_names) if split_names is not None else [],
        has_boxes=table.has_boxes,
        kinds=kinds,
        max_rows=MAX_PROBLEM_ROWS,
        check_rows=_check_rows(check_summary),
        figures=figures,
        grid=grid,
        grid_note=grid_note,
    )
    report = out_dir / REPORT_NAME
    write_atomic(report, page.encode("utf-8"))
    return report
