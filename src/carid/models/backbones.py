"""Backbones by name: any timm CNN or a carid from-scratch net, with pretrained weights from the hub,
from an installed package (offline) or none; plus layer-wise freezing for transfer learning.

`create_backbone(config)` is the one factory. It wraps the timm model (created with `num_classes=0`,
so timm's own global pooling and pre-logits layers stay) in a `Backbone` that maps
images [B, 3, H, W] -> pooled embedding [B, num_features]. Pooling is left to timm's
`forward_head(pre_logits=True)` rather than done by carid's heads because timm models differ in
what sits between the last feature map and the classifier (MobileNetV3 has a 1x1 conv + activation
*after* pooling, ConvNeXt a LayerNorm); keeping timm's path keeps the pretrained embedding exact.

Freezing counts *layers*: modules that own parameters directly (a conv, a norm, a linear layer, a
ConvNeXt block's layer-scale `gamma`), in module registration order, which is forward order for the
CNNs timm ships. `Backbone.layer_summary()` lists them with their indices. "From the 71st layer"
is `unfreeze_from(70)`; a stage name such as "blocks.4", "layer3", "stages.2" means "from the first
layer inside that module". BatchNorm layers whose parameters are all frozen are kept in eval mode by
`Backbone.train()`, so their running statistics stay those of the pretrained weights.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from carid.config import ModelConfig
from carid.errors import CaridError
from carid.models.scratch import SCRATCH_MODELS
from carid.models.weights import OFFLINE_WEIGHTS, WeightsError, load_offline_weights

# Well-tried names shown in error messages; any CNN name from `timm.list_models()` works.
SUGGESTED_BACKBONES: tuple[str, ...] = (
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
    "resnet18",
    "resnet50",
    "convnext_tiny",
    *SCRATCH_MODELS,
)


class BackboneError(CaridError, ValueError):
    """A backbone that cannot be built (unknown name, bad arguments, weights unavailable)."""


@dataclass(frozen=True)
class InputSpec:
    """How images must be prepared for a backbone's weights (travels with the model into the bundle).

    mean, std: per-channel normalization of RGB values scaled to [0, 1].
    interpolation: resize filter the weights were trained with ("bilinear", "bicubic").
    default_size: the input side (pixels) the weights were trained at; any size works.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    default_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerInfo:
    """One freezable layer of a backbone: its index in forward order, dotted name, type, size, state."""

    index: int
    name: str
    kind: str
    parameters: int
    trainable: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backbone(nn.Module):
    """A timm model without its classifier: images [B, C, H, W] -> embeddings [B, num_features].

    Attributes:
        name: the timm model name.
        model: the timm model (num_classes=0); stage names for freezing are relative to it.
        num_features: embedding size D (timm's head_hidden_size, else num_features).
        feature_channels: channels of the `forward_features` map.
        input_spec: normalization and resize filter of the weights.
        weights: where the weights came from ("none", "hub: ...", "offline: ...").
    """

    def __init__(self, name: str, model: nn.Module, weights: str):
        super().__init__()
        self.name = name
        self.model = model
        self.feature_channels = int(model.num_features)
        self.num_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self.weights = weights
        data_config = timm.data.resolve_data_config({}, model=model)
        self.input_spec = InputSpec(
            mean=tuple(float(v) for v in data_config["mean"]),
            std=tuple(float(v) for v in data_config["std"]),
            interpolation=str(data_config["interpolation"]),
            default_size=int(data_config["input_size"][-1]),
        )

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> last feature map [B, feature_channels, h, w] before pooling (for
        CNNs; vision transformers give tokens [B, N, feature_channels])."""
        return self.model.forward_features(images)

    def feature_map_size(self, image_size: int) -> tuple[int, int]:
        """(h, w) of the `forward_features` map for a square input of `image_size` pixels, found by
        one forward pass of zeros (eval mode, no gradients; the train/eval mode is restored).

        Raises BackboneError when the backbone gives no [B, C, h, w] map (e.g. transformer tokens).
        """
        was_training = self.training
        parameter = next(self.parameters(), None)
        probe = torch.zeros(
            1, 3, image_size, image_size, device=None if parameter is None else parameter.device
        )
        self.eval()
        try:
            with torch.no_grad():
                features = self.forward_features(probe)
        finally:
            self.train(was_training)
        if features.ndim != 4:
            raise BackboneError(
                f"backbone {self.name} gives features of shape {list(features.shape)}, not a map "
                "[B, C, h, w]; use model.box_input: pooled"
            )
        return int(features.shape[-2]), int(features.shape[-1])

    def detail_level(self, stride: int) -> tuple[int, int]:
        """(index into timm's feature_info, channels) of the backbone stage whose map is `stride`
        times smaller than the input (e.g. 16: a 256 px input gives a 16x16 map). Raises
        BackboneError when the backbone cannot return intermediate maps or has no such stage."""
        info = getattr(self.model, "feature_info", None)
        if not hasattr(self.model, "forward_intermediates") or not info:
            raise BackboneError(
                f"backbone {self.name} cannot return intermediate feature maps (no timm "
                "forward_intermediates); set model.box_refine_stride: 0 to refine on the last map"
            )
        strides = [int(level["reduction"]) for level in info]
        matches = [index for index, reduction in enumerate(strides) if reduction == stride]
        if not matches:
            raise BackboneError(
                f"backbone {self.name} has no stage at stride {stride}; its stages have strides "
                f"{sorted(set(strides))} (model.box_refine_stride)"
            )
        return matches[-1], int(info[matches[-1]]["num_chs"])

    def forward_maps(self, images: torch.Tensor, detail_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (the `forward_features` map, the map of feature_info stage `detail_index`), in
        one pass (timm's forward_intermediates)."""
        last, intermediates = self.model.forward_intermediates(images, indices=[detail_index])
        return last, intermediates[0]

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map from `forward_features` -> embeddings [B, num_features] (timm's pre-logits path)."""
        return self.model.forward_head(features, pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (normalized per `input_spec`) -> embeddings [B, num_features]."""
        return self.pool(self.forward_features(images))

    # ----- freezing -------------------------------------------------------------------------------

    def layers(self) -> list[tuple[str, nn.Module]]:
        """(dotted name, module) of every module owning parameters directly, in forward order."""
        return [
            (name, module)
            for name, module in self.model.named_modules()
            if any(True for _ in module.parameters(recurse=False))
        ]

    def layer_summary(self) -> list[LayerInfo]:
        """Every freezable layer with its index, for choosing where to unfreeze from."""
        return [
            LayerInfo(
                index=index,
                name=name,
                kind=type(module).__name__,
                parameters=sum(p.numel() for p in module.parameters(recurse=False)),
                trainable=all(p.requires_grad for p in module.parameters(recurse=False)),
            )
            for index, (name, module) in enumerate(self.layers())
        ]

    def stage_names(self) -> list[str]:
        """Module names usable as `unfreeze_from` start points (up to two levels deep), in order."""
        names = []
        for name, module in self.model.named_modules():
            if name and name.count(".") <= 1 and any(True for _ in module.parameters()):
                names.append(name)
        return names

    def layer_index(self, start: str | int) -> int:
        """The index of the first layer of `start`: a layer index (negative counts from the end) or a
        module name ("blocks.4": its first layer). BackboneError when it names nothing."""
        layers = self.layers()
        if isinstance(start, bool) or not isinstance(start, int | str):
            raise BackboneError(f"freeze start must be a module name or a layer index, got {start!r}")
        if isinstance(start, int):
            if not -len(layers) <= start < len(layers):
                raise BackboneError(
                    f"layer index {start} is out of range: backbone {self.name} has {len(layers)} layers "
                    f"(0..{len(layers) - 1}, or negative from the end)"
                )
            return start % len(layers)
        for index, (name, _) in enumerate(layers):
            if name == start or name.startswith(start + "."):
                return index
        if start.lstrip("-").isdigit():  # "70" from a command line: a layer index
            return self.layer_index(int(start))
        close = difflib.get_close_matches(start, self.stage_names(), n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(
            f"backbone {self.name} has no module {start!r}.{hint} "
            f"Stages: {', '.join(self.stage_names()[:40])}"
            " (or give a layer index; see Backbone.layer_summary())"
        )

    def freeze(self) -> None:
        """Make every backbone parameter non-trainable."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self._sync_norm_modes()

    def unfreeze(self) -> None:
        """Make every backbone parameter trainable."""
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        self._sync_norm_modes()

    def unfreeze_from(self, start: str | int) -> None:
        """Layers from `start` on (see `layer_index`) trainable, all layers before it frozen."""
        first = self.layer_index(start)
        for index, (_, module) in enumerate(self.layers()):
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(index >= first)
        self._sync_norm_modes()

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _sync_norm_modes(self) -> None:
        if self.training:
            self.train(True)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode; BatchNorm layers whose parameters are all frozen stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    params = list(module.parameters(recurse=False))
                    if params and not any(p.requires_grad for p in params):
                        module.eval()
        return self


def _unknown_backbone_message(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
    parts = [f"unknown backbone {name!r}."]
    if close:
        parts.append(f"Did you mean: {', '.join(close)}?")
    parts.append(f"Known good names: {', '.join(SUGGESTED_BACKBONES)}.")
    parts.append("Any timm CNN works: list them with timm.list_models('*pattern*').")
    return " ".join(parts)


def create_backbone(config: ModelConfig) -> Backbone:
    """The backbone named by `config.backbone` with `config.pretrained` weights.

    pretrained: "none" = random init; "hub" = timm download (needs internet); "offline" = converted
    weights from an installed package (tf_efficientnet_lite0/1/2 only).
    backbone_args go to the timm factory (for carid_vgg: the VGG switches); drop_path_rate is passed
    when non-zero. Raises BackboneError naming the problem and the alternatives.
    """
    name = config.backbone
    if not timm.is_model(name):
        raise BackboneError(_unknown_backbone_message(name))
    architecture = name.split(".", 1)[0]
    if architecture in SCRATCH_MODELS and config.pretrained != "none":
        raise BackboneError(
            f"{architecture} is a from-scratch net without pretrained weights: set pretrained: none "
            f"(or pick a pretrained backbone; offline weights exist for {', '.join(OFFLINE_WEIGHTS)})"
        )
    reserved = sorted(set(config.backbone_args) & {"num_classes", "pretrained", "global_pool"})
    if reserved:
        raise BackboneError(
            f"backbone_args must not set {', '.join(reserved)}: carid sets them (the heads are its own)"
        )
    kwargs: dict[str, Any] = {"num_classes": 0, "drop_rate": 0.0, **config.backbone_args}
    if config.drop_path_rate:
        kwargs["drop_path_rate"] = config.drop_path_rate
    if config.pretrained == "offline" and architecture not in OFFLINE_WEIGHTS:
        raise BackboneError(
            f"no offline pretrained weights for backbone {name!r}; they exist for "
            f"{', '.join(OFFLINE_WEIGHTS)}. Use one of those, or set pretrained: hub (downloads, needs "
            "internet) or pretrained: none (random initialization)"
        )
    hub = config.pretrained == "hub"
    try:
        model = timm.create_model(name, pretrained=hub, **kwargs)
    except TypeError as exc:
        raise BackboneError(f"backbone {name}: bad backbone_args {config.backbone_args} ({exc})") from None
    except (OSError, RuntimeError) as exc:
        if not hub:
            raise
        raise BackboneError(
            f"could not get pretrained weights for {name} from the hub (needs internet): {exc}. "
            f"Offline weights exist for {', '.join(OFFLINE_WEIGHTS)} (pretrained: offline); "
            "or train from random weights with pretrained: none"
        ) from None
    except ValueError as exc:
        raise BackboneError(f"backbone {name}: {exc}") from None
    if config.pretrained == "offline":
        try:
            weights = load_offline_weights(model, architecture)
        except WeightsError as exc:
            raise BackboneError(str(exc)) from None
    elif hub:
        weights = f"hub: {model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url') or name}"
    else:
        weights = "none"
    return Backbone(name, model, weights)
