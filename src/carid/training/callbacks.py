"""Training callbacks: staged unfreezing of the backbone (a Lightning `BaseFinetuning`), and the
callbacks of a run (`build_callbacks`: checkpointing, LR monitor, the per-epoch table and
results.csv, the progress bar on a terminal, early stopping).

`StagedUnfreezing` follows `TrainConfig.freeze` and `TrainConfig.unfreeze`:

- `freeze` sets what is trainable from epoch 0: "none" (everything), "backbone" (heads only), or a
  backbone stage name / layer index from which the backbone is trainable ("blocks.4", 70);
- each `UnfreezeStep(epoch, start)` makes the backbone trainable from `start` upwards at the start
  of that epoch ("none"/0 opens it all).

At every epoch start the callback applies the step in force for that epoch (so a resumed run is
frozen exactly as the uninterrupted one was) and logs `train/trainable_params`. The optimizer is
never changed: `CarModule` puts every backbone parameter, frozen or not, in the backbone parameter
groups at the discriminative learning rate (optimizers skip parameters that get no gradient), so a
newly unfrozen parameter trains at `lr * backbone_lr_scale` under the running schedule with no
second param group, and resuming needs no param-group bookkeeping. The freezing itself is
`CarNet.apply_freeze`; BatchNorm layers whose parameters are frozen are kept in eval mode by the
backbone (`Backbone.train`), so their running statistics stay the pretrained ones.

DDP wraps the model once, with the parameters that require a gradient at that moment, so staged
unfreezing (changing `requires_grad` mid-run) cannot be combined with DDP; `carid.training.fit`
refuses that combination with a clear message. A fixed `freeze` works with DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import (
    BaseFinetuning,
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from torch import nn
from torch.optim import Optimizer

from carid.config import Config, ConfigError, UnfreezeStep
from carid.training.console import is_terminal
from carid.training.epoch_table import EpochTable
from carid.training.run_setup import BEST, CHECKPOINT_DIR, LAST

ALL = "none"  # `freeze` value meaning: nothing frozen
BACKBONE = "backbone"  # `freeze` value meaning: the whole backbone frozen


def _normalized(start: str | int) -> str | int:
    """0 and "none" both mean "the whole backbone is trainable"."""
    if isinstance(start, bool):
        raise ValueError(f"freeze/unfreeze start must be a stage name or a layer index, got {start!r}")
    if start == 0 or (isinstance(start, str) and start.strip().lower() in {"none", "all", ""}):
        return ALL
    if isinstance(start, str) and start.strip().lower() == BACKBONE:
        return BACKBONE
    return start


def trainable_count(module: nn.Module) -> int:
    """Number of parameter values (not tensors) that require a gradient."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class StagedUnfreezing(BaseFinetuning):
    """Freeze the backbone per `TrainConfig.freeze` and open it per `TrainConfig.unfreeze`.

    history: (epoch, start in force, trainable parameter values) recorded at every epoch start.
    """

    def __init__(self, freeze: str | int = ALL, unfreeze: Sequence[UnfreezeStep] = ()) -> None:
        super().__init__()
        self.freeze = _normalized(freeze)
        self.steps = tuple(sorted(unfreeze, key=lambda step: step.epoch))
        for step in self.steps:
            if step.epoch < 0:
                raise ValueError(f"train.unfreeze: epoch must be >= 0, got {step.epoch}")
        self.current: str | int | None = None
        self.history: list[tuple[int, str | int, int]] = []

    @property
    def is_active(self) -> bool:
        """False when nothing is ever frozen (the callback would do nothing)."""
        return self.freeze != ALL or any(_normalized(step.start) != ALL for step in self.steps)

    def start_at(self, epoch: int) -> str | int:
        """The trainable-from point in force during `epoch`."""
        start: str | int = self.freeze
        for step in self.steps:
            if step.epoch <= epoch:
                start = _normalized(step.start)
        return start

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self._apply(pl_module, self.start_at(0))

    def finetune_function(
        self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer | None
    ) -> None:
        start = self.start_at(epoch)
        if start != self.current:
            self._apply(pl_module, start)

    def _apply(self, pl_module: L.LightningModule, start: str | int) -> None:
        pl_module.network.apply_freeze(start)
        self.current = start

    # The optimizer never changes (see the module docstring), so BaseFinetuning's param-group
    # bookkeeping is not used: no stored metadata, nothing to restore on resume.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        self.finetune_function(pl_module, epoch, None)
        trainable = trainable_count(pl_module.network)
        self.history.append((epoch, self.start_at(epoch), trainable))
        pl_module.log(
            "train/trainable_params", float(trainable), on_step=False, on_epoch=True, sync_dist=False
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restarting = False

    def state_dict(self) -> dict[str, Any]:
        return {"start": None if self.current is None else self.current}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.current = None  # re-applied from the schedule at the next epoch start


class LatestCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt after every epoch and once more when training ends.

    Lightning's `save_last=True` only copies the checkpoints its monitor keeps, so after an epoch
    that did not improve, last.ckpt was an older epoch and a resumed run repeated epochs. The save
    at the end records the finished loop (every planned epoch completed), as `save_last` does.
    """

    def __init__(self, dirpath: Path) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=LAST,
            monitor=None,
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not trainer.sanity_checking and trainer.global_step > 0:
            trainer.save_checkpoint(Path(self.dirpath) / f"{LAST}.ckpt")


def build_callbacks(
    config: Config, run_dir: Path, monitor: str | None, progress: bool
) -> tuple[ModelCheckpoint, list[Callback]]:
    """Checkpointing (best by `monitor`, the latest epoch when None, + last), LR monitor, the epoch
    table (printed when `progress`; results.csv always), the progress bar (on a terminal only: in a
    file a live bar prints nothing until it ends), early stopping, the weights' moving average,
    unfreezing."""
    mode = "min" if monitor is None else monitor_mode(monitor)
    checkpointing = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename=BEST,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=monitor is None,  # a copy of the checkpoint it saves, which is then every epoch's
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [checkpointing, LearningRateMonitor(logging_interval="epoch")]
    if monitor is not None:  # save_last only copies the best checkpoint: resuming needs every epoch's
        callbacks.append(LatestCheckpoint(run_dir / CHECKPOINT_DIR))
    callbacks.append(EpochTable(run_dir, monitor, mode, show=progress))
    callbacks += progress_bar(progress and is_terminal())
    if config.train.early_stopping_patience > 0 and monitor is not None:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=config.train.early_stopping_patience)
        )
    if not 0 <= config.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0 = off), got {config.train.ema_decay}")
    if config.train.ema_decay > 0:
        callbacks.append(EMAWeightAveraging(decay=config.train.ema_decay))
    unfreezing = StagedUnfreezing(config.train.freeze, config.train.unfreeze)
    if unfreezing.is_active:
        callbacks.append(unfreezing)
    return checkpointing, callbacks


def progress_bar(progress: bool) -> list[Callback]:
    """The console progress bar (rich when installed, else tqdm; each epoch's bar is replaced by its
    table row); none when `progress` is False."""
    if not progress:
        return []
    try:
        import rich  # noqa: F401
    except ImportError:
        return [TQDMProgressBar()]
    return [RichProgressBar(leave=False)]


def monitor_mode(monitor: str) -> str:
    """ "min" for a loss, "max" for anything else (accuracy, IoU)."""
    return "min" if "loss" in monitor.split("/")[-1] else "max"
