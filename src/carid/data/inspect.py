"""The data job: read a dataset, check it, split it and write the report, as one call.

This is what `carid data check`, `carid data split`, `carid data report` and the first stage of
`carid run` share, so that each command is a thin layer and all of them see the same table,
problems and split.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from carid.artifacts.run_dir import SPLIT_FILE
from carid.config import CheckConfig, DataConfig
from carid.data.check_report import CheckReport
from carid.data.checks import run_checks
from carid.data.readers import read_dataset
from carid.data.samples import Sample, SampleTable
from carid.data.split import (
    frame_block_groups,
    group_ids_by_path,
    save_split,
    split_from_config,
    split_summary,
)

log = logging.getLogger(__name__)


@dataclass
class Inspection:
    """What the data job produced. `paths` maps an artefact name to the file written."""

    raw: SampleTable
    report: CheckReport
    splits: list[str] | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def table(self) -> SampleTable:
        """The checked table: sizes filled in, repaired boxes, every problem recorded."""
        return self.report.table


def inspect_dataset(
    path: Path,
    data: DataConfig,
    check: CheckConfig,
    out_dir: Path | None = None,
    split: bool = True,
    progress: bool = True,
) -> Inspection:
    """Read -> check -> (split, saved as `out_dir/split.csv`) -> JSON report in out_dir."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    raw = excluded(read_dataset(path, data.format), data.exclude)
    seconds["read"] = time.perf_counter() - start

    start = time.perf_counter()
    report = run_checks(raw, check, progress=progress)
    seconds["check"] = time.perf_counter() - start
    inspection = Inspection(raw=raw, report=report, seconds=seconds)

    if split:
        usable = report.usable()
        duplicates = [group.paths for group in report.duplicate_groups]
        groups = group_ids_by_path(usable, [*duplicates, *frame_block_groups(usable, data.frame_block)])
        inspection.splits = split_from_config(usable, data, groups)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report_path = out_dir / "checks.json"
        report.write_json(report_path)
        inspection.paths["checks"] = report_path
        if inspection.splits is not None:
            split_path = out_dir / SPLIT_FILE
            save_split(
                report.usable(),
                inspection.splits,
                split_path,
                seed=data.seed,
                fractions=(1 - data.val_fraction - data.test_fraction, data.val_fraction, data.test_fraction),
                use_format_split=data.use_format_split,
            )
            inspection.paths["split"] = split_path
    return inspection


def excluded(table: SampleTable, patterns: Sequence[str]) -> SampleTable:
    """The table without the samples whose file matches one of `patterns` (`data.exclude`)."""
    if not patterns:
        return table

    def matches(sample: Sample) -> bool:
        names = [sample.path.name]
        with contextlib.suppress(ValueError):
            names.append(sample.path.relative_to(table.root).as_posix())
        return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)

    kept = [sample for sample in table.samples if not matches(sample)]
    log.info("data.exclude: %d of %d samples left out", len(table.samples) - len(kept), len(table.samples))
    return table.with_samples(kept)


def splits_of_all(inspection: Inspection) -> list[str | None]:
    """The split of every sample of the checked table (None for excluded samples)."""
    if inspection.splits is None:
        return [None] * len(inspection.table)
    by_path = {
        str(sample.path): split
        for sample, split in zip(inspection.report.usable().samples, inspection.splits, strict=True)
    }
    return [by_path.get(str(sample.path)) for sample in inspection.table.samples]


def summarize_split(inspection: Inspection) -> dict[str, object]:
    if inspection.splits is None:
        return {}
    return split_summary(inspection.report.usable(), inspection.splits)


def write_data_report(inspection: Inspection, out_dir: Path, title: str) -> Path:
    """The HTML data report of an inspection (all samples, excluded ones included, with their split)."""
    from carid.data.eda import write_report

    return write_report(
        inspection.table,
        out_dir,
        splits=splits_of_all(inspection),
        check_summary=inspection.report.to_dict(include_images=False),
        title=title,
    )
