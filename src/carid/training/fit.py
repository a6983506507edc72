"""`train`: one `Config` in, one run directory out. What `carid train CONFIG.yaml` calls.

The run directory `{config.run_dir}/{name}/` (named as `carid.training.run_setup` says) holds:

    config.yaml            the resolved config (every key, defaults included)
    split.csv (+ .json)    the exact train/val/test split used (reused on resume)
    checks.json            the data-check report (when the data was inspected here)
    checkpoints/best.ckpt  best epoch by `train.monitor`; checkpoints/last.ckpt: the latest epoch
    results.csv            one row per epoch: time, train/val metrics, learning rates (`epoch_table`)
    metrics.csv            Lightning's CSVLogger, one row per logging call (what `carid compare` reads)
    curves.png             loss, accuracy (or mAP) and IoU per epoch, drawn when training ends
    lr_find.json/.png      the learning-rate finder's curve and suggestion (when `train.lr_find`)
    summary.json           what the run did: best score and epoch, last metrics, epochs, timing, data counts

The console gets the run folder first, the model in one line, then one row per epoch (epoch, time,
train and val loss, val top-1/top-5 or mAP, IoU when boxed, time left): a Rich table on a terminal,
plain lines in a file or a CI log (`carid.training.epoch_table`, `carid.training.console`). Epochs
are counted from 1 there, in results.csv and in summary.json's `best_epoch`; metrics.csv and the
checkpoints keep Lightning's count from 0.

The parts, each in a module of its own: the data and classes (`carid.training.run_data`), the run
folder name (`run_setup`), hardware and DDP (`hardware`), metrics.csv and TensorBoard (`loggers`), the
callbacks (`callbacks`), what is printed (`console`, `epoch_table`) and the learning-rate finder
(`lr_find`).

`resume=True` continues the run of that name from `checkpoints/last.ckpt` up to `train.epochs`;
metrics.csv keeps the rows of completed epochs. Under DDP only rank 0 writes files; the other ranks
read the split from the run directory.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers import Logger

from carid import __version__
from carid.artifacts.checkpoint import ModelMetadata
from carid.config import Config, ConfigError, TrainConfig, apply_overrides, load_config, save_config, to_dict
from carid.files import write_json
from carid.preprocess import INTERPOLATIONS, PreprocessSpec
from carid.training.callbacks import build_callbacks, monitor_mode
from carid.training.console import is_terminal, quiet_lightning, say
from carid.training.datamodule import CarDataModule, sample_label
from carid.training.epoch_table import RESULTS_FILE
from carid.training.hardware import is_distributed, resolve_precision, resolve_strategy, uses_cuda
from carid.training.loggers import ResumableCSVLogger, checkpoint_progress, resume_epoch, tensorboard_logger
from carid.training.lr_find import find_lr
from carid.training.module import CarModule
from carid.training.plots import epoch_metrics, plot_curves
from carid.training.run_data import PreparedData, load_run_data, prepare_labels
from carid.training.run_setup import BEST, CHECKPOINT_DIR, LAST, RUN_DIR_ENV, is_ddp_worker, resolve_run_dir
from carid.training.sampling import FIRST_EPOCH
from carid.training.stage_cache import build_stage_training, is_stage_freeze

log = logging.getLogger(__name__)

# Lightning warnings that say nothing useful about a carid run: few loader workers is the user's
# choice, tiny datasets log less often than every 50 steps, the run dir holds carid's own files
# (metrics.csv is handled by `ResumableCSVLogger`; checkpoints/ is reused on resume), and frozen
# BatchNorm layers are in eval mode on purpose (see callbacks.py); torch's own deprecation of a class
# Lightning still uses is not the user's to fix.
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*Experiment logs directory .* exists and is not empty.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*module\\(s\\) in eval mode at the start of training.*",
    ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
)


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
    worker = is_ddp_worker()
    run_dir = Path(os.environ[RUN_DIR_ENV]) if worker else resolve_run_dir(config, resume, default_name)
    write = not worker
    last_path = run_dir / CHECKPOINT_DIR / f"{LAST}.ckpt"
    resuming = resume and last_path.exists()
    if resume and not resuming and write:
        log.warning("%s has no checkpoint to resume from; starting the run from epoch 0", run_dir)
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        if progress:
            say(f"run folder: {run_dir}")
    quiet_lightning()

    L.seed_everything(config.train.seed, workers=True, verbose=False)
    table = load_run_data(config, run_dir, reuse_split=resuming or worker, write=write, progress=progress)
    if config.task == "detect":
        from carid.training.detection import build_detection

        module, datamodule = build_detection(config, table, run_dir.name)
    else:
        module, datamodule = build_model(config, prepare_labels(table, config.data.label_level), run_dir.name)
        head = module.network.box_head
        if config.train.resize_schedule and head is not None and head.reads_feature_map:
            raise ConfigError(
                "train.resize_schedule changes the feature map's size, which the box head reads "
                "(model.box_input: map); use model.box_input: pooled, or no box head (model.box_head: off)"
            )
    if config.train.fit_on_val:
        datamodule.join_val_to_train()

    feature_cache = None
    fit_data: L.LightningDataModule = datamodule
    if config.train.cache_features and is_stage_freeze(config.train.freeze):
        module, fit_data, feature_cache = build_stage_training(
            module,
            datamodule,
            config.train,
            Path(config.run_dir).expanduser().resolve() / "feature-cache",
            device="cuda" if uses_cuda(config.train.accelerator) else "cpu",
            progress=progress,
        )
    elif config.train.cache_features:
        from carid.training.balance import Balance
        from carid.training.features import FeatureDataModule, build_feature_cache

        cached, feature_cache = build_feature_cache(
            module.network,
            datamodule,
            Path(config.run_dir).expanduser().resolve() / "feature-cache",
            augment_passes=int(getattr(config.train, "cache_augment_passes", 0)),
            seed=config.train.seed,
            device="cuda" if uses_cuda(config.train.accelerator) else "cpu",
            progress=progress,
        )
        balance = Balance.from_config(config.train)  # train.balance: sampler draws class-balanced rows
        fit_data = FeatureDataModule(cached, config.train.batch_size, seed=config.train.seed, balance=balance)

    has_val = bool(datamodule.positions["val"]) and config.train.limit_val_batches != 0
    # a refit keeps its last epoch (monitor None): train/loss would pick by augmented-batch noise
    monitor = None if config.train.fit_on_val else _monitor(config) if has_val else "train/loss"
    checkpointing, all_callbacks = build_callbacks(config, run_dir, monitor, progress)
    keep = checkpoint_progress(last_path) if resuming and write else None
    loggers: list[Logger] = [ResumableCSVLogger(run_dir, keep_through=keep)]
    if config.train.tensorboard:
        loggers.append(tensorboard_logger(run_dir))
    trainer = L.Trainer(
        max_epochs=config.train.epochs,
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        num_nodes=config.train.num_nodes,
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
        # a resize schedule changes the training photos' size between epochs: a new loader each epoch
        reload_dataloaders_every_n_epochs=1 if config.train.resize_schedule else 0,
        enable_progress_bar=any(isinstance(callback, ProgressBar) for callback in all_callbacks),
        enable_model_summary=False,  # the epoch table prints the model in one line
    )

    lr_found = None
    previous_env = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # for the processes Lightning's DDP launcher starts
    try:
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            if config.train.lr_find:
                lr_found = find_lr(trainer, module, fit_data, run_dir, resuming, write, config)
            if resuming:  # the epoch the loader's order and augmentations go on from
                setattr(fit_data, FIRST_EPOCH, resume_epoch(last_path))
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
        if is_distributed(config):
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
                    enable_progress_bar=progress and is_terminal(),
                    enable_model_summary=False,
                    default_root_dir=str(run_dir),
                )
                results = tester.test(module, datamodule=datamodule, ckpt_path=str(best), verbose=False)
            test_metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
            metrics.update(test_metrics)

    records = epoch_metrics(run_dir / "metrics.csv")
    last_record = records[-1] if records else {}
    skipped = ("step", "epoch")  # epochs_completed and best_epoch say which epochs, counted from 1
    metrics.update({key: _count(key, value) for key, value in last_record.items() if key not in skipped})
    metrics["epochs_completed"] = int(last_record["epoch"]) + 1 if last_record else 0
    metrics["best_epoch"] = checkpoint_progress(best)[0] + 1 if best is not None else None
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    if feature_cache is not None:
        metrics["feature_cache_hit"] = feature_cache.hit
    plot_curves(run_dir / RESULTS_FILE, run_dir / "curves.png", title=run_dir.name)
    summary = {
        "name": run_dir.name,
        "run_dir": str(run_dir),
        "carid_version": __version__,
        "best_checkpoint": None if best is None else str(best),
        "last_checkpoint": str(last_path) if last_path.exists() else None,
        "monitor": monitor,
        "monitor_mode": None if monitor is None else monitor_mode(monitor),
        "best_score": metrics["best_score"],
        "best_epoch": metrics["best_epoch"],
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
        "dataset": str(table.root),
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
        swap_rb=config.data.swap_rb,
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


def train_from_cli(
    config_path: Path | str | None, overrides: Sequence[str] | None = None, resume: bool = False
) -> RunResult:
    """`carid train CONFIG.yaml [--set key=value ...] [--resume]`: the run is named after the file."""
    config = load_config(config_path, list(overrides or []))
    default_name = Path(config_path).stem if config_path is not None else None
    return train(config, resume=resume, default_name=default_name, progress=True)


# --- helpers of train ----------------------------------------------------------------------------


def _monitor(config: Config) -> str:
    """train.monitor; a detect run left at the classification default keeps its best by val/map50."""
    if config.task == "detect" and config.train.monitor == TrainConfig.monitor:
        return "val/map50"
    return config.train.monitor


def _check_combinations(config: Config) -> None:
    train = config.train
    if config.task == "detect" and (train.cache_features or train.unfreeze or str(train.freeze) != "none"):
        raise ConfigError(
            "task: detect trains the whole detector: train.cache_features, train.freeze and "
            "train.unfreeze are for classification only"
        )
    if train.cache_features and str(train.freeze).lower() != "backbone" and not is_stage_freeze(train.freeze):
        raise ConfigError(
            "train.cache_features needs train.freeze: backbone (pooled features) or a backbone stage "
            "such as blocks.5 (the stage cache): features can only be cached from a frozen front"
        )
    if train.resize_schedule and (train.cache_features or config.task == "detect"):
        raise ConfigError(
            "train.resize_schedule resizes training photos between epochs: it needs full training "
            "on photos (not train.cache_features, whose cache holds one size, nor task: detect)"
        )
    epochs = [step.epoch for step in train.resize_schedule]
    if any(step.size < 32 or step.epoch < 0 for step in train.resize_schedule) or len(set(epochs)) != len(
        epochs
    ):
        raise ConfigError(
            "train.resize_schedule: each step needs epoch >= 0 (a different one per step) and size >= 32; "
            f"got {[(step.epoch, step.size) for step in train.resize_schedule]}"
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
    if train.unfreeze and is_distributed(config):
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


def _count(key: str, value: float) -> float | int:
    """A logged count (e.g. train/trainable_params) as an int; other metrics as they are."""
    return int(value) if key.endswith("_params") and float(value).is_integer() else value


def _plain(value: Any) -> Any:
    """A tensor score as a plain number (or list) for summary.json."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
