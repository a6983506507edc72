"""The per-sample and per-class rules of the data checks: labels, decoded image, boxes, class counts.

Each rule turns one sample (with the facts of its opened image) or the whole table into `Problem`s;
`carid.data.checks.run_checks` applies them (the kinds and severities are listed there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from carid import boxes as box_math
from carid.config import CheckConfig
from carid.data.hashing import ImageFacts
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.data.text import has_undecodable

# Overhang (px) clipped silently: off-by-one conventions, not annotation mistakes.
BOX_TOLERANCE_PX = 1.0
# Files named in one duplicate or leakage message before "and N more".
MAX_NAMES_IN_MESSAGE = 10


def sample_problem(sample: Sample, kind: str, severity: Severity, message: str) -> Problem:
    """A problem of `sample`, naming its source and path."""
    return Problem(kind=kind, message=message, source=sample.source, severity=severity, path=str(sample.path))


def label_problems(sample: Sample, name: str, labelled: bool, known: set[str]) -> list[Problem]:
    """missing_label in a labelled dataset, unknown_class for a label not in `known`."""
    if labelled and sample.label is None:
        return [
            sample_problem(
                sample, "missing_label", Severity.ERROR, f"{name}: no class label in a labelled dataset"
            )
        ]
    if known and sample.label is not None and sample.label not in known:
        message = f"{name}: class {sample.label!r} is not one of the dataset's {len(known)} classes"
        return [sample_problem(sample, "unknown_class", Severity.ERROR, message)]
    return []


def name_problems(sample: Sample, name: str) -> list[Problem]:
    """undecodable_name: a file name (or folder name on its path) that is not valid UTF-8."""
    if not has_undecodable(str(sample.path)):
        return []
    message = (
        f"{name}: the file name is not valid UTF-8 (reports show the bytes that are not as \\xNN); "
        "tools that expect UTF-8 names may fail on it: rename it"
    )
    return [sample_problem(sample, "undecodable_name", Severity.WARNING, message)]


def image_problems(sample: Sample, facts: ImageFacts, name: str, config: CheckConfig) -> list[Problem]:
    """format_mismatch, tiny_image and size_mismatch of a decoded image."""
    problems: list[Problem] = []
    if facts.format_mismatch:
        suffix = sample.path.suffix.lower()
        expected = Image.registered_extensions().get(suffix)
        promise = f"not {expected} as its name says" if expected else f"but its name ends in {suffix}"
        problems.append(
            sample_problem(
                sample, "format_mismatch", Severity.WARNING, f"{name}: file is {facts.format}, {promise}"
            )
        )
    if min(facts.width, facts.height) < config.min_side:
        message = (
            f"{name}: {facts.width}x{facts.height} px; the shorter side is below min_side "
            f"{config.min_side} px, too small to train on"
        )
        problems.append(sample_problem(sample, "tiny_image", Severity.ERROR, message))
    claimed = (sample.width, sample.height)
    real = (facts.width, facts.height)
    if any(c is not None and c != r for c, r in zip(claimed, real, strict=True)):
        said = "x".join("?" if value is None else str(value) for value in claimed)
        hint = " (width and height swapped: EXIF orientation?)" if claimed == real[::-1] else ""
        message = (
            f"{name}: the annotation says {said} px but the image is {facts.width}x{facts.height} px{hint}; "
            "boxes were checked against the real size"
        )
        problems.append(sample_problem(sample, "size_mismatch", Severity.WARNING, message))
    return problems


def _px(value: float) -> str:
    """12.0 -> '12', 12.25 -> '12.2' (pixels in messages)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _box_text(box: np.ndarray) -> str:
    return "[" + ", ".join(_px(float(v)) for v in box) + "]"


def _unusable_box(
    box: np.ndarray, box_size: tuple[float, float], inside: tuple[float, float], size: str, min_size: float
) -> tuple[str, str] | None:
    """(kind, what is wrong) for a box that cannot be used: not finite or too small
    ("degenerate_box"), or (almost) entirely outside the image ("box_outside_image"); None otherwise.
    box_size / inside: width and height of the box and of its part inside the image, pixels."""
    if not np.all(np.isfinite(box)):
        return "degenerate_box", "has coordinates that are not finite numbers"
    if min(box_size) < min_size:
        width, height = box_size
        return (
            "degenerate_box",
            f"is degenerate: {_px(width)} x {_px(height)} px (min_box_size {_px(min_size)} px)",
        )
    if min(inside) <= 0:
        return "box_outside_image", f"lies entirely outside the {size} px image"
    if min(inside) < min_size:
        width, height = inside
        return (
            "box_outside_image",
            f"lies almost entirely outside the {size} px image (only {_px(width)} x {_px(height)} px inside)",
        )
    return None


def check_boxes(
    sample: Sample, width: int, height: int, name: str, config: CheckConfig
) -> tuple[np.ndarray, list[Problem]]:
    """Check each box against the real image size [width x height px].

    Returns (boxes [N, 4] xyxy with partly-outside boxes clipped, problems).
    """
    boxes = sample.boxes
    if len(boxes) == 0:
        return boxes, []
    repaired = boxes.copy()
    clipped = box_math.clip(boxes, width, height)
    problems: list[Problem] = []
    size = f"{width}x{height}"
    for k, box in enumerate(boxes):
        which = f"box {k + 1} of {len(boxes)} {_box_text(box)}" if len(boxes) > 1 else f"box {_box_text(box)}"
        box_w, box_h = float(box[2] - box[0]), float(box[3] - box[1])
        inside_w, inside_h = float(clipped[k, 2] - clipped[k, 0]), float(clipped[k, 3] - clipped[k, 1])
        error = _unusable_box(box, (box_w, box_h), (inside_w, inside_h), size, config.min_box_size)
        if error is not None:
            kind, text = error
            problems.append(sample_problem(sample, kind, Severity.ERROR, f"{name}: {which} {text}"))
        else:
            overhang = {
                "left": max(0.0, -float(box[0])),
                "top": max(0.0, -float(box[1])),
                "right": max(0.0, float(box[2]) - width),
                "bottom": max(0.0, float(box[3]) - height),
            }
            past = ", ".join(f"{_px(v)} px past the {side} edge" for side, v in overhang.items() if v > 0)
            clipped_text = _box_text(clipped[k])
            if box_w > width + BOX_TOLERANCE_PX or box_h > height + BOX_TOLERANCE_PX:
                message = (
                    f"{name}: {which} is {_px(box_w)} x {_px(box_h)} px, larger than the {size} px photo "
                    f"({past}); clipped to {clipped_text}"
                )
                problems.append(sample_problem(sample, "box_exceeds_photo", Severity.WARNING, message))
            elif max(overhang.values()) > BOX_TOLERANCE_PX:
                message = f"{name}: {which} extends {past} of the {size} px image; clipped to {clipped_text}"
                problems.append(sample_problem(sample, "box_partly_outside", Severity.WARNING, message))
            if max(overhang.values()) > 0:
                repaired[k] = clipped[k]
    return repaired, problems


def name_list(entries: Sequence[str]) -> str:
    """'a, b and c'; past MAX_NAMES_IN_MESSAGE entries 'a, b, ... and 12 more'."""
    more = len(entries) - MAX_NAMES_IN_MESSAGE
    if more > 0:
        return f"{', '.join(entries[:MAX_NAMES_IN_MESSAGE])} and {more} more"
    return entries[0] if len(entries) == 1 else f"{', '.join(entries[:-1])} and {entries[-1]}"


# --- classes --------------------------------------------------------------------------------


def class_names(table: SampleTable) -> list[str]:
    """`table.classes`, then any label seen in the samples that is not among them."""
    names = list(table.classes)
    listed = set(names)
    for sample in table.samples:
        if sample.label is not None and sample.label not in listed:
            names.append(sample.label)
            listed.add(sample.label)
    return names


def class_problems(table: SampleTable, config: CheckConfig) -> list[Problem]:
    """few_samples per class and class_imbalance, over the usable samples."""
    names = class_names(table)
    if not names:
        return []
    counts = table.usable().class_counts()
    source = f"{table.root} ({table.format})"
    problems = [
        Problem(
            kind="few_samples",
            message=(
                f"class {name!r} has {counts.get(name, 0)} usable sample(s), fewer than "
                f"min_per_class {config.min_per_class}"
            ),
            source=f"class {name!r}",
            severity=Severity.WARNING,
        )
        for name in names
        if counts.get(name, 0) < config.min_per_class
    ]
    present = {name: counts[name] for name in names if counts.get(name, 0) > 0}
    if len(present) >= 2:
        largest = max(present, key=present.__getitem__)
        smallest = min(present, key=present.__getitem__)
        ratio = present[largest] / present[smallest]
        if ratio > config.imbalance_ratio:
            message = (
                f"classes are imbalanced: the largest, {largest!r}, has {present[largest]} usable samples "
                f"and the smallest, {smallest!r}, {present[smallest]}: ratio {ratio:.1f} > "
                f"imbalance_ratio {config.imbalance_ratio:g}"
            )
            problems.append(Problem("class_imbalance", message, source, Severity.WARNING))
    return problems
