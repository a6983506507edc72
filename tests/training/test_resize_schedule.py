"""train.resize_schedule (progressive resizing): each epoch's size, the loaders, what is refused."""

from __future__ import annotations

import lightning as L
import pytest

from carid.config import ConfigError, ResizeStep
from carid.training.datamodule import scheduled_size
from carid.training.fit import train

SCHEDULE = [{"epoch": 0, "size": 32}, {"epoch": 1, "size": 48}]


def test_the_size_of_an_epoch_is_that_of_the_last_step_at_or_before_it() -> None:
    steps = (ResizeStep(epoch=4, size=160), ResizeStep(epoch=0, size=128), ResizeStep(epoch=8, size=192))
    assert [scheduled_size(steps, epoch) for epoch in (0, 3, 4, 7, 8, 20)] == [128, 128, 160, 160, 192, 192]
    assert scheduled_size((ResizeStep(epoch=2, size=96),), 1) is None  # before the first step: the run's own
    assert scheduled_size((), 5) is None


class Shapes(L.Callback):
    """The (height, width) of the training and validation batches, per epoch."""

    def __init__(self) -> None:
        self.train: dict[int, set[tuple[int, int]]] = {}
        self.val: dict[int, set[tuple[int, int]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.setdefault(trainer.current_epoch, set()).add(tuple(batch["image"].shape[-2:]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.val.setdefault(trainer.current_epoch, set()).add(tuple(batch["image"].shape[-2:]))


def test_training_photos_follow_the_schedule_and_validation_stays_at_the_model_size(tiny_config) -> None:
    config = tiny_config(
        name="resize",
        model={"image_size": 64, "box_input": "pooled"},
        train={"epochs": 3, "resize_schedule": SCHEDULE},
    )
    shapes = Shapes()
    result = train(config, progress=False, callbacks=[shapes])
    assert shapes.train == {0: {(32, 32)}, 1: {(48, 48)}, 2: {(48, 48)}}
    assert shapes.val == {0: {(64, 64)}, 1: {(64, 64)}, 2: {(64, 64)}}
    assert "test/acc" in result.metrics


def test_settings_that_cannot_work_are_refused_by_name(tiny_config) -> None:
    with pytest.raises(ConfigError, match="box_input: pooled"):
        train(tiny_config(name="r1", train={"resize_schedule": SCHEDULE}), progress=False)
    cached = {"resize_schedule": SCHEDULE, "freeze": "backbone", "cache_features": True}
    with pytest.raises(ConfigError, match=r"not train\.cache_features"):
        train(tiny_config(name="r2", train=cached), progress=False)
    for bad in ([{"epoch": 0, "size": 16}], [{"epoch": 1, "size": 64}, {"epoch": 1, "size": 96}]):
        with pytest.raises(ConfigError, match="each step needs epoch >= 0"):
            train(tiny_config(name="r3", train={"resize_schedule": bad}), progress=False)
