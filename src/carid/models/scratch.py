"""From-scratch VGG-style CNNs, registered with timm so they are created by name like any backbone.

`timm.create_model("carid_vgg", **switches)` (after importing this module) and carid's
`create_backbone(ModelConfig(backbone="carid_vgg", backbone_args={...}))` build the same network.
The net is a stack of stages; each stage is `convs_per_stage` x [3x3 conv -> (batch norm) -> ReLU],
then 2x2 max pooling (ceil mode, so even a 1-pixel map survives) and optional dropout. Global
average pooling in the head makes any input size work (75 px, 100 px, 224 px ...).

Switches (`backbone_args` in the config):
    widths: channels per stage, e.g. [32, 64, 128]; the number of stages is len(widths).
    blocks_per_stage: convolutions per stage, one int for all stages or one per stage.
    batch_norm: batch normalization after every convolution.
    dropout: dropout rate after every stage's pooling (0 = off).
    in_chans: input channels (timm's usual keyword).
    drop_rate: dropout before the timm classifier (carid's own ClassHead has its own dropout).

The small-data study progression is expressed as configs (augmentation is the data pipeline's job):
    1. base CNN:        backbone: carid_vgg, pretrained: none, backbone_args {batch_norm: false, dropout: 0}
    2. + augmentation:  same model, augment.enabled: true
    3. + batch norm:    backbone_args {batch_norm: true}
    4. + dropout:       backbone_args {batch_norm: true, dropout: 0.25}
    5. transfer:        backbone: tf_efficientnet_lite0, pretrained: offline

Written by hand (not timm's `vgg11`...) because timm's VGGs are fixed ImageNet designs with a
7x7 conv "pre-logits" head, 100M+ parameters and no per-stage switches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

MODEL_NAME = "carid_vgg"


class VGGStage(nn.Module):
    """`convs` x [conv 3x3 -> (BN) -> ReLU] -> max pool 2x2 -> (dropout).

    [B, C_in, H, W] -> [B, C_out, ceil(H / 2), ceil(W / 2)].
    """

    def __init__(self, in_channels: int, out_channels: int, convs: int, batch_norm: bool, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(convs):
            layers.append(
                nn.Conv2d(
                    in_channels if index == 0 else out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=1,
                    bias=not batch_norm,
                )
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.convs(x)))


def _per_stage(value: int | Sequence[int], stages: int, name: str) -> list[int]:
    values = [value] * stages if isinstance(value, int) else [int(v) for v in value]
    if len(values) != stages:
        raise ValueError(f"{MODEL_NAME}: {name} has {len(values)} entries but widths has {stages} stages")
    if any(v < 1 for v in values):
        raise ValueError(f"{MODEL_NAME}: {name} must be >= 1 per stage, got {values}")
    return values


class CaridVGG(nn.Module):
    """A VGG-style CNN with the timm model interface.

    forward_features(images [B, in_chans, H, W]) -> feature map [B, widths[-1], H / 2^S, W / 2^S]
        (S = number of stages, sizes rounded up).
    forward_head(features, pre_logits=False) -> [B, num_classes] logits, or the pooled [B, num_features]
        embedding when pre_logits is True or num_classes == 0.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int | Sequence[int] = 2,
        batch_norm: bool = False,
        dropout: float = 0.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"{MODEL_NAME}: widths must be a non-empty list of positive ints, got {widths}")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= drop_rate < 1.0:
            raise ValueError(
                f"{MODEL_NAME}: dropout and drop_rate must be in [0, 1), got {dropout}, {drop_rate}"
            )
        if drop_path_rate:
            raise ValueError(
                f"{MODEL_NAME} has no residual paths: drop_path_rate must be 0, got {drop_path_rate}"
            )
        if global_pool not in ("avg", "max", ""):
            raise ValueError(f"{MODEL_NAME}: global_pool must be 'avg', 'max' or '', got {global_pool!r}")
        convs = _per_stage(blocks_per_stage, len(widths), "blocks_per_stage")
        stages = []
        in_channels = in_chans
        for width, count in zip(widths, convs, strict=True):
            stages.append(VGGStage(in_channels, width, count, batch_norm, dropout))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = widths[-1]
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.head_dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        elif self.global_pool == "max":
            x = x.amax(dim=(2, 3))
        if pre_logits:
            return x
        return self.fc(self.head_dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        # No downloadable weights: the net is trained from scratch. Inputs scaled to [-1, 1].
        MODEL_NAME: {
            "url": "",
            "num_classes": 1000,
            "input_size": (3, 100, 100),
            "pool_size": None,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "first_conv": "stages.0.convs.0",
            "classifier": "fc",
        }
    }
)

if timm.is_model(MODEL_NAME):
    raise RuntimeError(
        f"a timm model named {MODEL_NAME!r} is already registered; carid's scratch nets need the name"
    )


@register_model
def carid_vgg(pretrained: bool = False, **kwargs: Any) -> CaridVGG:
    """The VGG-style from-scratch CNN (switches: see the module docstring); it has no pretrained weights."""
    if pretrained:
        raise ValueError(
            f"{MODEL_NAME} is trained from scratch and has no pretrained weights; use pretrained: none"
        )
    return build_model_with_cfg(CaridVGG, MODEL_NAME, pretrained=False, **kwargs)


SCRATCH_MODELS: tuple[str, ...] = (MODEL_NAME,)
