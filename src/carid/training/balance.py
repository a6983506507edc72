"""Class balancing for imbalanced training data, and the per-class recall that shows whether it helps.

`train.balance` picks the remedy, `train.balance_scheme` and `train.balance_beta` the class weights:

- "sampler": the training loader draws samples with replacement (`carid.training.sampling.EpochSampler`,
  as many draws per epoch as there are training rows), each with its class's weight, so a rare
  class is seen about as often as a common one;
- "loss": the class weights go into the cross-entropy (`CarLoss`), in training only, so val/loss
  and test/loss stay comparable with an unbalanced run.

Schemes (weights from the train split's class counts n_c, never from val or test):

- "inverse": w_c = 1 / n_c;
- "effective": the effective number of samples (Cui et al. 2019, "Class-Balanced Loss Based on
  Effective Number of Samples"): w_c = (1 - beta) / (1 - beta ** n_c); beta -> 1 tends to
  inverse frequency, beta = 0 gives equal weights (no balancing).

Weights are scaled to average 1 over the classes present in training (as the paper does); a class
with no training sample gets 0. The feature cache and the stage cache count the rows they train on
(augmented passes repeat every image equally often, so the weights are the same).

With balancing on, `ClassRecall` counts each class's hits at every validation (and at the test of
the best checkpoint) with torchmetrics' `MulticlassStatScores` (the counts `MulticlassRecall`
averages; recall = tp / (tp + fn)), prints one line per epoch through Lightning's rank-zero log,
and writes `per-class-recall.csv` (stage, epoch, class, support, recall) into the run folder.
Written by hand rather than as Lightning logs because a vector per epoch does not fit metrics.csv
(196 columns for Stanford Cars).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics.classification import MulticlassStatScores

from carid.config import ConfigError, TrainConfig
from carid.files import write_atomic
from carid.training.sampling import EpochSampler

MODES = ("none", "sampler", "loss")
SCHEMES = ("inverse", "effective")
RECALL_FILE = "per-class-recall.csv"
RECALL_COLUMNS = ("stage", "epoch", "class", "support", "recall")
# classes printed by name in the per-epoch line; with more, the lowest recalls are printed
PRINTED_CLASSES = 10


@dataclass(frozen=True)
class Balance:
    """The class balancing of a run: mode ("none", "sampler", "loss"), scheme, beta (see the module
    docstring). Raises ConfigError for a value outside those, naming the train key."""

    mode: str = "none"
    scheme: str = "inverse"
    beta: float = 0.999

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"train.balance must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.scheme not in SCHEMES:
            raise ConfigError(
                f"train.balance_scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}"
            )
        if not 0.0 <= self.beta < 1.0:
            raise ConfigError(f"train.balance_beta must be in [0, 1), got {self.beta}")

    @classmethod
    def from_config(cls, train: TrainConfig) -> Balance:
        return cls(train.balance, train.balance_scheme, train.balance_beta)

    @property
    def active(self) -> bool:
        return self.mode != "none"


def class_counts(labels: Sequence[int] | np.ndarray | Tensor, num_classes: int | None = None) -> np.ndarray:
    """int64 [C]: how many labels name each class; labels < 0 (unlabeled) are not counted."""
    values = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    values = values[values >= 0]
    size = max(num_classes or 0, int(values.max()) + 1 if len(values) else 0)
    return np.bincount(values, minlength=size).astype(np.int64)


def class_weights(
    counts: Sequence[int] | np.ndarray, scheme: str = "inverse", beta: float = 0.999
) -> np.ndarray:
    """float64 [C] weights from class counts: 1 / n ("inverse") or (1 - beta) / (1 - beta ** n)
    ("effective"), scaled to average 1 over the classes with n > 0; 0 where n == 0."""
    Balance(scheme=scheme, beta=beta)  # validates
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    if not present.any():
        raise ConfigError("train.balance: the training split has no labelled sample to count")
    weights = np.zeros_like(n)
    if scheme == "inverse":
        weights[present] = 1.0 / n[present]
    else:
        weights[present] = (1.0 - beta) / (1.0 - np.power(beta, n[present]))
    return weights * present.sum() / weights.sum()


def sample_weights(labels: Sequence[int] | np.ndarray | Tensor, balance: Balance) -> Tensor:
    """float64 [N]: each training row's draw weight, its class's weight (0 for an unlabeled row)."""
    values = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    weights = class_weights(class_counts(values), balance.scheme, balance.beta)
    per_row = np.where(values >= 0, weights[np.clip(values, 0, None)], 0.0)
    return torch.from_numpy(per_row)


def sampling_options(
    labels: Sequence[int] | np.ndarray | Tensor | None,
    balance: Balance | None,
    seed: int,
    size: int | None = None,
    epoch: int = 0,
) -> dict[str, Any]:
    """DataLoader keyword arguments of a training loader: an `EpochSampler` (carid.training.sampling)
    that shuffles, or with balance mode "sampler" draws len(labels) rows with replacement per epoch,
    each with its class's weight; both seeded by (seed, epoch), so a resumed run goes on as an
    uninterrupted one would. size: the number of rows (default len(labels)); epoch: the epoch the
    loader starts at (`carid.training.sampling.trainer_epoch`)."""
    if balance is None or balance.mode != "sampler":
        if size is None and labels is None:
            raise ValueError("sampling_options needs the labels or the size of the training rows")
        count = len(labels) if size is None else size  # type: ignore[arg-type]
        sampler = EpochSampler(count, seed, epoch=epoch)
    else:
        if labels is None:
            raise ConfigError("train.balance: sampler needs the labels of the training rows")
        sampler = EpochSampler(len(labels), seed, weights=sample_weights(labels, balance), epoch=epoch)
    # the loader's own generator still seeds the worker processes
    return {"sampler": sampler, "shuffle": False, "generator": torch.Generator().manual_seed(seed)}


def loss_weights(
    labels: Sequence[int] | np.ndarray | Tensor, balance: Balance, num_classes: int
) -> Tensor | None:
    """float32 [num_classes] cross-entropy class weights for balance mode "loss", else None."""
    if balance.mode != "loss":
        return None
    counts = class_counts(labels, num_classes)
    if len(counts) > num_classes:
        raise ConfigError(f"train.balance: a training label is >= the {num_classes} classes of the network")
    return torch.from_numpy(class_weights(counts, balance.scheme, balance.beta)).float()


def train_labels(datamodule: object) -> np.ndarray:
    """The class index of every row a datamodule trains on: `CarDataModule.train_labels()`, or the
    "label" tensor of the train split of a feature or stage cache (its `cached["train"]`)."""
    if hasattr(datamodule, "train_labels"):
        return np.asarray(datamodule.train_labels(), dtype=np.int64)
    cached = getattr(datamodule, "cached", None)
    if isinstance(cached, Mapping) and "train" in cached and "label" in cached["train"]:
        return np.asarray(cached["train"]["label"].cpu(), dtype=np.int64)
    raise ConfigError(
        "train.balance: loss needs the training data as a carid datamodule (CarDataModule or a feature "
        f"cache), got {type(datamodule).__name__}"
    )


class ClassRecall(nn.Module):
    """Per-class hit counts of the val and test stages; `report` turns them into recall, prints
    them and writes them into the run folder. A Module, so its counts follow the model's device;
    nothing of it goes into checkpoints."""

    STAGES = ("val", "test")

    def __init__(self, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = [str(name) for name in class_names]
        self.counts = nn.ModuleDict(
            {
                stage: MulticlassStatScores(num_classes=len(self.class_names), average=None, ignore_index=-1)
                for stage in self.STAGES
            }
        )

    def update(self, stage: str, logits: Tensor, labels: Tensor) -> None:
        if stage in self.counts:
            self.counts[stage].update(logits.detach(), labels)

    def compute(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """(recall float64 [C], support int64 [C]) of the stage so far, then its counts are reset.
        Every rank must call it under DDP (the counts are summed across ranks)."""
        metric = self.counts[stage]
        stats = metric.compute().cpu().numpy()  # [C, 5]: tp, fp, tn, fn, support
        metric.reset()
        true_positives, support = stats[:, 0].astype(np.float64), stats[:, 4].astype(np.int64)
        recall = np.divide(true_positives, support, out=np.zeros_like(true_positives), where=support > 0)
        return recall, support

    def epoch_end(self, trainer: Any, stage: str, epoch: int) -> None:
        """At the end of a val or test epoch of `trainer` (a Lightning Trainer): `report` into its
        default_root_dir (the run folder; written by rank zero only); Lightning's sanity-check
        batches are counted for nothing."""
        if trainer.sanity_checking:
            self.counts[stage].reset()
            return
        self.report(stage, epoch, Path(trainer.default_root_dir) if trainer.is_global_zero else None)

    def report(self, stage: str, epoch: int, folder: Path | None) -> np.ndarray:
        """Compute, print one line (rank zero) and, when `folder` is given, write the rows of this
        stage and epoch into folder/per-class-recall.csv (replacing rows of the same stage from this
        epoch on, so a resumed run does not repeat them). Returns the recall [C]."""
        recall, support = self.compute(stage)
        rank_zero_info(recall_line(stage, epoch, self.class_names, recall, support))
        if folder is not None:
            write_recall_rows(Path(folder) / RECALL_FILE, stage, epoch, self.class_names, recall, support)
        return recall


def recall_line(
    stage: str, epoch: int, class_names: Sequence[str], recall: np.ndarray, support: np.ndarray
) -> str:
    """`val per-class recall, epoch 3: mean 0.812; Mazda 0.400 (10), ...` (the lowest first when
    there are more than PRINTED_CLASSES classes)."""
    present = np.flatnonzero(support > 0)
    mean = float(recall[present].mean()) if len(present) else 0.0
    order = present[np.argsort(recall[present], kind="stable")] if len(present) > PRINTED_CLASSES else present
    shown = [f"{class_names[i]} {recall[i]:.3f} ({support[i]})" for i in order[:PRINTED_CLASSES]]
    more = f", ... ({len(present) - PRINTED_CLASSES} more)" if len(present) > PRINTED_CLASSES else ""
    return f"{stage} per-class recall, epoch {epoch}: mean {mean:.3f}; " + ", ".join(shown) + more


def read_recall_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a per-class-recall.csv ([] when there is none)."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_recall_rows(
    path: Path,
    stage: str,
    epoch: int,
    class_names: Sequence[str],
    recall: np.ndarray,
    support: np.ndarray,
) -> None:
    """Add one stage's epoch to per-class-recall.csv (atomically; see `ClassRecall.report`)."""
    kept = [row for row in read_recall_rows(path) if row["stage"] != stage or int(row["epoch"]) < epoch]
    new = [
        {
            "stage": stage,
            "epoch": str(epoch),
            "class": name,
            "support": str(int(count)),
            "recall": f"{value:.6f}",
        }
        for name, value, count in zip(class_names, recall, support, strict=True)
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECALL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([*kept, *new])
    write_atomic(path, buffer.getvalue())
