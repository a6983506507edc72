"""`train`: one `Config` in, one run directory out. What `carid train CONFIG.yaml` calls.

The run directory `{config.run_dir}/{name}/` holds:

    config.yaml            the resolved config (every key, defaults included)
    split.csv (+ .json)    the exact train/val/test split used (reused on resume)
    checks.json            the data-check report (when the data was inspected here)
    checkpoints/best.ckpt  best epoch by `train.monitor`; checkpoints/last.ckpt: the latest epoch
    metrics.csv            Lightning's CSVLogger, per-epoch train/val metrics and learning rates
    curves.png             loss, accuracy and IoU per epoch
    lr_find.json/.png      the learning-rate finder's curve and suggestion (when `train.lr_find`)
    summary.json           what the run did: best score, last metrics, epochs, timing, data counts

Data: `config.data.split_csv` when set, else `config.data.path` (or the default shared dataset via
`resolve_data_path`) read, checked and split by `inspect_dataset`; samples with error-level
problems are left out. With `data.label_level` other than "class", labels are mapped through the
taxonomy parsed from the class names.

Name: `config.name`, else the name given by the caller (the CLI passes the config file's stem), else
"{backbone}-{label level}-{size}px"; an automatic name gets "-2", "-3", ... when a run of that name
exists. `resume=True` continues the run of that name (the newest numbered one for automatic names)
from `checkpoints/last.ckpt` up to `train.epochs`; metrics.csv keeps the rows of completed epochs.

Hardware: `train.accelerator/devices/strategy` go to the Trainer as they are, except that DDP on
CPU gets the gloo backend (`DDPStrategy(process_group_backend="gloo")`) so that `strategy: ddp,
accelerator: cpu, devices: 2` works by config alone. Lightning's DDP launcher re-runs the command
for the other ranks; those find the run directory through the `CARID_TRAIN_RUN_DIR` environment
variable and read the split from it, and only rank 0 writes files. precision "auto" is
"bf16-mixed" (or "16-mixed") when CUDA is used, else 32-bit.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from carid import __version__
from carid.config import (
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    resolve_data_path,
    save_config,
    to_dict,
)
from carid.data.samples import SampleTable
from carid.data.split import load_split, save_split, splits_of
from carid.files import write_atomic, write_json
from carid.preprocess import INTERPOLATIONS, PreprocessSpec
from carid.reporting import figure_png
from carid.taxonomy import Taxonomy
from carid.training.callbacks import StagedUnfreezing
from carid.training.datamodule import CarDataModule, sample_label
from carid.training.module import CarModule, ModelMetadata
from carid.training.plots import epoch_metrics, plot_curves

log = logging.getLogger(__name__)

RUN_DIR_ENV = "CARID_TRAIN_RUN_DIR"
# Lightning warnings that say nothing useful about a carid run: few loader workers is the user's
# choice, tiny datasets log less often than every 50 steps, the run dir holds carid's own files
# (metrics.csv is handled by `ResumableCSVLogger`; checkpoints/ is reused on resume), and frozen
# BatchNorm layers are in eval mode on purpose (see callbacks.py).
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*Experiment logs directory .* exists and is not empty.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*module\\(s\\) in eval mode at the start of training.*",
)
CHECKPOINT_DIR = "checkpoints"
BEST = "best"
LAST = "last"


@dataclass(frozen=True)
class RunResult:
    """What a training run produced. Paths are absolute; metrics are plain floats/ints/strings.

    metrics: "best_score" (of `monitor`), "monitor", "epochs_completed", the last epoch's logged
        metrics ("val/acc", "train/loss", ...) and timing ("seconds").
    """

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "best_checkpoint": None if self.best_checkpoint is None else str(self.best_checkpoint),
            "last_checkpoint": None if self.last_checkpoint is None else str(self.last_checkpoint),
            "metrics": dict(self.metrics),
        }


# --- config and run directory ------------------------------------------------------------------


def default_run_name(config: Config) -> str:
    return f"{config.model.backbone}-{config.data.label_level}-{config.model.image_size}px"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    if not cleaned:
        raise ConfigError(f"name: {name!r} is not usable as a folder name")
    return cleaned


def _holds_run(folder: Path) -> bool:
    return (folder / CHECKPOINT_DIR).is_dir() and any((folder / CHECKPOINT_DIR).glob("*.ckpt"))


def resolve_run_dir(config: Config, resume: bool, default_name: str | None = None) -> Path:
    """The run directory (absolute; not created here). See the module docstring for the naming rules."""
    root = Path(config.run_dir).expanduser().resolve()
    if config.name:
        folder = root / _safe_name(config.name)
        if not resume and _holds_run(folder):
            raise ConfigError(
                f"{folder} already holds a run; pass --resume to continue it "
                "or choose another name (--set name=...)"
            )
        return folder
    base = _safe_name(default_name or default_run_name(config))
    numbered = re.compile(re.escape(base) + r"(?:-(\d+))?")
    existing: list[tuple[int, Path]] = []
    if root.is_dir():
        for folder in root.iterdir():
            match = numbered.fullmatch(folder.name)
            if match and folder.is_dir():
                existing.append((int(match.group(1) or 1), folder))
    if resume and existing:
        return max(existing)[1]
    number = 1
    while True:
        folder = root / (base if number == 1 else f"{base}-{number}")
        if not _holds_run(folder) and not (folder / "summary.json").exists():
            return folder
        number += 1


def _is_ddp_worker() -> bool:
    """True in the processes Lightning's DDP launcher starts for ranks other than 0."""
    ranks = (os.environ.get("LOCAL_RANK", "0"), os.environ.get("NODE_RANK", "0"))
    return bool(os.environ.get(RUN_DIR_ENV)) and any(rank not in ("", "0") for rank in ranks)


# --- data -----------------------------------------------------------------------------------------


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
    run_split = run_dir / "split.csv"
    if reuse_split and run_split.exists():
        return load_split(run_split)
    if config.data.split_csv:
        split_path = Path(config.data.split_csv).expanduser()
        if not split_path.exists():
            raise ConfigError(f"data.split_csv: {split_path}: no such file")
        table = load_split(split_path)
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
    return _table_with_splits(inspection.report.usable(), inspection.splits)


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


# --- hardware --------------------------------------------------------------------------------------


def _uses_cuda(accelerator: str) -> bool:
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def resolve_precision(precision: str, accelerator: str) -> str:
    """ "auto" -> bf16-mixed / 16-mixed on CUDA, 32-true otherwise; anything else as given."""
    if precision != "auto":
        return precision
    if _uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_strategy(strategy: str, accelerator: str) -> Any:
    """The Trainer's strategy: DDP variants on CPU get the gloo backend; the rest pass through."""
    if not strategy.startswith("ddp") or _uses_cuda(accelerator):
        return strategy
    from lightning.pytorch.strategies import DDPStrategy

    options: dict[str, Any] = {"process_group_backend": "gloo"}
    if "find_unused_parameters_true" in strategy:
        options["find_unused_parameters"] = True
    if strategy.startswith("ddp_spawn"):
        options["start_method"] = "spawn"
    elif strategy.startswith("ddp_fork") or strategy.startswith("ddp_notebook"):
        options["start_method"] = "fork"
    return DDPStrategy(**options)


def _is_distributed(config: Config) -> bool:
    devices = config.train.devices
    many = (
        devices == -1
        or (isinstance(devices, int) and devices > 1)
        or (isinstance(devices, str) and devices not in ("1", "auto"))
    )
    return config.train.strategy.startswith("ddp") or (many and config.train.strategy == "auto")


# --- logging ---------------------------------------------------------------------------------------


class _AtomicMetricsWriter(ExperimentWriter):
    """Lightning's CSV writer, but every save replaces metrics.csv whole through a temporary file.

    Lightning appends rows, and rewrites the file in place (truncate, then write) whenever a new
    column appears, which happens right after the first checkpoint when the epoch's train metrics
    arrive. A process killed inside that rewrite left a file without the rows it had finished.
    Here all rows stay in memory (a few per epoch) and each save writes them under a temporary
    name and renames it over metrics.csv, so the file on disk is always a complete earlier state
    (on resume too: the old file stays until the first save replaces it).
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir=log_dir)
        self._saved_rows: list[dict[str, Any]] = []

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes an old metrics.csv here; the first save replaces it instead."""

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self._saved_rows.extend(self.metrics)
        self.metrics = []
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(self._saved_rows)
        write_atomic(Path(self.metrics_file_path), buffer.getvalue().encode("utf-8"))


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger (metrics.csv directly in the run directory) that survives resuming.

    Lightning's CSV writer deletes an existing metrics.csv when it starts. On resume, the rows of
    the epochs the checkpoint completed are read first and written back ahead of the new ones;
    rows logged after the checkpoint (an interrupted epoch) are dropped, because that epoch runs
    again. Rows are flushed at every logging call, each flush replacing the file atomically
    (`_AtomicMetricsWriter`), so an interrupted run loses nothing it finished.
    """

    def __init__(self, run_dir: Path, keep_through: tuple[int, int] | None = None) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)
        self._kept_rows: list[dict[str, str]] = []
        if keep_through is not None:
            self._kept_rows = _rows_through(Path(run_dir) / "metrics.csv", *keep_through)

    @property
    @rank_zero_experiment
    def experiment(self) -> _AtomicMetricsWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = _AtomicMetricsWriter(log_dir=self.log_dir)
            writer.metrics = [dict(row) for row in self._kept_rows]
            self._kept_rows = []
            self._experiment = writer
        return self._experiment


def _rows_through(metrics_csv: Path, last_epoch: int, global_step: int) -> list[dict[str, str]]:
    """Rows of epochs <= last_epoch (rows without an epoch: steps < global_step)."""
    if not metrics_csv.exists():
        return []
    kept = []
    with metrics_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            epoch, step = row.get("epoch") or "", row.get("step") or ""
            try:
                keep = int(float(epoch)) <= last_epoch if epoch else int(float(step)) < global_step
            except ValueError:
                keep = False
            if keep:
                kept.append({key: value for key, value in row.items() if key is not None})
    return kept


def _progress_bar(progress: bool) -> list[Callback]:
    if not progress:
        return []
    try:
        import rich  # noqa: F401
    except ImportError:
        return [TQDMProgressBar()]
    return [RichProgressBar(leave=True)]


def _monitor_mode(monitor: str) -> str:
    return "min" if "loss" in monitor.split("/")[-1] else "max"


# --- files -----------------------------------------------------------------------------------------


def _checkpoint_progress(path: Path) -> tuple[int, int]:
    """(epoch, global_step) recorded in a Lightning checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return int(checkpoint.get("epoch", -1)), int(checkpoint.get("global_step", 0))


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


# --- the entry points ------------------------------------------------------------------------------


def train(
    config: Config,
    overrides: Sequence[str] | None = None,
    *,
    resume: bool = False,
    default_name: str | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train per `config` (plus `--set` style `overrides`) and return what the run produced.

    resume: continue the run of this name from its checkpoints/last.ckpt (a run without one starts
        over in the same directory).
    default_name: the run name when `config.name` is None (the CLI passes the config file's stem).
    progress: show progress bars (epochs, batches, ETA) and the data-check progress.
    callbacks: extra Lightning callbacks (tests use them to watch the run).
    Raises ConfigError for settings that cannot work together, naming the keys.
    """
    started = time.perf_counter()
    config = apply_overrides(config, overrides)
    _check_combinations(config)
    worker = _is_ddp_worker()
    run_dir = Path(os.environ[RUN_DIR_ENV]) if worker else resolve_run_dir(config, resume, default_name)
    write = not worker
    last_path = run_dir / CHECKPOINT_DIR / f"{LAST}.ckpt"
    resuming = resume and last_path.exists()
    if resume and not resuming and write:
        log.warning("%s has no checkpoint to resume from; starting the run from epoch 0", run_dir)
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")

    L.seed_everything(config.train.seed, workers=True, verbose=False)
    table = load_run_data(config, run_dir, reuse_split=resuming or worker, write=write, progress=progress)
    prepared = prepare_labels(table, config.data.label_level)
    module, datamodule = build_model(config, prepared, run_dir.name)
    if config.train.fit_on_val:
        datamodule.join_val_to_train()

    feature_cache = None
    fit_data: L.LightningDataModule = datamodule
    if config.train.cache_features:
        from carid.training.features import FeatureDataModule, build_feature_cache

        cached, feature_cache = build_feature_cache(
            module.network,
            datamodule,
            Path(config.run_dir).expanduser().resolve() / "feature-cache",
            augment_passes=int(getattr(config.train, "cache_augment_passes", 0)),
            seed=config.train.seed,
            device="cuda" if _uses_cuda(config.train.accelerator) else "cpu",
            progress=progress,
        )
        fit_data = FeatureDataModule(cached, batch_size=config.train.batch_size, seed=config.train.seed)

    has_val = bool(datamodule.positions["val"]) and config.train.limit_val_batches != 0
    # a refit keeps its last epoch (monitor None): train/loss would pick by augmented-batch noise
    monitor = None if config.train.fit_on_val else config.train.monitor if has_val else "train/loss"
    checkpointing, all_callbacks = build_callbacks(config, run_dir, monitor, progress)
    keep = _checkpoint_progress(last_path) if resuming and write else None
    loggers: list[Logger] = [ResumableCSVLogger(run_dir, keep_through=keep)]
    if config.train.tensorboard:
        loggers.append(_tensorboard_logger(run_dir))
    trainer = L.Trainer(
        max_epochs=config.train.epochs,
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        strategy=resolve_strategy(config.train.strategy, config.train.accelerator),
        precision=resolve_precision(config.train.precision, config.train.accelerator),  # type: ignore[arg-type]
        deterministic="warn" if config.train.deterministic else False,
        limit_train_batches=_limit(config.train.limit_train_batches),
        limit_val_batches=_limit(config.train.limit_val_batches) if has_val else 0,
        callbacks=[*all_callbacks, *callbacks],
        logger=loggers,
        default_root_dir=str(run_dir),
        log_every_n_steps=max(1, min(50, _steps_per_epoch(fit_data, config))),
        num_sanity_val_steps=0 if resuming else 1,
        enable_progress_bar=progress,
        enable_model_summary=progress,
    )

    lr_found = None
    previous_env = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # for the processes Lightning's DDP launcher starts
    try:
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            if config.train.lr_find:
                lr_found = _find_lr(trainer, module, fit_data, run_dir, resuming, write, config)
            trainer.fit(module, datamodule=fit_data, ckpt_path=str(last_path) if resuming else None)
    finally:
        if previous_env is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous_env

    best_path = run_dir / CHECKPOINT_DIR / f"{BEST}.ckpt"
    best = best_path if best_path.exists() else None
    metrics: dict[str, Any] = {"monitor": monitor, "best_score": _plain(checkpointing.best_model_score)}
    if not trainer.is_global_zero:
        return RunResult(run_dir, best, last_path, metrics)

    test_metrics: dict[str, float] = {}
    if config.train.test_after_fit and best is not None and datamodule.positions["test"]:
        if _is_distributed(config):
            log.warning(
                "skipping the test-split evaluation under DDP; run `carid evaluate` on the best checkpoint"
            )
        else:
            with warnings.catch_warnings():
                for message in QUIET_WARNINGS:
                    warnings.filterwarnings("ignore", message=message)
                warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
                # a trainer of its own, so the test metrics go to summary.json, not into metrics.csv
                tester = L.Trainer(
                    accelerator=config.train.accelerator,
                    devices=1,
                    precision=resolve_precision(config.train.precision, config.train.accelerator),  # type: ignore[arg-type]
                    logger=False,
                    enable_progress_bar=progress,
                    enable_model_summary=False,
                    default_root_dir=str(run_dir),
                )
                results = tester.test(module, datamodule=datamodule, ckpt_path=str(best), verbose=False)
            test_metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
            metrics.update(test_metrics)

    records = epoch_metrics(run_dir / "metrics.csv")
    last_record = records[-1] if records else {}
    metrics.update({key: value for key, value in last_record.items() if key != "step"})
    metrics["epochs_completed"] = int(last_record["epoch"]) + 1 if last_record else 0
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    if feature_cache is not None:
        metrics["feature_cache_hit"] = feature_cache.hit
    plot_curves(run_dir / "metrics.csv", run_dir / "curves.png", title=run_dir.name)
    summary = {
        "name": run_dir.name,
        "run_dir": str(run_dir),
        "carid_version": __version__,
        "best_checkpoint": None if best is None else str(best),
        "last_checkpoint": str(last_path) if last_path.exists() else None,
        "monitor": monitor,
        "monitor_mode": None if monitor is None else _monitor_mode(monitor),
        "best_score": metrics["best_score"],
        "planned_epochs": config.train.epochs,
        "epochs_completed": metrics["epochs_completed"],
        "stopped_early": metrics["epochs_completed"] < config.train.epochs,
        "resumed": resuming,
        "fit_on_val": config.train.fit_on_val,
        "last_epoch_metrics": last_record,
        "test_metrics": test_metrics,
        "num_classes": module.metadata.num_classes,
        "label_level": config.data.label_level,
        "with_box": module.with_box,
        "dataset": prepared.source,
        "split_counts": {split: len(positions) for split, positions in datamodule.positions.items()},
        "lr": module.lr,
        "lr_find": lr_found,
        "feature_cache": None if feature_cache is None else feature_cache.to_dict(),
        "seconds": metrics["seconds"],
    }
    write_json(run_dir / "summary.json", summary)
    return RunResult(run_dir, best, last_path, metrics)


def build_model(config: Config, prepared: PreparedData, run_name: str) -> tuple[CarModule, CarDataModule]:
    """The network (box head when wanted), its preprocessing, the datamodule and the CarModule."""
    from carid.models.network import build_network, wants_box_head

    has_boxes = any(sample.has_box for sample in prepared.table.samples if sample.split == "train")
    try:
        with_box = wants_box_head(config.model.box_head, has_boxes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    network = build_network(config.model, num_classes=len(prepared.classes), with_box=with_box)
    weights_input = network.input_spec
    interpolation = (
        weights_input.interpolation if weights_input.interpolation in INTERPOLATIONS else "bilinear"
    )
    spec = PreprocessSpec.from_config(
        config.model,
        config.augment,
        mean=weights_input.mean,
        std=weights_input.std,
        interpolation=interpolation,
    )
    datamodule = CarDataModule(
        prepared.table,
        spec,
        classes=prepared.classes,
        label_of=prepared.label_of or sample_label,
        augment=config.augment,
        train=config.train,
    )
    metadata = ModelMetadata(
        class_names=tuple(prepared.classes),
        preprocess=spec.to_dict(),
        model=to_dict(config.model),
        with_box=with_box,
        label_level=config.data.label_level,
        taxonomy=prepared.taxonomy,
        extra={"run_name": run_name, "dataset": prepared.source},
    )
    train_config = config.train
    if train_config.cache_features:  # only the heads run, on [B, D] tensors
        train_config = replace(train_config, channels_last=False)
    return CarModule(network, train_config, metadata), datamodule


def build_callbacks(
    config: Config, run_dir: Path, monitor: str | None, progress: bool
) -> tuple[ModelCheckpoint, list[Callback]]:
    """Checkpointing (best by `monitor`, the latest epoch when None, + last), LR monitor, progress
    bar, early stopping, unfreezing."""
    mode = "min" if monitor is None else _monitor_mode(monitor)
    checkpointing = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename=BEST,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [checkpointing, LearningRateMonitor(logging_interval="epoch")]
    callbacks += _progress_bar(progress)
    if config.train.early_stopping_patience > 0 and monitor is not None:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=config.train.early_stopping_patience)
        )
    unfreezing = StagedUnfreezing(config.train.freeze, config.train.unfreeze)
    if unfreezing.is_active:
        callbacks.append(unfreezing)
    return checkpointing, callbacks


def train_from_cli(
    config_path: Path | str | None, overrides: Sequence[str] | None = None, resume: bool = False
) -> RunResult:
    """`carid train CONFIG.yaml [--set key=value ...] [--resume]`: the run is named after the file."""
    config = load_config(config_path, list(overrides or []))
    default_name = Path(config_path).stem if config_path is not None else None
    return train(config, resume=resume, default_name=default_name, progress=True)


# --- helpers of train ----------------------------------------------------------------------------


def _check_combinations(config: Config) -> None:
    train = config.train
    if train.cache_features and str(train.freeze).lower() != "backbone":
        raise ConfigError(
            "train.cache_features needs train.freeze: backbone "
            "(features can only be cached from a frozen backbone)"
        )
    if train.cache_features and train.unfreeze:
        raise ConfigError(
            "train.cache_features cannot be combined with train.unfreeze (the backbone must stay frozen)"
        )
    if train.fit_on_val and train.early_stopping_patience > 0:
        raise ConfigError(
            "train.fit_on_val trains on the val images too, so there is nothing held out for "
            "train.early_stopping_patience; set it to 0 and fix train.epochs"
        )
    if train.unfreeze and _is_distributed(config):
        raise ConfigError(
            "train.unfreeze (staged unfreezing) does not work with DDP: DDP fixes the trainable parameters "
            "when it wraps the model. Use one device, or a fixed train.freeze."
        )


def _steps_per_epoch(datamodule: L.LightningDataModule, config: Config) -> int:
    try:
        batches = len(datamodule.train_dataloader())
    except (TypeError, ValueError):
        return 50
    limit = config.train.limit_train_batches
    if isinstance(limit, float):
        return max(1, int(batches * limit))
    return max(1, min(batches, int(limit)))


def _limit(value: float | int) -> float | int | None:
    """Lightning's limit_*_batches; None (all batches, without Lightning's notice) for 1.0."""
    return None if isinstance(value, float) and value == 1.0 else value


def _tensorboard_logger(run_dir: Path) -> Logger:
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "train.tensorboard: true needs the tensorboard package (pip install tensorboard)"
        ) from exc


def _find_lr(
    trainer: L.Trainer,
    module: CarModule,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    resuming: bool,
    write: bool,
    config: Config,
) -> dict[str, Any] | None:
    """Run Lightning's learning-rate finder, record it in the run dir and use its suggestion.

    On resume the recorded suggestion is reused (the optimizer state holds it anyway).
    """
    record_path = run_dir / "lr_find.json"
    if resuming and record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("suggestion"):
            module.lr = float(record["suggestion"])
        return record
    if _is_distributed(config):
        log.warning(
            "train.lr_find is skipped with DDP (each rank would find its own rate); run it on one device"
        )
        return None
    from lightning.pytorch.tuner import Tuner

    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False)
    if finder is None:
        return None
    suggestion = finder.suggestion()
    record = {
        "suggestion": suggestion,
        "configured_lr": config.train.lr,
        "lr": [float(v) for v in finder.results.get("lr", [])],
        "loss": [float(v) for v in finder.results.get("loss", [])],
    }
    if suggestion is not None:
        module.lr = float(suggestion)
    else:
        log.warning("the learning-rate finder gave no suggestion; keeping train.lr = %s", config.train.lr)
    if write:
        write_json(record_path, record)
        try:
            import matplotlib

            matplotlib.use("Agg")
            figure = finder.plot(suggest=suggestion is not None)
            write_atomic(run_dir / "lr_find.png", figure_png(figure))
            import matplotlib.pyplot as plt

            plt.close(figure)
        except Exception as exc:  # the plot is a convenience; the JSON is the record
            log.warning("could not draw the learning-rate finder plot: %s", exc)
    return record
