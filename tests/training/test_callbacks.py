"""Staged unfreezing: what is trainable when, discriminative learning rates, frozen BatchNorm in eval."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from carid.config import UnfreezeStep
from carid.training.callbacks import StagedUnfreezing, trainable_count
from tests.training.helpers import RandomBatches, make_module


def test_schedule_picks_the_step_in_force() -> None:
    callback = StagedUnfreezing("backbone", (UnfreezeStep(3, "none"), UnfreezeStep(1, "stages.1")))
    assert [callback.start_at(epoch) for epoch in range(5)] == [
        "backbone",
        "stages.1",
        "stages.1",
        "none",
        "none",
    ]
    assert callback.is_active
    assert not StagedUnfreezing("none").is_active
    assert StagedUnfreezing(0).freeze == "none"


class Watcher(L.Callback):
    """Records, at every training batch, what the unfreezing callback should have set up."""

    def __init__(self) -> None:
        self.trainable: dict[int, int] = {}
        self.frozen_bn_in_eval: dict[int, bool] = {}
        self.lr_ratios: list[float] = []
        self.first_stage: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        epoch = trainer.current_epoch
        network = pl_module.network
        self.trainable[epoch] = trainable_count(network)
        norms = [m for m in network.backbone.modules() if isinstance(m, _BatchNorm)]
        frozen = [m for m in norms if not any(p.requires_grad for p in m.parameters())]
        self.frozen_bn_in_eval[epoch] = bool(frozen) and all(not m.training for m in frozen)
        if frozen:
            assert all(m.training for m in norms if m not in frozen)
        groups = {group["name"]: group["lr"] for group in trainer.optimizers[0].param_groups}
        self.lr_ratios.append(groups["backbone"] / groups["heads"])
        first_conv = network.backbone.model.stages[0].convs[0].weight
        self.first_stage.setdefault(epoch, first_conv.detach().clone())


def test_trainable_parameters_change_at_the_planned_epochs(tmp_path: Path) -> None:
    module = make_module(num_classes=3, lr=0.01, backbone_lr_scale=0.1, warmup_epochs=0.5, epochs=3)
    network = module.network
    heads = sum(p.numel() for p in network.head_parameters())
    total = sum(p.numel() for p in network.parameters())
    unfreezing = StagedUnfreezing("backbone", (UnfreezeStep(1, "stages.1"), UnfreezeStep(2, "none")))
    watcher = Watcher()
    loader = DataLoader(RandomBatches(16, 3), batch_size=8)
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[unfreezing, watcher],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)

    assert watcher.trainable[0] == heads
    assert heads < watcher.trainable[1] < total
    assert watcher.trainable[2] == total
    assert [count for _, _, count in unfreezing.history] == [watcher.trainable[e] for e in range(3)]
    assert [start for _, start, _ in unfreezing.history] == ["backbone", "stages.1", "none"]
    # frozen BatchNorm layers stay in eval mode through training and validation
    assert watcher.frozen_bn_in_eval[0] and watcher.frozen_bn_in_eval[1]
    # the first stage is frozen until epoch 2, then trains
    assert torch.equal(watcher.first_stage[0], watcher.first_stage[2])
    assert not torch.equal(watcher.first_stage[2], network.backbone.model.stages[0].convs[0].weight.detach())
    # discriminative learning rates hold under the schedule
    assert watcher.lr_ratios == pytest.approx([0.1] * len(watcher.lr_ratios))
    assert trainer.logged_metrics["train/trainable_params"] == pytest.approx(total)


def test_resumed_callback_reapplies_the_schedule(tmp_path: Path) -> None:
    module = make_module(num_classes=3)
    callback = StagedUnfreezing("backbone", (UnfreezeStep(1, "none"),))
    callback.freeze_before_training(module)
    assert trainable_count(module.network) == sum(p.numel() for p in module.network.head_parameters())
    callback.load_state_dict(callback.state_dict())
    callback.finetune_function(module, 4, None)
    assert trainable_count(module.network) == sum(p.numel() for p in module.network.parameters())
