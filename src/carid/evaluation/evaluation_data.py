"""Which images `carid evaluate` scores: the run's own split.csv, another split.csv, a sample table or
a dataset read, checked and split here with the run's own split settings (`load_evaluation_data`),
and which splits a run's network trained on (`trained_splits`).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from carid.artifacts.run_dir import SPLIT_FILE, RunDir
from carid.data.samples import Problem, Sample, SampleTable, Severity
from carid.evaluation.scoring import EvaluationError

log = logging.getLogger(__name__)

SPLIT_CHOICES: tuple[str, ...] = ("train", "val", "test", "all")


SPLIT_CSV_COLUMNS = frozenset({"path", "label", "split"})


@dataclass(frozen=True, eq=False)
class EvaluationData:
    """The samples of one split and where they came from.

    origin: "run split" (the run's split.csv), "split csv", "dataset" (read, checked and split here)
        or "table". path: the file or folder read (None for a table).
    notes: dataset-level facts worth reporting (images excluded by the checks, ...).
    """

    samples: tuple[Sample, ...]
    split: str
    origin: str
    path: str | None
    notes: tuple[Problem, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        labels = Counter(s.label for s in self.samples if s.label is not None)
        return {
            "origin": self.origin,
            "path": self.path,
            "split": self.split,
            "num_samples": len(self.samples),
            "num_labels": len(labels),
            "with_box": sum(s.has_box for s in self.samples),
        }


def _check_split(split: str) -> str:
    if split not in SPLIT_CHOICES:
        raise EvaluationError(f"split {split!r} is not one of {', '.join(SPLIT_CHOICES)}")
    return split


def select_split(samples: Sequence[Sample], split: str, where: str) -> list[Sample]:
    """The samples of `split` ("all": every one); EvaluationError naming the splits there are."""
    if split == "all":
        return list(samples)
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        counts = Counter(s.split or "none" for s in samples)
        found = ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "no samples"
        raise EvaluationError(
            f"{where} has no {split!r} samples (it has: {found}); choose another split, or 'all'"
        )
    return chosen


def is_split_csv(path: Path) -> bool:
    """A CSV whose header has the columns of a saved split (path, label, split)."""
    if not path.is_file() or path.suffix.lower() != ".csv":
        return False
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return {column.strip() for column in header} >= SPLIT_CSV_COLUMNS


def load_run_config(run_dir: Path | None) -> Any:
    """The run's resolved config, or None (no run, or a config this version cannot read)."""
    if run_dir is None or not RunDir(run_dir).config.is_file():
        return None
    from carid.config import ConfigError, load_config

    try:
        return load_config(RunDir(run_dir).config)
    except ConfigError:
        return None


def trained_splits(run_config: Any) -> tuple[str, ...]:
    """The splits of a run's split.csv that its network trained on: val too for a refit
    (`train.fit_on_val`); run_config as from `load_run_config` (None: just "train")."""
    return ("train", "val") if run_config is not None and run_config.train.fit_on_val else ("train",)


def _same_path(a: Path | str | None, b: Path | str | None) -> bool:
    if a is None or b is None:
        return False
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


@dataclass(frozen=True, eq=False)
class DataSource:
    """Every usable sample of the evaluation data, each with its split when one is known.

    origin / path / notes: as in `EvaluationData`; where: how to name the data in messages.
    """

    samples: tuple[Sample, ...]
    origin: str
    path: str | None
    where: str
    notes: tuple[Problem, ...] = ()

    def select(self, split: str) -> EvaluationData:
        """The samples of one split (see `select_split`)."""
        chosen = select_split(self.samples, _check_split(split), self.where)
        return EvaluationData(tuple(chosen), split, self.origin, self.path, self.notes)


def _from_split_csv(path: Path, origin: str) -> DataSource:
    from carid.data.split import load_split

    try:
        table = load_split(path)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot read the split ({exc})") from exc
    return DataSource(tuple(table.samples), origin, str(path), str(path))


def _from_table(table: SampleTable) -> DataSource:
    usable = table.usable()
    notes = []
    excluded = len(table) - len(usable)
    if excluded:
        notes.append(
            Problem(
                "excluded_by_checks",
                f"{excluded} image(s) with error-level problems are left out",
                str(table.root),
                Severity.INFO,
            )
        )
    return DataSource(tuple(usable.samples), "table", None, f"the table of {table.root}", tuple(notes))


def _from_dataset(
    path: Path, with_splits: bool, run_config: Any, data_format: str | None, progress: bool
) -> DataSource:
    from carid.config import CheckConfig, DataConfig
    from carid.data.inspect import inspect_dataset
    from carid.data.readers import DatasetError

    data_config = replace(
        run_config.data if run_config is not None else DataConfig(),
        path=str(path),
        format=data_format,
        split_csv=None,
    )
    check_config = run_config.check if run_config is not None else CheckConfig()
    try:
        inspection = inspect_dataset(
            path, data_config, check_config, out_dir=None, split=with_splits, progress=progress
        )
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc
    samples = inspection.report.usable().samples
    if inspection.splits is not None:
        samples = [s.with_(split=name) for s, name in zip(samples, inspection.splits, strict=True)]
    notes = []
    excluded = inspection.table.excluded_paths()
    if excluded:
        kinds = Counter(
            p.kind for p in inspection.table.problems if p.severity is Severity.ERROR and p.path in excluded
        )
        detail = ", ".join(f"{kind} ({count})" for kind, count in kinds.most_common())
        notes.append(
            Problem(
                "excluded_by_checks",
                f"{len(excluded)} image(s) excluded by the data checks: {detail}",
                str(path),
                Severity.INFO,
            )
        )
    return DataSource(tuple(samples), "dataset", str(path), str(path), tuple(notes))


def read_evaluation_source(
    data: Path | str | SampleTable | None,
    *,
    with_splits: bool = True,
    run_dir: Path | None = None,
    run_config: Any = None,
    data_format: str | None = None,
    progress: bool = False,
) -> DataSource:
    """All the evaluation data by the rules of the module docstring, read once (select splits from it).

    with_splits: a dataset read here is split (needed for any split but "all").
    run_dir / run_config: the run the model belongs to (its split.csv and split settings), if any.
    data_format: force a reader for a dataset path (default: detected).
    """
    if isinstance(data, SampleTable):
        return _from_table(data)
    run_split = None if run_dir is None else run_dir / SPLIT_FILE
    if data is None:
        if run_split is None or not run_split.is_file():
            raise EvaluationError(
                "no evaluation data: give DATA (a dataset or a split CSV); the model is not a run folder "
                "with a split.csv to take the test images from"
            )
        return _from_split_csv(run_split, "run split")
    path = Path(data).expanduser()
    if not path.exists():
        raise EvaluationError(f"{path}: no such file or folder")
    if is_split_csv(path):
        return _from_split_csv(path, "split csv")
    if (
        run_split is not None
        and run_split.is_file()
        and run_config is not None
        and not run_config.data.split_csv
        and _same_path(run_config.data.path, path)
        and data_format in (None, run_config.data.format)
    ):
        return replace(_from_split_csv(run_split, "run split"), path=str(path))
    return _from_dataset(path, with_splits, run_config, data_format, progress)


def load_evaluation_data(
    data: Path | str | SampleTable | None,
    split: str = "test",
    *,
    run_dir: Path | None = None,
    run_config: Any = None,
    data_format: str | None = None,
    progress: bool = False,
) -> EvaluationData:
    """The samples of one split of the evaluation data (`read_evaluation_source` + `select`)."""
    _check_split(split)
    source = read_evaluation_source(
        data,
        with_splits=split != "all",
        run_dir=run_dir,
        run_config=run_config,
        data_format=data_format,
        progress=progress,
    )
    if "val" in trained_splits(run_config) and source.origin == "run split" and split in ("val", "all"):
        log.warning(
            "%s was trained on its val images too (train.fit_on_val): scores on %r, and a calibration "
            "or ensemble weights fitted on val, are optimistic",
            run_dir,
            split,
        )
    return source.select(split)
