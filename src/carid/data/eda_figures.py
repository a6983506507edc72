"""The distribution figures of the data report: classes, splits, image sizes, box sizes and positions.

Drawn from the widths, heights and boxes already in the table (the checks fill the sizes in), so no
image is decoded; `distribution_figures` returns them for `carid.data.eda.write_report`.
matplotlib's object API on the Agg canvas, through `carid.reporting`.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from functools import partial

import numpy as np
from matplotlib.figure import Figure

from carid.data.samples import Sample, SampleTable
from carid.reporting import ReportFigure, add_figure

MANY_CLASSES = 20  # above this, class charts become compact profiles without class names
PROFILE_HEIGHT = 2.6  # inches, of a many-class profile figure
MAX_SCATTER_POINTS = 20_000

UNASSIGNED = "no split"  # shown for samples whose split is None (e.g. excluded ones)
SPLITS_ORDER = ("train", "val", "test", UNASSIGNED)
SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868", UNASSIGNED: "#b0b0b0"}


def _class_counts_figure(table: SampleTable) -> Figure | None:
    counts = table.class_counts()
    if not counts:
        return None
    names = [name for name in table.classes if name not in counts] + list(counts)
    names = sorted(set(names), key=lambda name: (-counts[name], name))
    values = [counts[name] for name in names]
    if len(names) > MANY_CLASSES:
        return _class_profile_figure(values)
    return _bar_figure(names, {"images": values}, "images per class", colours=["#4c72b0"])


def _class_profile_figure(values: Sequence[int]) -> Figure:
    """Many classes: the sorted count profile (one thin bar per class, no names) beside a histogram
    of images per class; the page names the largest and smallest classes in a table instead."""
    figure = Figure(figsize=(11, PROFILE_HEIGHT), layout="constrained")
    profile, histogram = figure.subplots(1, 2, width_ratios=[1.6, 1])
    positions = np.arange(1, len(values) + 1)
    profile.bar(positions, values, width=1.0, color="#4c72b0")
    median = float(np.median(values))
    profile.axhline(median, color="black", linestyle="--", linewidth=1, label=f"median {median:g}")
    profile.set_xlim(0.5, len(values) + 0.5)
    profile.set_xlabel(f"class rank (1 = largest of {len(values):,})")
    profile.set_ylabel("images")
    profile.set_title("images per class, sorted")
    profile.grid(axis="y", alpha=0.3)
    profile.legend(loc="upper right", fontsize=8)
    histogram.hist(values, bins=min(30, max(5, len(set(values)))), color="#4c72b0", edgecolor="white")
    histogram.set_xlabel("images in the class")
    histogram.set_ylabel("classes")
    histogram.set_title("how many classes have how many images")
    return figure


def _bar_figure(
    names: Sequence[str], stacks: Mapping[str, Sequence[int]], value_label: str, colours: Sequence[str]
) -> Figure:
    """Bars per name, stacked by the keys of `stacks`; for many names a compact profile without the
    names (one thin bar each, in the given order), so the page stays short whatever the class count."""
    many = len(names) > MANY_CLASSES
    if many:
        figure = Figure(figsize=(11, PROFILE_HEIGHT), layout="constrained")
        axes = figure.add_subplot()
        positions = np.arange(1, len(names) + 1)
        bottom = np.zeros(len(names))
        for (label, values), colour in zip(stacks.items(), colours, strict=False):
            axes.bar(positions, values, bottom=bottom, label=label, color=colour, width=1.0)
            bottom += np.asarray(values, dtype=float)
        axes.set_xlim(0.5, len(names) + 0.5)
        axes.set_xlabel(f"class rank (1 = largest of {len(names):,})")
        axes.set_ylabel(value_label)
        axes.grid(axis="y", alpha=0.3)
    else:
        figure = Figure(figsize=(max(5.0, 0.45 * len(names) + 2), 4.5), layout="constrained")
        axes = figure.add_subplot()
        positions = np.arange(len(names))
        bottom = np.zeros(len(names))
        for (label, values), colour in zip(stacks.items(), colours, strict=False):
            axes.bar(positions, values, bottom=bottom, label=label, color=colour)
            bottom += np.asarray(values, dtype=float)
        crowded = len(names) > 5 or max(len(str(n)) for n in names) > 8  # long names would overlap
        axes.set_xticks(positions, [str(n) for n in names], rotation=45 if crowded else 0, ha="right")
        axes.set_ylabel(value_label)
        axes.grid(axis="y", alpha=0.3)
    if len(stacks) > 1:
        axes.legend(loc="upper right", ncols=len(stacks) if many else 1, fontsize=8 if many else None)
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
    figure = Figure(figsize=(10, 2.9), layout="constrained")
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
    figure = Figure(figsize=(5 * panels, 2.9), layout="constrained")
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
    figure = Figure(figsize=(10, 2.9), layout="constrained")
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


def distribution_figures(
    table: SampleTable, splits: Sequence[str] | None, rng: np.random.Generator
) -> list[ReportFigure]:
    """The figures that apply to `table` (class counts; per split when `splits` is given; sizes and
    boxes when known), in page order."""
    samples = table.samples
    figures: list[ReportFigure] = []
    add = partial(add_figure, figures)  # add(name, title, caption, figure or None)

    add(
        "class_counts.png",
        "Images per class",
        "Classes sorted by the number of images, largest first"
        + (
            "; the largest and smallest are named in the table below."
            if len(table.class_counts()) > MANY_CLASSES
            else "."
        ),
        _class_counts_figure(table),
    )
    if splits is not None and samples:
        add(
            "split_counts.png",
            "Images per split",
            "Counts per split (stacked)"
            + ("; classes sorted by their total." if len(table.class_counts()) > MANY_CLASSES else "."),
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
