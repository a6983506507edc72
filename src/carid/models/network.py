"""CarNet: one network that names the car (class logits) and, optionally, finds it (one box).

    images [B, 3, H, W] --backbone.forward_features--> feature map [B, C, h, w]
        --pool--> embeddings [B, D] --ClassHead--> logits [B, C]
        feature map --SpatialBoxHead--> box [B, 4] (normalized xyxy)   (model.box_input: map)
        embeddings  --BoxHead---------> box [B, 4]                     (model.box_input: pooled)
        feature map --CellBoxHead-----> box [B, 4]                     (model.box_input: cells)
        either map head --RefinedBoxHead (second look in a window) --> box   (model.box_refine > 0)

The box head is the one registered under model.box_input (`create_box_head`, carid.models.heads);
`CarNet` uses it only through the `BoxHeadBase` contract (what it reads, its forward signature).

`encode(images)` gives both (an `Encoded`, plus the finer `detail` map a refined box head may
sample), `forward_heads(embeddings, feature_map, detail)` runs the heads
on them; the feature map may be None when the box head reads the pooled embeddings (or there is
none), which is what lets heads train from cached embeddings of a frozen backbone.

`forward` returns a `CarNetOutput` NamedTuple. Without a box head its `box` is None; exported to
ONNX (torch.onnx.export, the default dynamo exporter of torch 2.9+) the None is dropped, so the
graph outputs are exactly `CarNet.output_names`: ("logits",) or ("logits", "box").

Transfer-learning controls live here as plain methods (no schedule logic): `freeze_backbone()`,
`unfreeze_from(start)`, `unfreeze_backbone()`, `apply_freeze(TrainConfig.freeze)`, and
`parameter_groups(...)` for discriminative learning rates. Frozen BatchNorm layers are kept in eval
mode by `Backbone.train()`, which `CarNet.train()` / Lightning's `model.train()` call.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from carid.config import ModelConfig
from carid.models.backbones import Backbone, InputSpec, create_backbone
from carid.models.heads import (
    BoxHeadBase,
    ClassHead,
    RefinedBoxHead,
    box_head_names,
    box_head_type,
    create_box_head,
)


class Encoded(NamedTuple):
    """What the backbone gives the heads. embeddings: pooled [B, D] (the class head's input and the
    exported "embedding"); feature_map: the last map [B, C, h, w] before pooling; detail: the map of
    an earlier, finer stage when the box refinement samples one (model.box_refine_stride), else None."""

    embeddings: torch.Tensor
    feature_map: torch.Tensor
    detail: torch.Tensor | None = None


class CarNetOutput(NamedTuple):
    """logits: [B, num_classes] raw scores. box: [B, 4] normalized xyxy in [0, 1] relative to the
    network input, or None when the network has no box head."""

    logits: torch.Tensor
    box: torch.Tensor | None


class CarNet(nn.Module):
    """Backbone + class head (+ box head). Build it with `build_network`."""

    def __init__(
        self,
        backbone: Backbone,
        class_head: ClassHead,
        box_head: BoxHeadBase | None = None,
        detail_index: int | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.class_head = class_head
        self.box_head = box_head
        self.detail_index = detail_index  # the backbone stage (feature_info index) of `Encoded.detail`
        if self.box_reads_detail != (detail_index is not None):
            raise ValueError(
                "CarNet: detail_index must be given exactly when the box head reads a detail map"
            )

    @property
    def num_classes(self) -> int:
        return self.class_head.num_classes

    @property
    def has_box_head(self) -> bool:
        return self.box_head is not None

    @property
    def box_reads_feature_map(self) -> bool:
        """The box head reads the feature map (so `forward_heads` needs it, and a cache must hold it)."""
        return self.box_head is not None and self.box_head.reads_feature_map

    @property
    def box_reads_detail(self) -> bool:
        """The box head also reads a finer backbone map (`Encoded.detail`; a cache must hold it)."""
        return self.box_head is not None and self.box_head.reads_detail

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the tensors `forward` returns (None dropped): the ONNX graph outputs."""
        return ("logits", "box") if self.has_box_head else ("logits",)

    @property
    def input_spec(self) -> InputSpec:
        """Normalization and resize filter the backbone's weights expect."""
        return self.backbone.input_spec

    def forward(self, images: torch.Tensor) -> CarNetOutput:
        """images [B, 3, H, W], normalized per `input_spec` -> CarNetOutput(logits, box)."""
        return self.forward_heads(*self.encode(images))

    def encode(self, images: torch.Tensor) -> Encoded:
        """images -> Encoded(pooled embeddings [B, D], feature map [B, feature_channels, h, w], and
        the finer detail map when the box head reads one)."""
        if self.detail_index is not None:
            feature_map, detail = self.backbone.forward_maps(images, self.detail_index)
            return Encoded(self.backbone.pool(feature_map), feature_map, detail)
        feature_map = self.backbone.forward_features(images)
        return Encoded(self.backbone.pool(feature_map), feature_map)

    def forward_heads(
        self,
        embeddings: torch.Tensor,
        feature_map: torch.Tensor | None = None,
        detail: torch.Tensor | None = None,
    ) -> CarNetOutput:
        """Pooled embeddings [B, D], the feature map [B, C, h, w] and the detail map (from `encode`,
        possibly cached) -> CarNetOutput. feature_map may be None unless `box_reads_feature_map`,
        detail unless `box_reads_detail` (ValueError then)."""
        logits = self.class_head(embeddings)
        box = None
        if self.box_head is not None:
            if not self.box_head.reads_feature_map:
                box = self.box_head(embeddings)
            elif feature_map is None:
                raise ValueError(
                    "the box head reads the backbone's feature map (model.box_input: map), but only "
                    "pooled embeddings were given: pass feature_map (see CarNet.encode)"
                )
            elif self.box_head.reads_detail:
                box = self.box_head(feature_map, detail)
            else:
                box = self.box_head(feature_map)
        return CarNetOutput(logits, box)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images -> the backbone's last feature map [B, feature_channels, h, w] (for Grad-CAM)."""
        return self.backbone.forward_features(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images -> pooled embeddings [B, D] (D = backbone.num_features), the heads' input."""
        return self.backbone(images)

    # ----- transfer learning ----------------------------------------------------------------------

    def freeze_backbone(self) -> None:
        """Train the heads only."""
        self.backbone.freeze()

    def unfreeze_backbone(self) -> None:
        self.backbone.unfreeze()

    def unfreeze_from(self, start: str | int) -> None:
        """Backbone layers from `start` on trainable (a stage name like "blocks.4" / "layer3" or a
        layer index counted in forward order, see `Backbone.layer_summary()`), earlier ones frozen."""
        self.backbone.unfreeze_from(start)

    def apply_freeze(self, freeze: str | int) -> None:
        """Apply `TrainConfig.freeze`: "none" (all trainable), "backbone" (heads only), or a start
        stage / layer index as in `unfreeze_from`."""
        if freeze == "none":
            self.unfreeze_backbone()
        elif freeze == "backbone":
            self.freeze_backbone()
        else:
            self.unfreeze_from(freeze)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        heads: list[nn.Module] = [self.class_head] + ([self.box_head] if self.box_head is not None else [])
        return [p for head in heads for p in head.parameters()]

    def parameter_groups(
        self, lr: float, backbone_lr_scale: float = 1.0, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: backbone at lr * backbone_lr_scale, heads at lr.

        Each part is split into a group with `weight_decay` (weights of convs / linear layers) and
        one without (biases and norm parameters: every tensor with fewer than 2 dimensions), and
        empty groups are left out. *All* parameters are included, frozen ones too: they have no
        gradient so optimizers skip them, and unfreezing later needs no optimizer change.
        Each group has a "name" key ("backbone", "backbone_no_decay", "heads", "heads_no_decay").
        """
        groups = []
        for part, params, part_lr in (
            ("backbone", self.backbone_parameters(), lr * backbone_lr_scale),
            ("heads", self.head_parameters(), lr),
        ):
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            for suffix, group, group_decay in (("", decay, weight_decay), ("_no_decay", no_decay, 0.0)):
                if group:
                    groups.append(
                        {"name": part + suffix, "params": group, "lr": part_lr, "weight_decay": group_decay}
                    )
        return groups


def wants_box_head(setting: Literal["auto", "on", "off"], dataset_has_boxes: bool) -> bool:
    """Resolve `ModelConfig.box_head`: "auto" follows the data; "on" without boxes is an error."""
    if setting == "on" and not dataset_has_boxes:
        raise ValueError("model.box_head is 'on' but the dataset has no boxes; use 'auto' or 'off'")
    if setting == "off":
        return False
    return dataset_has_boxes


def build_network(config: ModelConfig, num_classes: int, with_box: bool) -> CarNet:
    """The CarNet described by `config` for `num_classes` classes, with a box head when `with_box`:
    the head registered as config.box_input (`create_box_head`; built in: a `SpatialBoxHead` on the
    feature map of an image_size input ("map"), a `BoxHead` on the pooled embeddings ("pooled"), a
    `CellBoxHead` on the feature map ("cells")), wrapped in a `RefinedBoxHead` when box_refine > 0
    (heads that read the feature map only).

    To rebuild a trained network from a checkpoint, pass the run's config with pretrained="none"
    (no weight packages or downloads needed) and then load the state dict.
    """
    backbone = create_backbone(config)
    class_head = ClassHead(backbone.num_features, num_classes, hidden=config.hidden, dropout=config.dropout)
    if config.box_refine < 0:
        raise ValueError(
            f"model.box_refine must be >= 0 (looks of the second box stage), got {config.box_refine}"
        )
    if with_box and config.box_refine and not box_head_type(config.box_input).reads_feature_map:
        map_heads = [repr(name) for name in box_head_names() if box_head_type(name).reads_feature_map]
        raise ValueError(
            f"model.box_refine samples the feature map, but model.box_input is {config.box_input!r}; "
            f"use {' or '.join(map_heads)}"
        )
    box_head = create_box_head(config.box_input, backbone, config) if with_box else None
    detail_index = None
    if box_head is not None and config.box_refine:
        channels = backbone.feature_channels
        if config.box_refine_stride:
            detail_index, channels = backbone.detail_level(config.box_refine_stride)
        box_head = RefinedBoxHead(
            box_head,
            channels,
            channels=config.box_channels,
            hidden=config.box_hidden,
            expand=config.box_refine_expand,
            steps=config.box_refine,
            detail=detail_index is not None,
        )
    return CarNet(backbone, class_head, box_head, detail_index)
