"""The data report: figures and one self-contained HTML page that describe a dataset and its problems.

`write_report(table, out_dir)` writes ``out_dir/report.html`` (every figure and thumbnail embedded
as a base64 data URI, so the single file can be mailed) and the figures as PNG files in
``out_dir/figures/`` (plus ``sample_grid.jpg``, the thumbnails pasted into one image).

What it shows: a plain-language summary of what is wrong with the data (from `table.problems` and
from the table itself), dataset facts, split counts, one table per problem kind, the check results
as readable tables, distribution figures (compact profiles when there are many classes, with the
largest and smallest classes named in a table) and a grid of sample images with their boxes drawn.

It is fast on large datasets: the distributions come from the widths, heights and boxes already in
the table (the checks fill the sizes in), and only the images shown in the grid are decoded, at
reduced size (`carid.images.load_rgb(min_side=...)`). Figures, files and the page go through
`carid.reporting` (matplotlib's object API on the Agg canvas; Jinja2 with autoescaping, so file
names and messages can never inject markup; `templates/report.html` extends the shared base page).

Modules: this one assembles the page (summary, facts, tables); `carid.data.eda_figures` draws the
distribution figures and `carid.data.eda_grid` the sample grid.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carid.data.eda_figures import MANY_CLASSES, SPLITS_ORDER, UNASSIGNED, distribution_figures
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
FOLD_ROWS = 12  # check-result tables longer than this are shown folded
NUMBER = re.compile(r"-?[\d,]+(\.\d+)?(e[+-]?\d+)?%?")  # a check-result cell shown as a number
CLASS_EXTREMES = 6  # largest and smallest classes named when the class chart is a profile

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


@dataclass(frozen=True)
class CheckTable:
    """One table of the check results: a title, column names, rows of text; `folded` ones are shown
    closed (long lists, settings), `more` counts the rows not listed."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    folded: bool = False
    more: int = 0

    @property
    def numeric(self) -> tuple[bool, ...]:
        """Per column: every value is a number (right-aligned on the page)."""
        return tuple(
            all(NUMBER.fullmatch(row[column]) for row in self.rows) for column in range(len(self.columns))
        )


def _words(key: object) -> str:
    return str(key).replace("_", " ")


def _cell(value: Any) -> str:
    """A value as short readable text: numbers with separators, a file member by its name and label,
    nested values as "key: value" pairs; cut to MAX_VALUE_CHARS."""
    if isinstance(value, bool) or value is None:
        text = {True: "yes", False: "no", None: "-"}[value]
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    elif isinstance(value, Mapping) and "path" in value:
        label = value.get("label")
        text = Path(str(value["path"])).name + (f" ({label})" if label else "")
    elif isinstance(value, Mapping):
        text = ", ".join(f"{_words(k)}: {_cell(v)}" for k, v in value.items()) or "none"
    elif isinstance(value, list | tuple):
        text = "; ".join(_cell(item) for item in value) or "none"
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + " ..."


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list | tuple)


def check_tables(check_summary: Mapping[str, Any] | None) -> list[CheckTable]:
    """The check results as readable tables, never as flattened JSON.

    Top-level scalars go to one "checked" table; a mapping of plain values becomes a name / value
    table; a mapping of mappings (e.g. per-class counts) and a list of mappings (e.g. duplicate
    groups) become tables with one column per field. Tables longer than FOLD_ROWS, and the settings
    (`config`), are folded; at most MAX_PROBLEM_ROWS rows are listed. The "problems" list is only
    counted, since its entries are shown by kind above.
    """
    general: list[tuple[str, ...]] = []
    tables: list[CheckTable] = []

    def add(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]], fold: bool = False) -> None:
        tables.append(
            CheckTable(
                title,
                columns,
                tuple(rows[:MAX_PROBLEM_ROWS]),
                fold or len(rows) > FOLD_ROWS,
                max(0, len(rows) - MAX_PROBLEM_ROWS),
            )
        )

    for key, value in (check_summary or {}).items():
        title = _words(key)
        if key == "problems" and isinstance(value, list):
            general.append(("problems", f"{len(value):,} (listed by kind above)"))
        elif _is_scalar(value) or not value:
            general.append((title, _cell(value) if value or _is_scalar(value) else "none"))
        elif isinstance(value, Mapping) and all(isinstance(v, Mapping) for v in value.values()):
            fields = list(dict.fromkeys(field for v in value.values() for field in v))
            rows = [(str(name), *(_cell(v.get(f)) for f in fields)) for name, v in value.items()]
            add(title, ("name", *map(_words, fields)), rows)
        elif isinstance(value, Mapping):
            rows = [(_words(name), _cell(item)) for name, item in value.items()]
            add(title, ("name", "value"), rows, fold=key == "config")
        elif all(isinstance(item, Mapping) for item in value):
            fields = list(dict.fromkeys(field for item in value for field in item))
            add(
                title,
                ("#", *map(_words, fields)),
                [(str(i + 1), *(_cell(item.get(f)) for f in fields)) for i, item in enumerate(value)],
            )
        else:
            general.append((title, f"{len(value):,} entries: {_cell(list(value))}"))
    if general:
        tables.insert(0, CheckTable("checked", ("name", "value"), tuple(general), len(general) > FOLD_ROWS))
    return tables


def class_extremes(table: SampleTable, count: int = CLASS_EXTREMES) -> dict[str, list[tuple[str, str]]]:
    """The `count` largest and smallest classes by images, as (name, images) rows; empty unless the
    class chart is the compact profile (more than MANY_CLASSES classes), which names no class."""
    counts = table.class_counts()
    names = sorted(set(table.classes) | set(counts), key=lambda name: (-counts.get(name, 0), name))
    if len(names) <= MANY_CLASSES:
        return {}
    count = min(count, len(names) // 2)
    return {
        "largest": [(name, f"{counts.get(name, 0):,}") for name in names[:count]],
        "smallest": [
            (name, f"{counts.get(name, 0):,}")
            for name in sorted(names, key=lambda name: (counts.get(name, 0), name))[:count]
        ],
    }


# --- the page ------------------------------------------------------------------------------------


def write_report(
    table: SampleTable,
    out_dir: Path | str,
    splits: Sequence[str | None] | None = None,
    check_summary: Mapping[str, Any] | None = None,
    title: str | None = None,
    samples_per_class: int = 4,
    max_classes_in_grid: int = 24,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/figures/*``; returns the path of the HTML file.

    table: the dataset, with width/height filled in where known and every problem found so far
        in `table.problems` (the report shows all samples, including excluded ones).
    splits: one of "train"/"val"/"test" per sample (aligned with table.samples), optional;
        None for a sample in no split (e.g. one excluded by the checks).
    check_summary: the JSON-ready dict of the checks; shown as tables (`check_tables`); problem dicts in
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
            "gallery": row.gallery,
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
        check_tables=check_tables(check_summary),
        extremes=class_extremes(table),
        figures=figures,
        grid=grid,
        grid_note=grid_note,
    )
    report = out_dir / REPORT_NAME
    write_atomic(report, file_text(page).encode("utf-8"))  # a file name's non-UTF-8 bytes as \xNN
    return report
