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

Modules: this one assembles the page (summary, facts, tables); `carid.data.eda_figures` draws the
distribution figures and `carid.data.eda_grid` the sample grid.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from carid.data.eda_figures import SPLITS_ORDER, UNASSIGNED, distribution_figures
from carid.data.eda_grid import grid_image, sample_grid
from carid.data.samples import Problem, SampleTable, Severity
from carid.data.text import file_text
from carid.files import write_atomic
from carid.reporting import (
    REPORT_NAME,
    ReportFigure,
    data_uri,
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

MAX_PROBLEM_ROWS = 500  # rows per problem kind in the full list; the rest is counted
EXAMPLES_PER_KIND = 3
MAX_VALUE_CHARS = 400  # longer check-summary values are cut
MAX_SUMMARY_MESSAGE = 220  # example messages in the summary are cut (the tables have them whole)
MAX_MAPPING_ROWS = 20  # larger check-summary mappings are shown as one row

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


# --- small helpers -----------------------------------------------------------------------------


def _severity(value: Severity | str) -> str:
    return str(value.value if isinstance(value, Severity) else value).lower()


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (plural or word + 's')}"


def _has(count: int) -> str:
    return "has" if count == 1 else "have"


def _kind_text(kind: str) -> str:
    return kind.replace("_", " ").replace("-", " ")


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


def _excluded(problems: Sequence[Problem]) -> dict[str, str]:
    """Path -> the kind of its first ERROR problem, in words (the grid marks those "excluded")."""
    errors: dict[str, str] = {}
    for problem in problems:
        if _severity(problem.severity) == "error" and problem.path and problem.path not in errors:
            errors[problem.path] = _kind_text(problem.kind)
    return errors


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
    figures = distribution_figures(table, split_names, rng)
    rows, grid_note = sample_grid(table, _excluded(problems), samples_per_class, max_classes_in_grid, seed)
    grid_picture = grid_image(rows)
    if grid_picture is not None:
        figures_for_files = [
            *figures,
            ReportFigure(
                "sample_grid.jpg", "Sample images", grid_note, jpeg_bytes(grid_picture), "image/jpeg"
            ),
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
    write_atomic(report, file_text(page).encode("utf-8"))  # a file name's non-UTF-8 bytes as \xNN
    return report
