"""The order of a training epoch and the seed of each photo's augmentation, as a function of
(train.seed, epoch, draw): the same whether a run goes straight through or is resumed.

`EpochSampler` draws an epoch's rows (a shuffle, or with `train.balance: sampler` class-weighted draws
with replacement) from a generator seeded by (seed, epoch), and yields each row with the seed of its
augmentation: `(position, item_seed)`. The datasets (`CarDataset`, the detector's, the feature and
stage caches) take such a key (`split_key`) and seed their augmentation with it before drawing, so
the photo a worker process loads is augmented the same way whichever worker loads it.

Lightning calls `set_epoch` on a training loader's sampler before every epoch, as it does for
torch's `DistributedSampler`, but a resumed run's first epoch starts its worker processes (which
draw ahead) before that call: so a datamodule builds its training loader at the trainer's current
epoch (`trainer_epoch`). When nobody calls `set_epoch` (a loader iterated by hand, or Lightning's DDP
wrapper, which does not pass the call on), each new pass counts as the next epoch.

Written by hand because torch's samplers (`RandomSampler`, `WeightedRandomSampler`) and the worker
seeds keep one generator running across epochs: a resumed run starts them again from the seed, so
its first epoch replayed the first epoch of the run, in the same order with the same augmentations
(a Stanford run resumed twice trained three times on its first epoch's draws).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

Key = int | tuple[int, int]
FIRST_EPOCH = "first_epoch"  # the datamodule attribute a resumed run sets (see trainer_epoch)


def split_key(key: Key | Sequence[int] | Tensor) -> tuple[int, int | None]:
    """A dataset key -> (position, augmentation seed or None): an int from an ordinary loader, a
    pair from `EpochSampler`."""
    if isinstance(key, tuple | list):
        position, seed = key
        return int(position), int(seed)
    return int(key), None  # type: ignore[arg-type]


def epoch_seed(seed: int, epoch: int, draw: int | None = None) -> int:
    """A 32-bit seed from (seed, epoch[, draw]), well mixed (NumPy's SeedSequence)."""
    entropy = [seed % 2**32, epoch] if draw is None else [seed % 2**32, epoch, draw]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (position, augmentation seed) for `size` rows per epoch: a permutation, or with
    `weights` (float [size]) that many draws with replacement, each row drawn in proportion to its
    weight. Both depend only on (seed, epoch)."""

    def __init__(
        self,
        size: int,
        seed: int,
        weights: Sequence[float] | np.ndarray | Tensor | None = None,
        epoch: int = 0,
    ):
        self.size = int(size)
        self.seed = int(seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None and len(self.weights) != self.size:
            raise ValueError(f"EpochSampler: {len(self.weights)} weights for {self.size} rows")
        self.epoch = int(epoch)
        self._epoch_set = True  # the first pass is `epoch`
        self._last: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self._epoch_set and self._last is not None:
            self.epoch = self._last + 1  # a pass nobody announced: the next epoch
        self._epoch_set, self._last = False, self.epoch
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is None:
            rows = torch.randperm(self.size, generator=generator)
        else:
            rows = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        epoch = self.epoch
        for draw, row in enumerate(rows.tolist()):
            yield row, epoch_seed(self.seed, epoch, draw)


def trainer_epoch(datamodule: object) -> int:
    """The epoch a datamodule's training loader built now starts at: the attached trainer's count of
    processed epochs (the number Lightning passes to `set_epoch`), and at least the datamodule's
    `first_epoch` (set by `carid.training.fit` when it resumes: Lightning builds and starts the
    loader while it restores the checkpoint, before its own count is restored). 0 without either."""
    first = int(getattr(datamodule, FIRST_EPOCH, 0) or 0)
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return first
    progress = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_progress", None), "current", None)
    processed = getattr(progress, "processed", None)
    return max(first, int(processed) if isinstance(processed, int) else int(trainer.current_epoch))
