"""`CarModule`: the thin LightningModule around a `CarNet`.

One shared step serves train, val and test: forward, `CarLoss` (a dict of loss parts), top-1 /
top-5 accuracy (torchmetrics) and the mean IoU of predicted vs true boxes on the samples that have
one. Everything is logged per epoch as `{stage}/{name}`: `train/loss`, `train/cls`, `train/box_l1`,
`train/box_giou`, `train/acc`, `train/iou`, `val/loss`, `val/acc`, `val/acc_top5`, `val/iou`, ...

A batch is a dict: "image" float32 [B, 3, H, W] (or "features" float32 [B, F], pooled backbone
features from the feature cache, see `carid.training.features`, plus "feature_map" float32
[B, C, h, w] when the box head reads the map, and "detail_map" when it reads a finer one),
"label" int64 [B], "box" float32 [B, 4] normalized xyxy relative to the network input, "has_box"
bool [B], "index" int64 [B].

With a box head that refines from true boxes (`BoxHeadBase.refines_from_true_boxes`, e.g. the
`RefinedBoxHead` of model.box_refine) the loss also has the first guess's box terms
(`box_first_l1`, `box_first_giou`) and, in training, those of the refinements of jittered windows
around the true boxes (`box_jitter_*`), each weighted like the final box; `{stage}/iou_first` is the
IoU of the first guess, so one run shows what the second look adds.

With `train.mixup` / `train.cutmix` on (`carid.training.mixing`), training batches are mixed and
carry soft targets, which the loss uses; train/acc still counts each row's own class.

With `train.balance` on (`carid.training.balance`), "loss" puts class weights counted on the
training rows into the loss at `setup`, and either mode prints the per-class recall of every val
and test epoch and writes it to per-class-recall.csv in the run folder.

Optimizer: AdamW / Adam / SGD over `CarNet.parameter_groups`: backbone and heads, each split into
"decay" and "no_decay" (biases and normalization weights get no weight decay). Discriminative
learning rates: the heads get `train.lr`, the backbone `train.lr * train.backbone_lr_scale`. Frozen
backbone parameters stay in the backbone groups (optimizers skip parameters without a gradient),
so staged unfreezing (`carid.training.callbacks`) only flips `requires_grad` and never rebuilds
the optimizer or the schedule. The schedule (cosine, one-cycle or constant, with optional linear
warmup) steps once per optimizer step.

The checkpoint carries, under the key "carid", everything needed to predict without the config
(`ModelMetadata`, carid.artifacts.checkpoint); `carid.models.checkpoint.load_for_inference`
rebuilds the network from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import Tensor, nn
from torchvision.ops import box_iou

from carid.artifacts.checkpoint import CHECKPOINT_KEY, ModelMetadata
from carid.config import TrainConfig
from carid.models.losses import CarLoss
from carid.models.network import CarNet, CarNetOutput
from carid.training.balance import Balance, ClassRecall, loss_weights, train_labels
from carid.training.mixing import TARGET, BatchMixer, check_mixing

STAGES = ("train", "val", "test")


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str):
    """step -> lr factor: linear warmup to 1, then cosine to 0 ("cosine") or constant ("none")."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "none":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class CarModule(L.LightningModule):
    """Train/validate/test a `CarNet` with `CarLoss`; see the module docstring for batches and logs."""

    def __init__(self, network: CarNet, train: TrainConfig, metadata: ModelMetadata) -> None:
        super().__init__()
        self.network = network
        self.train_config = train
        self.metadata = metadata
        self.with_box = metadata.with_box
        self.lr = train.lr  # Lightning's learning-rate finder reads and sets this
        self.loss_fn = CarLoss.from_config(train)
        num_classes = metadata.num_classes
        self.top5 = num_classes >= 5
        # One metric object per stage and name, keyed "{stage}_{name}" (ModuleDict keys cannot be "train").
        metrics: dict[str, nn.Module] = {}
        for stage in STAGES:
            metrics[f"{stage}_acc"] = torchmetrics.Accuracy(
                task="multiclass", num_classes=num_classes, ignore_index=-1
            )
            if self.top5:
                metrics[f"{stage}_acc_top5"] = torchmetrics.Accuracy(
                    task="multiclass", num_classes=num_classes, top_k=5, ignore_index=-1
                )
            if self.with_box:
                metrics[f"{stage}_iou"] = torchmetrics.MeanMetric()
            if self.with_box and _refines(network):
                metrics[f"{stage}_iou_first"] = torchmetrics.MeanMetric()  # the first guess, before refining
        self.metrics = nn.ModuleDict(metrics)
        # train.balance: class weights in the loss (set in setup) and per-class recall of val and test
        self.balance = Balance.from_config(train)
        self.class_recall = ClassRecall(metadata.class_names) if self.balance.active else None
        # train.mixup / train.cutmix: training batches mixed by timm's Mixup (carid.training.mixing)
        pooled_cache = train.cache_features and str(train.freeze).lower() == "backbone"
        check_mixing(train, self.with_box, pooled_cache)
        self.mixer = BatchMixer.from_config(train, num_classes)

    # --- forward -----------------------------------------------------------------------------------

    def forward(self, images: Tensor):
        """images float32 [B, 3, H, W] -> CarNetOutput(logits [B, C], box [B, 4] or None)."""
        if self.train_config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.network(images)

    def forward_batch(self, batch: Mapping[str, Tensor]):
        """A batch of images, or of cached features (pooled, and the map if cached), -> CarNetOutput."""
        if "features" in batch:
            return self.network.forward_heads(
                batch["features"], batch.get("feature_map"), batch.get("detail_map")
            )
        return self(batch["image"])

    def setup(self, stage: str) -> None:
        if self.train_config.channels_last:
            self.network.to(memory_format=torch.channels_last)
        if stage == "fit" and self.balance.mode == "loss":  # weights from the rows it trains on
            labels = train_labels(self.trainer.datamodule)
            self.loss_fn.set_class_weights(loss_weights(labels, self.balance, self.metadata.num_classes))

    # --- one step for every stage ---------------------------------------------------------------

    def _refined_outputs(self, batch: Mapping[str, Tensor]) -> tuple[CarNetOutput, Tensor, Tensor]:
        """For a box head that refines from true boxes: (CarNetOutput, first guesses [B, 4], the
        state its `training_boxes` reads, e.g. the reduced map) of a batch."""
        head = self.network.box_head
        assert head is not None and head.refines_from_true_boxes
        if "features" in batch:
            embeddings, feature_map, detail = (
                batch["features"],
                batch.get("feature_map"),
                batch.get("detail_map"),
            )
        else:
            images = batch["image"]
            if self.train_config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            embeddings, feature_map, detail = self.network.encode(images)
        if head.reads_feature_map and feature_map is None:
            raise ValueError("the box head reads the feature map, but the batch has none (feature_map)")
        guess, box, reduced = head.stages(feature_map if head.reads_feature_map else embeddings, detail)
        return CarNetOutput(self.network.class_head(embeddings), box), guess, reduced

    def _refine_terms(
        self, guess: Tensor, reduced: Tensor, batch: Mapping[str, Tensor], has_box: Tensor, stage: str
    ) -> dict[str, Tensor]:
        """Loss parts of a head that refines from true boxes beyond the final box: the first guess
        ("box_first_*") and, in training, the refinements of jittered windows around the true boxes
        ("box_jitter_*")."""
        head = self.network.box_head
        assert head is not None and head.refines_from_true_boxes
        zero = guess.sum() * 0.0  # keeps the first head in the graph when no sample has a box
        terms = {"box_first_l1": zero, "box_first_giou": zero}
        if stage == "train":
            terms |= {"box_jitter_l1": zero, "box_jitter_giou": zero}
        if bool(has_box.any()):
            targets = batch["box"][has_box]
            terms["box_first_l1"], terms["box_first_giou"] = self.loss_fn.box_terms(guess[has_box], targets)
            if stage == "train":
                boxes, jitter_targets = head.training_boxes(reduced[has_box], targets)
                if boxes.shape[0]:  # none when the head jitters no windows
                    terms["box_jitter_l1"], terms["box_jitter_giou"] = self.loss_fn.box_terms(
                        boxes, jitter_targets
                    )
        return terms

    def _shared_step(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        labels = batch["label"]
        has_box = batch["has_box"].bool() if self.with_box else torch.zeros_like(labels, dtype=torch.bool)
        target_boxes = batch["box"] if self.with_box else None
        refined = self.with_box and _refines(self.network)
        if refined:
            output, guess, reduced = self._refined_outputs(batch)
        else:
            output = self.forward_batch(batch)
        targets = batch.get(TARGET, labels)  # soft targets [B, C] when the batch was mixed
        parts = self.loss_fn(output.logits, output.box, targets, target_boxes, has_box)
        if refined:
            extra = self._refine_terms(guess, reduced, batch, has_box, stage)
            for kind in ("first", "jitter"):
                if f"box_{kind}_l1" in extra:
                    parts["loss"] = parts["loss"] + self.loss_fn.box_term(
                        extra[f"box_{kind}_l1"], extra[f"box_{kind}_giou"]
                    )
            parts |= extra
        batch_size = labels.shape[0]
        for name, value in parts.items():
            if not self.with_box and name.startswith("box"):
                continue
            self.log(
                f"{stage}/{name}",
                value.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,
            )
        logits = output.logits.detach().float()
        names = ["acc", "acc_top5"] if self.top5 else ["acc"]
        for name in names:
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, labels)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=batch_size)
        if self.class_recall is not None:
            self.class_recall.update(stage, logits, labels)
        if self.with_box and output.box is not None and bool(has_box.any()):
            metric = self.metrics[f"{stage}_iou"]
            metric.update(matched_iou(output.box.detach().float()[has_box], batch["box"].float()[has_box]))
            self.log(f"{stage}/iou", metric, on_step=False, on_epoch=True, batch_size=int(has_box.sum()))
            if refined:
                first = self.metrics[f"{stage}_iou_first"]
                first.update(matched_iou(guess.detach().float()[has_box], batch["box"].float()[has_box]))
                self.log(
                    f"{stage}/iou_first", first, on_step=False, on_epoch=True, batch_size=int(has_box.sum())
                )
        if stage == "train":
            self.log(
                "loss", parts["loss"].detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False
            )
        return parts["loss"]

    def on_validation_epoch_end(self) -> None:
        if self.class_recall is not None:
            self.class_recall.epoch_end(self.trainer, "val", self.current_epoch)

    def on_test_epoch_end(self) -> None:
        if self.class_recall is not None:
            self.class_recall.epoch_end(self.trainer, "test", self.current_epoch)

    def mixed(self, batch: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """A training batch mixed by train.mixup / train.cutmix (unchanged when they are off)."""
        return batch if self.mixer is None else self.mixer(batch)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(self.mixed(batch), "train")

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int):
        return self.forward_batch(batch)

    # --- optimizer and schedule -------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        train = self.train_config
        groups = self.network.parameter_groups(self.lr, train.backbone_lr_scale, train.weight_decay)
        if train.optimizer == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=self.lr)
        elif train.optimizer == "adam":
            optimizer = torch.optim.Adam(groups, lr=self.lr)
        elif train.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=self.lr, momentum=train.momentum, nesterov=train.momentum > 0
            )
        else:  # the config schema already restricts this
            raise ValueError(f"unknown optimizer {train.optimizer!r}")
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or train.epochs)
        warmup_steps = round(train.warmup_epochs * total_steps / epochs)
        if train.schedule == "onecycle":
            scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=total_steps + 1,
                pct_start=min(0.5, warmup_steps / total_steps) if warmup_steps else 0.3,
            )
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lr_lambda(total_steps, warmup_steps, train.schedule)
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # --- checkpoint metadata ---------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.metadata.to_dict()


def matched_iou(predicted: Tensor, target: Tensor) -> Tensor:
    """IoU of predicted[i] with target[i], [N]; boxes [N, 4] xyxy (x1 <= x2, y1 <= y2)."""
    return box_iou(predicted, target).diagonal()


def _refines(network: CarNet) -> bool:
    """The network's box head refines from true boxes (extra loss terms and the iou_first metric)."""
    return network.box_head is not None and network.box_head.refines_from_true_boxes
