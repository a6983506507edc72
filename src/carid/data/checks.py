"""Data checks: open every image once and report everything wrong with a dataset.

`run_checks(table, config)` fingerprints every distinct image file once (in parallel, see
`carid.data.hashing`), then applies the rules below and returns a `CheckReport` holding the
checked table (real image sizes filled in, partly-outside boxes clipped), every problem (the
reader's and its own), per-image facts for the EDA report, duplicate groups and timing.

Severities say what happens to the sample: ERROR = excluded, WARNING = kept (maybe repaired),
INFO = a fact. Kinds:

ERROR
- missing_file, not_an_image, truncated_image, unreadable_image, too_many_pixels: the file cannot
  be decoded (the kind is `ImageError.kind`); not_a_regular_file: a FIFO, socket or device where
  an image was listed (never opened: reading a FIFO would wait forever).
- tiny_image: shorter side < `min_side`. A 20 px photo upscaled to a 224 px input is only blur;
  it can teach the network nothing, so it is excluded rather than merely flagged.
- degenerate_box: narrower or lower than `min_box_size` (or inverted, or not finite).
- box_outside_image: entirely outside the image, or all but a sliver below `min_box_size`.
- missing_label / unknown_class: no label in a labelled dataset / a label not in `table.classes`.
WARNING
- format_mismatch: the bytes hold another format than the extension says (a GIF named .jpg).
- undecodable_name: the file's name is not valid UTF-8; reports show those bytes as \\xNN.
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

The pass lives here; the rules in `carid.data.check_rules` (labels, images, boxes, classes) and
`carid.data.check_duplicates` (duplicate groups, leakage, label conflicts); the result type in
`carid.data.check_report`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from carid.config import CheckConfig
from carid.data.check_duplicates import duplicate_groups, duplicate_path_problems, group_problems
from carid.data.check_report import CheckReport, display_base, display_name
from carid.data.check_rules import (
    check_boxes,
    class_problems,
    image_problems,
    label_problems,
    name_problems,
    sample_problem,
)
from carid.data.hashing import ImageFacts, ProbeFailure, fingerprint_files, planned_processes
from carid.data.samples import Problem, Sample, SampleTable, Severity


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

    base = display_base(table.root)
    labelled = bool(table.classes) or any(sample.label is not None for sample in table.samples)
    known_classes = set(table.classes)
    problems: list[Problem] = []
    checked: list[Sample] = []
    facts: list[ImageFacts | None] = []
    for sample in table.samples:
        name = display_name(sample.path, base)
        outcome = outcomes[file_index[str(sample.path)]]
        problems.extend(label_problems(sample, name, labelled, known_classes))
        problems.extend(name_problems(sample, name))
        if isinstance(outcome, ProbeFailure):
            problems.append(sample_problem(sample, outcome.kind, Severity.ERROR, f"{name}: {outcome.reason}"))
            facts.append(None)
            checked.append(sample)
            continue
        facts.append(outcome)
        problems.extend(image_problems(sample, outcome, name, config))
        repaired_boxes, box_problems = check_boxes(sample, outcome.width, outcome.height, name, config)
        problems.extend(box_problems)
        checked.append(sample.with_(width=outcome.width, height=outcome.height, boxes=repaired_boxes))

    names = [display_name(sample.path, base) for sample in checked]
    problems.extend(duplicate_path_problems(checked, names, split_of))
    groups = duplicate_groups(checked, facts, split_of, config.near_duplicate_distance)
    for group in groups:
        problems.extend(group_problems(group, checked, facts, names, config.near_duplicate_distance))

    result = SampleTable(checked, list(table.classes), table.root, table.format, [*table.problems, *problems])
    result.add_problems(class_problems(result, config))
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
