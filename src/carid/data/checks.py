"""Data checks: open every image once and report everything wrong with a dataset.

`run_checks(table, config)` fingerprints every distinct image file once (in parallel, see
`carid.data.hashing`), then applies the rules below and returns a `CheckReport` holding the
checked table (real image sizes filled in, partly-outside boxes clipped), every problem (the
reader's and its own), per-image facts for the EDA report, duplicate groups and timing.

Severities say what happens to the sample: ERROR = excluded, WARNING = kept (maybe repaired),
INFO = a fact. Kinds:

ERROR
- missing_file, not_an_image, truncated_image, unreadable_image, too_many_pixels: the file cannot
  be decoded (the kind is `ImageError.kind`).
- tiny_image: shorter side < `min_side`. A 20 px photo upscaled to a 224 px input is only blur;
  it can teach the network nothing, so it is excluded rather than merely flagged.
- degenerate_box: narrower or lower than `min_box_size` (or inverted, or not finite).
- box_outside_image: entirely outside the image, or all but a sliver below `min_box_size`.
- missing_label / unknown_class: no label in a labelled dataset / a label not in `table.classes`.
WARNING
- format_mismatch: the bytes hold another format than the extension says (a GIF named .jpg).
- size_mismatch: the annotation's width/height differ from the real image; boxes are checked
  against the real size, not rescaled.
- box_exceeds_photo: a box wider or taller than the photo; clipped.
- box_partly_outside: crosses the border by more than `BOX_TOLERANCE_PX`; clipped, and the
  message says by how many px past which edge.
- exact_duplicate: identical files (same MD5) at different paths.  duplicate_path: one file
  listed in several rows.
- split_leakage: a duplicate group spans splits, so evaluation would score photos seen in training.
- conflicting_labels: a duplicate group carries different labels; which one is right cannot be
  told, so nothing is excluded.
- few_samples: a class has fewer than `min_per_class` usable samples (one problem per class).
- class_imbalance: largest / smallest usable class count > `imbalance_ratio`.
INFO
- near_duplicate: perceptual-hash distance <= `near_duplicate_distance` (burst shots and
  re-encoded copies; often legitimate within one split).

Boxes that cross the border by at most `BOX_TOLERANCE_PX` (rounding between inclusive and
exclusive pixel conventions) are clipped without a problem being recorded. One ERROR box excludes
its whole image: training on the image without that box would teach "no car here". Exclusion is
by path (`SampleTable.usable`), so rows listing the same file go together.

Strict mode (`exit_code(strict=True)`) fails on any ERROR or WARNING: it is meant for CI on a
curated dataset, where a warning is something to fix or to accept by raising a threshold. INFO
never fails. Duplicate search is over the files that could be read; excluded samples still appear
in duplicate groups, so a leak is reported even when one copy has another error.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from carid import boxes as box_math
from carid.config import CheckConfig
from carid.data.hashing import (
    ImageFacts,
    ProbeFailure,
    close_pairs,
    connected_groups,
    fingerprint_files,
    hashes_to_uint64,
    planned_processes,
)
from carid.data.samples import Problem, Sample, SampleTable, Severity

# Overhang (px) clipped silently: off-by-one conventions, not annotation mistakes.
BOX_TOLERANCE_PX = 1.0
# Files named in one duplicate or leakage message before "and N more".
MAX_NAMES_IN_MESSAGE = 10
# Example files per problem kind in the printed summary.
SUMMARY_EXAMPLES = 3

_SEVERITY_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


@dataclass(frozen=True)
class DuplicateGroup:
    """Samples showing the same photo.

    kind: "exact" (same file bytes) or "near" (perceptual hashes within the threshold).
    indices: sample indices into `CheckReport.table.samples`, ascending.
    max_distance: largest phash Hamming distance (bits of 64) between linked members; 0 for exact.
    """

    kind: str
    indices: tuple[int, ...]
    paths: tuple[str, ...]
    labels: tuple[str | None, ...]
    splits: tuple[str | None, ...]
    max_distance: int

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "max_distance": self.max_distance,
            "members": [
                {"index": index, "path": path, "label": label, "split": split}
                for index, path, label, split in zip(
                    self.indices, self.paths, self.labels, self.splits, strict=True
                )
            ],
        }


@dataclass(frozen=True)
class CheckReport:
    """The result of `run_checks`.

    table: the checked table: width/height from the real images, partly-outside boxes clipped,
        `problems` = the reader's problems followed by the checks' problems.
    facts: one `ImageFacts` per sample (aligned with `table.samples`), None when unreadable.
    splits: the split of each sample used for the leakage check (None = unknown).
    seconds: wall time of the whole check; probe_seconds: of opening the images.
    workers: processes that opened the images (1 = in process).
    images_opened: distinct files opened (a file listed twice is opened once).
    """

    table: SampleTable
    facts: tuple[ImageFacts | None, ...]
    duplicate_groups: tuple[DuplicateGroup, ...]
    splits: tuple[str | None, ...]
    config: CheckConfig
    seconds: float
    probe_seconds: float
    workers: int
    images_opened: int

    # --- counts ---------------------------------------------------------------------------

    @property
    def problems(self) -> list[Problem]:
        return self.table.problems

    @property
    def problem_counts(self) -> dict[str, int]:
        """Problem kind -> number of problems, sorted by kind."""
        counts = Counter(problem.kind for problem in self.problems)
        return dict(sorted(counts.items()))

    @property
    def severity_counts(self) -> dict[str, int]:
        counts = Counter(problem.severity for problem in self.problems)
        return {str(severity): counts.get(severity, 0) for severity in Severity}

    @property
    def has_errors(self) -> bool:
        return any(problem.severity is Severity.ERROR for problem in self.problems)

    @property
    def has_warnings(self) -> bool:
        return any(problem.severity is Severity.WARNING for problem in self.problems)

    def exit_code(self, strict: bool = False) -> int:
        """The process exit code: 0 unless `strict` and any ERROR or WARNING was found.

        Without `strict` a check succeeds even when samples are excluded: they are listed, and
        the rest of the work goes on with the usable samples.
        """
        return int(strict and (self.has_errors or self.has_warnings))

    def usable(self) -> SampleTable:
        """The checked table without the samples that have an ERROR problem."""
        return self.table.usable()

    @property
    def images_readable(self) -> int:
        return len(
            {str(s.path) for s, f in zip(self.table.samples, self.facts, strict=True) if f is not None}
        )

    @property
    def images_per_second(self) -> float:
        return self.images_opened / self.seconds if self.seconds > 0 else 0.0

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Class -> {"samples": all samples, "usable": samples kept}, in `table.classes` order."""
        everything = self.table.class_counts()
        kept = self.usable().class_counts()
        names = _class_names(self.table)
        return {name: {"samples": everything.get(name, 0), "usable": kept.get(name, 0)} for name in names}

    # --- output ---------------------------------------------------------------------------

    def to_dict(self, include_images: bool = True) -> dict[str, object]:
        """JSON-ready, with stable keys; every problem in full. `images` (per-sample facts,
        aligned with the table) can be left out for a short report."""
        usable = len(self.usable())
        result: dict[str, object] = {
            "root": str(self.table.root),
            "format": self.table.format,
            "summary": {
                "samples": len(self.table),
                "images_opened": self.images_opened,
                "images_readable": self.images_readable,
                "usable": usable,
                "excluded": len(self.table) - usable,
                "classes": len(_class_names(self.table)),
                "exact_duplicate_groups": sum(g.kind == "exact" for g in self.duplicate_groups),
                "near_duplicate_groups": sum(g.kind == "near" for g in self.duplicate_groups),
                **self.severity_counts,
            },
            "timing": {
                "seconds": round(self.seconds, 3),
                "probe_seconds": round(self.probe_seconds, 3),
                "images_per_second": round(self.images_per_second, 1),
                "workers": self.workers,
            },
            "config": dataclasses.asdict(self.config),
            "problem_counts": self.problem_counts,
            "class_counts": self.class_counts(),
            "duplicate_groups": [group.to_dict() for group in self.duplicate_groups],
            "problems": [problem.to_dict() for problem in self.problems],
        }
        if include_images:
            result["images"] = [
                {
                    "path": str(sample.path),
                    "readable": facts is not None,
                    **(facts.to_dict() if facts else {}),
                }
                for sample, facts in zip(self.table.samples, self.facts, strict=True)
            ]
        return result

    def write_json(self, path: Path | str, include_images: bool = True) -> Path:
        """Write `to_dict()` as indented JSON, atomically (temporary name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(include_images), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def print_summary(self, console: Console) -> None:
        """One row per problem kind (severity, count, up to 3 example files), then the totals."""
        base = _display_base(self.table.root)
        by_kind: dict[str, list[Problem]] = {}
        for problem in self.problems:
            by_kind.setdefault(problem.kind, []).append(problem)
        if by_kind:
            table = Table(title=f"Data check: {self.table.root} ({self.table.format})", title_justify="left")
            table.add_column("severity")
            table.add_column("problem")
            table.add_column("count", justify="right")
            table.add_column("examples", overflow="fold")
            rows = sorted(
                by_kind.items(),
                key=lambda item: (min(_SEVERITY_RANK[p.severity] for p in item[1]), -len(item[1]), item[0]),
            )
            for kind, problems in rows:
                severity = min((p.severity for p in problems), key=_SEVERITY_RANK.__getitem__)
                table.add_row(
                    f"[{_SEVERITY_STYLE[severity]}]{severity}[/]",
                    kind,
                    str(len(problems)),
                    _examples(problems, base),
                )
            console.print(table)
        else:
            console.print(f"[green]No problems found in {self.table.root}[/]")
        summary = self.to_dict(include_images=False)["summary"]
        assert isinstance(summary, dict)
        counts = [entry["usable"] for entry in self.class_counts().values()]
        per_class = f" ({min(counts)}-{max(counts)} usable per class)" if counts else ""
        console.print(
            f"samples {summary['samples']}, files opened {self.images_opened} "
            f"({self.images_opened - self.images_readable} unreadable); "
            f"usable {summary['usable']}, excluded {summary['excluded']}; "
            f"classes {summary['classes']}{per_class}"
        )
        console.print(
            f"duplicate groups: {summary['exact_duplicate_groups']} exact, "
            f"{summary['near_duplicate_groups']} near; "
            f"{self.seconds:.1f} s ({self.images_per_second:.0f} images/s, {self.workers} worker(s))"
        )
        errors, warnings, infos = (summary[str(s)] for s in Severity)
        style = "bold red" if errors else "yellow" if warnings else "green"
        console.print(f"[{style}]{errors} error(s), {warnings} warning(s), {infos} info(s)[/]")


def _image_entry(sample: Sample, facts: ImageFacts | None) -> dict[str, object]:
    return {"path": str(sample.path), "readable": facts is not None, **(facts.to_dict() if facts else {})}


# --- the checks -----------------------------------------------------------------------------


def run_checks(
    table: SampleTable,
    config: CheckConfig | None = None,
    splits: Sequence[str | None] | None = None,
    progress: bool = True,
) -> CheckReport:
    """Open every image once and check images, boxes, labels, duplicates, leakage and classes.

    splits: one split name per sample (aligned with `table.samples`) for the leakage check;
        None uses `sample.split`.
    progress: show a progress bar (on stderr) while images are opened.
    The input table is not modified.
    """
    config = config or CheckConfig()
    started = time.perf_counter()
    split_of = _resolve_splits(table, splits)
    file_index: dict[str, int] = {}
    for sample in table.samples:
        file_index.setdefault(str(sample.path), len(file_index))
    outcomes = fingerprint_files(list(file_index), workers=config.workers, progress=progress)
    processes = planned_processes(len(file_index), config.workers)
    probe_seconds = time.perf_counter() - started

    base = _display_base(table.root)
    labelled = bool(table.classes) or any(sample.label is not None for sample in table.samples)
    known_classes = set(table.classes)
    problems: list[Problem] = []
    checked: list[Sample] = []
    facts: list[ImageFacts | None] = []
    for sample in table.samples:
        name = _display(sample.path, base)
        outcome = outcomes[file_index[str(sample.path)]]
        problems.extend(_label_problems(sample, name, labelled, known_classes))
        if isinstance(outcome, ProbeFailure):
            problems.append(_problem(sample, outcome.kind, Severity.ERROR, f"{name}: {outcome.reason}"))
            facts.append(None)
            checked.append(sample)
            continue
        facts.append(outcome)
        problems.extend(_image_problems(sample, outcome, name, config))
        repaired_boxes, box_problems = _check_boxes(sample, outcome.width, outcome.height, name, config)
        problems.extend(box_problems)
        checked.append(sample.with_(width=outcome.width, height=outcome.height, boxes=repaired_boxes))

    names = [_display(sample.path, base) for sample in checked]
    problems.extend(_duplicate_path_problems(checked, names, split_of))
    groups = _duplicate_groups(checked, facts, split_of, config.near_duplicate_distance)
    for group in groups:
        problems.extend(_group_problems(group, checked, facts, names, config.near_duplicate_distance))

    result = SampleTable(checked, list(table.classes), table.root, table.format, [*table.problems, *problems])
    result.add_problems(_class_problems(result, config))
    return CheckReport(
        table=result,
        facts=tuple(facts),
        duplicate_groups=tuple(groups),
        splits=split_of,
        config=config,
        seconds=time.perf_counter() - started,
        probe_seconds=probe_seconds,
        workers=processes,
        images_opened=len(file_index),
    )


def _resolve_splits(table: SampleTable, splits: Sequence[str | None] | None) -> tuple[str | None, ...]:
    if splits is None:
        return tuple(sample.split for sample in table.samples)
    if len(splits) != len(table):
        raise ValueError(f"splits has {len(splits)} entries but the table has {len(table)} samples")
    return tuple(split or None for split in splits)


def _problem(sample: Sample, kind: str, severity: Severity, message: str) -> Problem:
    return Problem(kind=kind, message=message, source=sample.source, severity=severity, path=str(sample.path))


def _label_problems(sample: Sample, name: str, labelled: bool, known: set[str]) -> list[Problem]:
    if labelled and sample.label is None:
        return [
            _problem(sample, "missing_label", Severity.ERROR, f"{name}: no class label in a labelled dataset")
        ]
    if known and sample.label is not None and sample.label not in known:
        message = f"{name}: class {sample.label!r} is not one of the dataset's {len(known)} classes"
        return [_problem(sample, "unknown_class", Severity.ERROR, message)]
    return []


def _image_problems(sample: Sample, facts: ImageFacts, name: str, config: CheckConfig) -> list[Problem]:
    problems: list[Problem] = []
    if facts.format_mismatch:
        suffix = sample.path.suffix.lower()
        expected = Image.registered_extensions().get(suffix)
        promise = f"not {expected} as its name says" if expected else f"but its name ends in {suffix}"
        problems.append(
            _problem(
                sample, "format_mismatch", Severity.WARNING, f"{name}: file is {facts.format}, {promise}"
            )
        )
    if min(facts.width, facts.height) < config.min_side:
        message = (
            f"{name}: {facts.width}x{facts.height} px; the shorter side is below min_side "
            f"{config.min_side} px, too small to train on"
        )
        problems.append(_problem(sample, "tiny_image", Severity.ERROR, message))
    claimed = (sample.width, sample.height)
    real = (facts.width, facts.height)
    if any(c is not None and c != r for c, r in zip(claimed, real, strict=True)):
        said = "x".join("?" if value is None else str(value) for value in claimed)
        hint = " (width and height swapped: EXIF orientation?)" if claimed == real[::-1] else ""
        message = (
            f"{name}: the annotation says {said} px but the image is {facts.width}x{facts.height} px{hint}; "
            "boxes were checked against the real size"
        )
        problems.append(_problem(sample, "size_mismatch", Severity.WARNING, message))
    return problems


def _px(value: float) -> str:
    """12.0 -> '12', 12.25 -> '12.2' (pixels in messages)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _box_text(box: np.ndarray) -> str:
    return "[" + ", ".join(_px(float(v)) for v in box) + "]"


def _check_boxes(
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
        if not np.all(np.isfinite(box)):
            message = f"{name}: {which} has coordinates that are not finite numbers"
            problems.append(_problem(sample, "degenerate_box", Severity.ERROR, message))
        elif box_w < config.min_box_size or box_h < config.min_box_size:
            message = (
                f"{name}: {which} is degenerate: {_px(box_w)} x {_px(box_h)} px "
                f"(min_box_size {_px(config.min_box_size)} px)"
            )
            problems.append(_problem(sample, "degenerate_box", Severity.ERROR, message))
        elif inside_w <= 0 or inside_h <= 0:
            message = f"{name}: {which} lies entirely outside the {size} px image"
            problems.append(_problem(sample, "box_outside_image", Severity.ERROR, message))
        elif inside_w < config.min_box_size or inside_h < config.min_box_size:
            message = (
                f"{name}: {which} lies almost entirely outside the {size} px image "
                f"(only {_px(inside_w)} x {_px(inside_h)} px inside)"
            )
            problems.append(_problem(sample, "box_outside_image", Severity.ERROR, message))
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
                problems.append(_problem(sample, "box_exceeds_photo", Severity.WARNING, message))
            elif max(overhang.values()) > BOX_TOLERANCE_PX:
                message = f"{name}: {which} extends {past} of the {size} px image; clipped to {clipped_text}"
                problems.append(_problem(sample, "box_partly_outside", Severity.WARNING, message))
            if max(overhang.values()) > 0:
                repaired[k] = clipped[k]
    return repaired, problems


# --- duplicates -----------------------------------------------------------------------------


def _duplicate_groups(
    samples: Sequence[Sample],
    facts: Sequence[ImageFacts | None],
    split_of: Sequence[str | None],
    max_distance: int,
) -> list[DuplicateGroup]:
    """Exact groups (same MD5, at least two distinct paths or rows), then near groups (distinct
    files whose phashes link within `max_distance`; each member file brings all its exact copies)."""
    by_md5: dict[str, list[int]] = {}
    for index, fact in enumerate(facts):
        if fact is not None:
            by_md5.setdefault(fact.md5, []).append(index)

    def group(kind: str, indices: Iterable[int], distance: int) -> DuplicateGroup:
        members = tuple(sorted(indices))
        return DuplicateGroup(
            kind=kind,
            indices=members,
            paths=tuple(str(samples[i].path) for i in members),
            labels=tuple(samples[i].label for i in members),
            splits=tuple(split_of[i] for i in members),
            max_distance=distance,
        )

    groups = [group("exact", indices, 0) for indices in by_md5.values() if len(indices) > 1]
    representatives = [indices[0] for indices in by_md5.values()]
    md5s = list(by_md5)
    hashes = hashes_to_uint64([facts[i].phash for i in representatives])  # type: ignore[union-attr]
    pairs, distances = close_pairs(hashes, max_distance)
    largest: dict[int, int] = {}
    components = connected_groups(len(representatives), pairs)
    component_of = {member: number for number, members in enumerate(components) for member in members}
    for (first, _), distance in zip(pairs.tolist(), distances.tolist(), strict=True):
        number = component_of[first]
        largest[number] = max(largest.get(number, 0), distance)
    for number, members in enumerate(components):
        indices = [i for member in members for i in by_md5[md5s[member]]]
        groups.append(group("near", indices, largest.get(number, 0)))
    return groups


def _listing(entries: Sequence[str]) -> str:
    """'a, b and c'; past MAX_NAMES_IN_MESSAGE entries 'a, b, ... and 12 more'."""
    more = len(entries) - MAX_NAMES_IN_MESSAGE
    if more > 0:
        return f"{', '.join(entries[:MAX_NAMES_IN_MESSAGE])} and {more} more"
    return entries[0] if len(entries) == 1 else f"{', '.join(entries[:-1])} and {entries[-1]}"


def _duplicate_path_problems(
    samples: Sequence[Sample], names: Sequence[str], split_of: Sequence[str | None]
) -> list[Problem]:
    """One file listed in several rows: duplicate_path, plus split_leakage / conflicting_labels
    when those rows disagree on the split / the label."""
    rows: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        rows.setdefault(str(sample.path), []).append(index)
    problems: list[Problem] = []
    for indices in rows.values():
        if len(indices) < 2:
            continue
        first, name = samples[indices[0]], names[indices[0]]
        sources = _listing([samples[i].source for i in indices])
        message = f"{name} is listed {len(indices)} times ({sources})"
        problems.append(_problem(first, "duplicate_path", Severity.WARNING, message))
        splits = [split_of[i] for i in indices]
        if len({split for split in splits if split is not None}) > 1:
            leaking = next(i for i, split in zip(indices, splits, strict=True) if split != splits[0])
            where = _listing(
                [
                    f"{split or 'no split'} ({samples[i].source})"
                    for i, split in zip(indices, splits, strict=True)
                ]
            )
            message = f"{name} is listed in several splits: {where}; evaluation would score a training photo"
            problems.append(_problem(samples[leaking], "split_leakage", Severity.WARNING, message))
        if len({samples[i].label for i in indices if samples[i].label is not None}) > 1:
            labels = _listing([f"{samples[i].label!r} ({samples[i].source})" for i in indices])
            message = f"{name} is listed with different labels: {labels}"
            problems.append(_problem(first, "conflicting_labels", Severity.WARNING, message))
    return problems


def _spread(values_by_file: dict[str, set[str]]) -> bool:
    """True when two *different files* carry different values (splits or labels): at least two
    files have a value and, together, more than one value. Copies of one file listed in several
    rows are the duplicate_path/exact case and are not counted twice by near groups."""
    with_values = [values for values in values_by_file.values() if values]
    return len(with_values) >= 2 and len(set().union(*with_values)) >= 2


def _group_problems(
    group: DuplicateGroup,
    samples: Sequence[Sample],
    facts: Sequence[ImageFacts | None],
    names: Sequence[str],
    max_distance: int,
) -> list[Problem]:
    first = samples[group.indices[0]]
    if group.kind == "exact":
        # Rows of one path are copies of themselves; the per-"file" unit is the path.
        unit = [str(samples[i].path) for i in group.indices]
        how = "identical files (same MD5)"
    else:
        unit = [facts[i].md5 for i in group.indices]  # type: ignore[union-attr]
        how = f"near duplicates (perceptual-hash distance up to {group.max_distance} of 64 bits)"
    problems: list[Problem] = []
    distinct_files = len(set(unit))
    if group.kind == "exact" and distinct_files > 1:
        listing = _listing([names[i] for i in group.indices])
        message = f"{distinct_files} files are identical (MD5 {facts[group.indices[0]].md5[:12]}…): {listing}"  # type: ignore[union-attr]
        problems.append(_problem(first, "exact_duplicate", Severity.WARNING, message))
    elif group.kind == "near":
        listing = _listing([names[i] for i in group.indices])
        message = (
            f"{len(group.indices)} images look alike (perceptual-hash distance <= {max_distance}, "
            f"largest {group.max_distance}): {listing}"
        )
        problems.append(_problem(first, "near_duplicate", Severity.INFO, message))

    if group.kind == "exact" and distinct_files == 1:
        return problems  # one path in several rows: reported by _duplicate_path_problems
    splits_by_file: dict[str, set[str]] = {key: set() for key in unit}
    labels_by_file: dict[str, set[str]] = {key: set() for key in unit}
    for key, split, label in zip(unit, group.splits, group.labels, strict=True):
        if split is not None:
            splits_by_file[key].add(split)
        if label is not None:
            labels_by_file[key].add(label)
    if _spread(splits_by_file):
        members = list(zip(group.indices, group.splits, strict=True))
        leaking = next(index for index, split in members if split != group.splits[0])
        listing = _listing([f"{names[index]} ({split or 'no split'})" for index, split in members])
        message = f"{listing} are {how} in different splits: evaluation would score photos seen in training"
        problems.append(_problem(samples[leaking], "split_leakage", Severity.WARNING, message))
    if _spread(labels_by_file):
        listing = _listing([f"{names[i]} ({samples[i].label!r})" for i in group.indices])
        message = f"{listing} are {how} with different labels"
        problems.append(_problem(first, "conflicting_labels", Severity.WARNING, message))
    return problems


# --- classes --------------------------------------------------------------------------------


def _class_names(table: SampleTable) -> list[str]:
    """`table.classes`, then any label seen in the samples that is not among them."""
    names = list(table.classes)
    listed = set(names)
    for sample in table.samples:
        if sample.label is not None and sample.label not in listed:
            names.append(sample.label)
            listed.add(sample.label)
    return names


def _class_problems(table: SampleTable, config: CheckConfig) -> list[Problem]:
    names = _class_names(table)
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


# --- display --------------------------------------------------------------------------------


def _display_base(root: Path) -> Path:
    root = Path(root)
    return root.parent if root.is_file() else root  # a reader may give an annotation file as root


def _display(path: Path | str, base: Path) -> str:
    """The path relative to the dataset root when it lies under it, else as given."""
    path = Path(path)
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _examples(problems: Sequence[Problem], base: Path) -> str:
    names: list[str] = []
    for problem in problems:
        name = _display(problem.path, base) if problem.path else problem.source
        if name not in names:
            names.append(name)
    shown = ", ".join(names[:SUMMARY_EXAMPLES])
    more = len(names) - SUMMARY_EXAMPLES
    return f"{shown} (+{more} more)" if more > 0 else shown
