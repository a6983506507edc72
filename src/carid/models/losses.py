"""The training loss of CarNet: cross-entropy for the class plus L1 and GIoU for the box.

    loss = CE(logits, labels; label_smoothing) + box_weight * (l1_weight * L1 + giou_weight * GIoU)

The box terms use only the samples that have a box (`has_box`), so datasets that mix boxed and
unboxed photos train both heads in one batch; when no sample in the batch has a box they are 0.

Class weights (`train.balance: loss`, computed by `carid.training.balance`) weight the
cross-entropy per true class (torch's `weight`: the mean is over the summed weights of the batch).
They apply in training mode only, so val/loss and test/loss stay those of an unweighted run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from carid.config import TrainConfig


class CarLoss(nn.Module):
    """Returns a dict of scalar tensors: "loss" (the total to minimize), "cls", "box_l1", "box_giou".

    label_smoothing: cross-entropy label smoothing in [0, 1).
    box_weight: weight of the whole box term; l1_weight / giou_weight: weights inside it.
    box_l1 is the mean absolute error per coordinate (normalized units) over boxed samples;
    box_giou is the mean of 1 - GIoU over boxed samples.
    class_weights: float [C] cross-entropy weight per class (training mode only), or None.
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        box_weight: float = 1.0,
        l1_weight: float = 1.0,
        giou_weight: float = 1.0,
        class_weights: torch.Tensor | None = None,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.box_weight = box_weight
        self.l1_weight = l1_weight
        self.giou_weight = giou_weight
        # not persistent: a checkpoint stays loadable by a loss built without weights
        self.register_buffer("class_weights", None, persistent=False)
        self.set_class_weights(class_weights)

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weight the training cross-entropy per class (float [C]), or stop weighting (None)."""
        if weights is not None and (weights.ndim != 1 or bool((weights < 0).any())):
            raise ValueError(f"class_weights must be a 1-D tensor of weights >= 0, got {weights}")
        self.class_weights = None if weights is None else weights.detach().float()

    @classmethod
    def from_config(cls, train: TrainConfig) -> CarLoss:
        return cls(
            label_smoothing=train.label_smoothing,
            box_weight=train.box_weight,
            l1_weight=train.box_l1_weight,
            giou_weight=train.box_giou_weight,
        )

    def forward(
        self,
        logits: torch.Tensor,
        pred_boxes: torch.Tensor | None,
        labels: torch.Tensor,
        target_boxes: torch.Tensor | None = None,
        has_box: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """logits [B, C]; pred_boxes [B, 4] normalized xyxy or None (no box head); labels [B] int64
        class indices, or float [B, C] class probabilities (mixup's soft targets); target_boxes [B, 4]
        normalized xyxy (rows without a box are ignored, any value); has_box [B] bool (default: all
        True when target_boxes is given).

        The argument order lets a CarNetOutput be unpacked: `loss(*net(images), labels, boxes, has_box)`.
        """
        weight = self.class_weights if self.training else None
        if weight is not None:
            weight = weight.to(device=logits.device, dtype=logits.dtype)
        cls_loss = F.cross_entropy(logits, labels, weight=weight, label_smoothing=self.label_smoothing)
        if target_boxes is not None and pred_boxes is None:
            raise ValueError("target boxes were given but the network has no box head (pred_boxes is None)")
        # Zero box terms keep the box head in the graph (distributed training wants every parameter used).
        box_l1 = box_giou = pred_boxes.sum() * 0.0 if pred_boxes is not None else logits.new_zeros(())
        if target_boxes is not None and pred_boxes is not None:
            if has_box is None:
                has_box = torch.ones(target_boxes.shape[0], dtype=torch.bool, device=target_boxes.device)
            mask = has_box.to(torch.bool)
            if mask.any():
                box_l1, box_giou = self.box_terms(pred_boxes[mask], target_boxes[mask])
        total = cls_loss + self.box_term(box_l1, box_giou)
        return {"loss": total, "cls": cls_loss, "box_l1": box_l1, "box_giou": box_giou}

    @staticmethod
    def box_terms(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean L1 per coordinate, mean 1 - GIoU) of pred [N, 4] against target [N, 4], N >= 1."""
        target = target.to(pred.dtype)
        return F.l1_loss(pred, target), generalized_box_iou_loss(pred, target, reduction="mean")

    def box_term(self, box_l1: torch.Tensor, box_giou: torch.Tensor) -> torch.Tensor:
        """The weighted box part of the loss: box_weight * (l1_weight * L1 + giou_weight * GIoU)."""
        return self.box_weight * (self.l1_weight * box_l1 + self.giou_weight * box_giou)
