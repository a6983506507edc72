"""The data of a training run: the samples with their split, and the classes the network learns.

`config.data.split_csv` when set, else `config.data.path` (or the default shared dataset via
`resolve_data_path`) read, checked and split by `inspect_dataset`; samples with error-level
problems are left out. `data.train_extra` datasets join the training split only (their samples
are added after the split is made, and the run's split.csv lists them). A resumed run (and every
DDP worker) reads the run's own split.csv. With
`data.label_level` other than "class", labels are mapped through the taxonomy parsed from the class
names.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carid.artifacts.run_dir import RunDir
from carid.config import Config, ConfigError, resolve_data_path
from carid.data.samples import SampleTable
from carid.data.split import load_split, save_split, splits_of
from carid.taxonomy import Taxonomy

log = logging.getLogger(__name__)


class LevelLabel:
    """Sample -> its class's value at a taxonomy level (a picklable `label_of` for the datamodule)."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = dict(mapping)

    def __call__(self, sample) -> str | None:
        return None if sample.label is None else self.mapping.get(sample.label, sample.label)


@dataclass(frozen=True)
class PreparedData:
    """The split table and what the network learns from it."""

    table: SampleTable
    classes: list[str]
    label_of: Any
    taxonomy: dict[str, Any] | None
    source: str


def _table_with_splits(table: SampleTable, splits: Sequence[str]) -> SampleTable:
    return table.with_samples(s.with_(split=split) for s, split in zip(table.samples, splits, strict=True))


def load_run_data(
    config: Config, run_dir: Path, reuse_split: bool, write: bool, progress: bool
) -> SampleTable:
    """The samples with their split: the run's split.csv (resume), a given split CSV, or inspected data."""
    run_split = RunDir(run_dir).split
    if reuse_split and run_split.exists():
        return load_split(run_split)
    if config.data.split_csv:
        split_path = Path(config.data.split_csv).expanduser()
        if not split_path.exists():
            raise ConfigError(f"data.split_csv: {split_path}: no such file")
        table = with_train_extra(load_split(split_path), config, progress)
        if write:
            save_split(table, splits_of(table), run_split, seed=config.data.seed)
        return table
    from carid.data.inspect import inspect_dataset

    data_path = resolve_data_path(config.data.path)
    inspection = inspect_dataset(
        data_path,
        config.data,
        config.check,
        out_dir=run_dir if write else None,
        split=True,
        progress=progress,
    )
    if inspection.splits is None:
        raise ConfigError(f"{data_path}: the data job produced no split")
    table = _table_with_splits(inspection.report.usable(), inspection.splits)
    if config.data.train_extra:
        table = with_train_extra(table, config, progress)
        if write:
            save_split(table, splits_of(table), run_split, seed=config.data.seed)
    return table


def with_train_extra(table: SampleTable, config: Config, progress: bool) -> SampleTable:
    """`table` plus the usable samples of every `data.train_extra` dataset, all in the train split
    (read and checked like the main data, `data.exclude` applied); classes are the union."""
    if not config.data.train_extra:
        return table
    from carid.data.inspect import inspect_dataset

    samples = list(table.samples)
    classes = list(table.classes)
    for extra in config.data.train_extra:
        path = Path(extra).expanduser()
        if not path.exists():
            raise ConfigError(f"data.train_extra: {path}: no such file or folder")
        extra_data = dataclasses.replace(config.data, path=str(path), format=None, split_csv=None)
        inspection = inspect_dataset(path, extra_data, config.check, split=False, progress=progress)
        usable = inspection.report.usable()
        samples.extend(sample.with_(split="train") for sample in usable.samples)
        classes.extend(name for name in usable.classes if name not in classes)
        log.info("data.train_extra: %d samples of %s join the training split", len(usable.samples), path)
    return SampleTable(samples, classes, table.root, table.format, list(table.problems))


def prepare_labels(table: SampleTable, level: str) -> PreparedData:
    """Classes (and the label mapping) for `data.label_level`.

    Raises ConfigError when fewer than two classes result (nothing to classify), e.g. a dataset
    without labels, or a taxonomy level of class names that do not parse ("<Make> <Model> <Body>
    <Year>" is what the taxonomy understands).
    """
    source = str(table.root)
    if level == "class":
        try:
            taxonomy: dict[str, Any] | None = Taxonomy.from_class_names(table.classes).to_dict()
        except ValueError:
            taxonomy = None
        prepared = PreparedData(table, list(table.classes), None, taxonomy, source)
    else:
        parsed = Taxonomy.from_class_names(table.classes)
        if parsed.unparsed:
            log.warning(
                "%d of %d class names do not parse as '<Make> <Model> <Body> <Year>' (e.g. %r); "
                "their %s is 'Unknown'",
                len(parsed.unparsed),
                parsed.num_classes,
                parsed.unparsed[0],
                level,
            )
        mapping = dict(zip(parsed.classes, parsed.labels(level), strict=True))
        used = {mapping.get(s.label, s.label) for s in table.samples if s.label is not None}
        classes = [value for value in parsed.values(level) if value in used]
        prepared = PreparedData(table, classes, LevelLabel(mapping), None, source)
    if len(prepared.classes) < 2:
        found = ", ".join(prepared.classes) or "none"
        raise ConfigError(
            f"{source}: data.label_level {level!r} gives {len(prepared.classes)} class(es) ({found}); "
            "training needs at least two (a dataset with class labels, or a level its class names say)"
        )
    return prepared
