"""CarModule: optimizer groups and schedules, the shared step's logged names, the metadata it saves."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from carid.artifacts.checkpoint import CHECKPOINT_KEY, ModelMetadata, load_checkpoint_metadata
from carid.config import TrainConfig, to_dict
from carid.models.checkpoint import load_for_inference
from carid.models.heads import BoxHeadBase, decode_box, register_box_head, unregister_box_head
from carid.models.network import build_network
from carid.preprocess import PreprocessSpec
from carid.training.module import CarModule, lr_lambda, matched_iou
from tests.training.helpers import TINY_MODEL, RandomBatches, make_module


def fit_briefly(module: CarModule, tmp_path: Path, num_classes: int, epochs: int = 1) -> L.Trainer:
    loader = DataLoader(RandomBatches(16, num_classes), batch_size=8)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return trainer


def test_optimizer_groups_have_discriminative_learning_rates() -> None:
    module = make_module(lr=0.01, backbone_lr_scale=0.1, weight_decay=0.05, optimizer="adamw")
    module.trainer = SimpleNamespace(estimated_stepping_batches=20, max_epochs=2)  # type: ignore[assignment]
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"]
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert isinstance(optimizer, torch.optim.AdamW)
    assert groups["heads"]["lr"] == pytest.approx(0.01)
    assert groups["backbone"]["lr"] == pytest.approx(0.001)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["heads"]["weight_decay"] == pytest.approx(0.05)
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_groups == {id(p) for p in module.network.parameters()}
    assert configured["lr_scheduler"]["interval"] == "step"


@pytest.mark.parametrize(("name", "kind"), [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_other_optimizers(name: str, kind: type) -> None:
    module = make_module(optimizer=name, schedule="onecycle")
    module.trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1)  # type: ignore[assignment]
    configured = module.configure_optimizers()
    assert isinstance(configured["optimizer"], kind)
    assert isinstance(configured["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.OneCycleLR)


def test_lr_lambda_warmup_then_cosine() -> None:
    factor = lr_lambda(total_steps=100, warmup_steps=10, schedule="cosine")
    warmup = [factor(step) for step in range(10)]
    assert warmup == sorted(warmup) and warmup[0] == pytest.approx(0.1) and warmup[-1] == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(100) == pytest.approx(0.0, abs=1e-9)
    constant = lr_lambda(total_steps=100, warmup_steps=0, schedule="none")
    assert {constant(step) for step in (0, 50, 99)} == {1.0}


def test_matched_iou_pairs_rows() -> None:
    predicted = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]])
    target = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    assert matched_iou(predicted, target).tolist() == [1.0, 0.0]


def test_shared_step_logs_every_part_per_epoch(tmp_path: Path) -> None:
    module = make_module(num_classes=6, with_box=True, epochs=1, warmup_epochs=0.5)
    trainer = fit_briefly(module, tmp_path, num_classes=6)
    logged = set(trainer.logged_metrics)
    expected = {"train/loss", "train/cls", "train/box_l1", "train/box_giou", "train/acc", "train/iou"}
    expected |= {"val/loss", "val/acc", "val/acc_top5", "val/iou"}
    assert expected <= logged
    assert "loss" not in trainer.logged_metrics  # the progress-bar loss is not sent to loggers


def test_refined_box_head_logs_its_stages_and_trains_both(tmp_path: Path) -> None:
    module = make_module(num_classes=6, with_box=True, box_refine=1, epochs=1, warmup_epochs=0.5)
    trainer = fit_briefly(module, tmp_path, num_classes=6)
    logged = set(trainer.logged_metrics)
    assert {"train/box_first_giou", "train/box_jitter_giou", "train/iou_first", "val/iou_first"} <= logged
    assert "val/box_first_giou" in logged and "val/box_jitter_giou" not in logged  # no random windows in val


def test_refined_loss_adds_the_first_and_jittered_terms() -> None:
    module = make_module(num_classes=3, with_box=True, box_refine=1)
    batch = next(iter(DataLoader(RandomBatches(8, 3), batch_size=8)))
    torch.manual_seed(0)
    output, guess, reduced = module._refined_outputs(batch)
    parts = module.loss_fn(output.logits, output.box, batch["label"], batch["box"], batch["has_box"])
    torch.manual_seed(0)
    extra = module._refine_terms(guess, reduced, batch, batch["has_box"], "train")
    expected = parts["loss"] + sum(
        module.loss_fn.box_term(extra[f"box_{kind}_l1"], extra[f"box_{kind}_giou"])
        for kind in ("first", "jitter")
    )
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    torch.manual_seed(0)
    total = module._shared_step(batch, "train")
    assert float(extra["box_jitter_giou"].detach()) > 0
    assert torch.allclose(total, expected)


def test_refined_head_without_boxes_in_the_batch_uses_every_parameter() -> None:
    """DDP without find_unused_parameters needs a gradient for every trainable parameter."""
    module = make_module(num_classes=3, with_box=True, box_refine=1)
    batch = next(iter(DataLoader(RandomBatches(4, 3), batch_size=4)))
    batch["has_box"] = torch.zeros_like(batch["has_box"])
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    module._shared_step(batch, "train").backward()
    assert all(p.grad is not None for p in module.network.parameters() if p.requires_grad)


def test_without_box_head_and_few_classes_no_box_or_top5_metrics(tmp_path: Path) -> None:
    module = make_module(num_classes=3, with_box=False)
    trainer = fit_briefly(module, tmp_path, num_classes=3)
    logged = set(trainer.logged_metrics)
    assert {"val/acc", "val/loss"} <= logged
    assert not {name for name in logged if "box" in name or "iou" in name or "top5" in name}


def test_checkpoint_metadata_loads_weights_only_and_rebuilds_the_network(tmp_path: Path) -> None:
    module = make_module(num_classes=3)
    trainer = fit_briefly(module, tmp_path, num_classes=3)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw[CHECKPOINT_KEY]["class_names"] == ["class 0", "class 1", "class 2"]
    network, metadata = load_for_inference(path)
    assert metadata == load_checkpoint_metadata(path)
    assert metadata.with_box and metadata.preprocess_spec().image_size == (32, 32)
    assert metadata.model_config() == TINY_MODEL
    images = torch.randn(4, 3, 32, 32)
    module.network.eval()
    with torch.no_grad():
        expected, got = module.network(images), network(images)
    assert torch.equal(expected.logits, got.logits)
    assert torch.equal(expected.box, got.box)


def test_a_box_head_registered_in_one_place_trains_and_reloads(tmp_path: Path) -> None:
    """A new box head is one class and one registration: config, network, training and loading
    the checkpoint all find it by name."""

    @register_box_head("test-linear")
    class LinearBoxHead(BoxHeadBase):
        reads_feature_map = False

        def __init__(self, in_features: int) -> None:
            super().__init__()
            self.fc = nn.Linear(in_features, 4)

        @classmethod
        def from_config(cls, backbone, config) -> LinearBoxHead:
            return cls(backbone.num_features)

        def forward(self, features: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
            return decode_box(self.fc(features))

    try:
        torch.manual_seed(0)
        config = replace(TINY_MODEL, box_input="test-linear")  # validated against the registered names
        network = build_network(config, num_classes=3, with_box=True)
        assert isinstance(network.box_head, LinearBoxHead) and not network.box_reads_feature_map
        metadata = ModelMetadata(
            class_names=("a", "b", "c"),
            preprocess=PreprocessSpec(image_size=(32, 32)).to_dict(),
            model=to_dict(config),
            with_box=True,
        )
        module = CarModule(network, TrainConfig(channels_last=False, lr=0.01), metadata)
        before = {name: p.detach().clone() for name, p in network.box_head.named_parameters()}
        losses: list[torch.Tensor] = []

        class KeepLoss(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                losses.append(outputs["loss"].detach())

        trainer = L.Trainer(
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[KeepLoss()],
            default_root_dir=tmp_path,
        )
        trainer.fit(module, train_dataloaders=DataLoader(RandomBatches(8, 3), batch_size=8))
        assert len(losses) == 1 and torch.isfinite(losses[0])
        for name, parameter in network.box_head.named_parameters():
            assert not torch.equal(parameter.detach(), before[name]), name

        trainer.save_checkpoint(tmp_path / "model.ckpt")
        loaded, _ = load_for_inference(tmp_path / "model.ckpt")
        assert isinstance(loaded.box_head, LinearBoxHead)
        assert torch.equal(loaded.box_head.fc.weight, network.box_head.fc.weight)
    finally:
        unregister_box_head("test-linear")
