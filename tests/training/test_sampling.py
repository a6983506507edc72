"""The training order and augmentation seeds by (seed, epoch): reproducible, different per epoch, and
the same for a resumed run as for a run that went straight through."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from carid.training.fit import train
from carid.training.sampling import FIRST_EPOCH, EpochSampler, epoch_seed, split_key, trainer_epoch


def test_an_epoch_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(row for row, _ in first) == list(range(10))
    assert len({seed for _, seed in first}) == 10  # every draw its own augmentation seed
    again = EpochSampler(10, seed=3)
    assert list(again) == first
    sampler.set_epoch(5)
    fifth = list(sampler)
    assert fifth != first
    assert list(EpochSampler(10, seed=3, epoch=5)) == fifth  # no need to have gone through 0-4
    assert list(EpochSampler(10, seed=4)) != first


def test_a_pass_nobody_announced_counts_as_the_next_epoch() -> None:
    sampler = EpochSampler(8, seed=1)
    passes = [list(sampler) for _ in range(3)]
    assert passes[1] == list(EpochSampler(8, seed=1, epoch=1))
    assert passes[2] == list(EpochSampler(8, seed=1, epoch=2))
    sampler.set_epoch(1)
    assert list(sampler) == passes[1]


def test_weighted_draws_follow_the_weights_with_replacement() -> None:
    weights = torch.tensor([0.0, 1.0, 0.0, 3.0])
    rows = [row for row, _ in EpochSampler(4000, seed=0, weights=weights.repeat(1000))]
    picked = torch.tensor(rows) % 4
    assert set(picked.tolist()) == {1, 3}
    assert 2.6 < float((picked == 3).sum()) / float((picked == 1).sum()) < 3.4
    with pytest.raises(ValueError, match="3 weights for 4 rows"):
        EpochSampler(4, seed=0, weights=[1.0, 1.0, 1.0])


def test_keys_and_seeds() -> None:
    assert split_key(7) == (7, None)
    assert split_key((7, 99)) == (7, 99)
    assert split_key(torch.tensor(3)) == (3, None)
    assert epoch_seed(1, 2) != epoch_seed(1, 3) != epoch_seed(2, 2)
    assert epoch_seed(1, 2, 0) != epoch_seed(1, 2, 1)


def test_trainer_epoch_is_the_next_epoch_to_train() -> None:
    assert trainer_epoch(SimpleNamespace()) == 0
    assert trainer_epoch(SimpleNamespace(**{FIRST_EPOCH: 4})) == 4  # resuming, before the trainer attached
    progress = SimpleNamespace(epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=2)))
    trainer = SimpleNamespace(fit_loop=progress, current_epoch=1)
    assert trainer_epoch(SimpleNamespace(trainer=trainer)) == 2
    assert trainer_epoch(SimpleNamespace(trainer=trainer, **{FIRST_EPOCH: 3})) == 3


class Seen(L.Callback):
    """Per epoch: the rows of each training batch and the sum of its first image."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[tuple[list[int], float]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        row = (batch["index"].tolist(), round(float(batch["image"][0].sum()), 3))
        self.epochs.setdefault(trainer.current_epoch, []).append(row)


def test_a_resumed_run_trains_on_what_an_uninterrupted_run_does(tiny_config) -> None:
    """Before, a resumed run's first epoch replayed the run's first epoch: same order, same
    augmentations (the samplers and worker seeds started again from train.seed)."""
    settings = {"epochs": 3, "num_workers": 1, "batch_size": 4}
    straight, resumed = Seen(), Seen()
    train(tiny_config(name="straight", train=settings), progress=False, callbacks=[straight])
    config = tiny_config(name="paused", train={**settings, "epochs": 1})
    train(config, progress=False)
    train(
        replace(config, train=replace(config.train, epochs=3)),
        progress=False,
        callbacks=[resumed],
        resume=True,
    )
    assert sorted(resumed.epochs) == [1, 2]
    assert straight.epochs[0] != straight.epochs[1]
    assert resumed.epochs[1] == straight.epochs[1] and resumed.epochs[2] == straight.epochs[2]
