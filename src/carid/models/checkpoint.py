"""Loading a carid training checkpoint for inference: rebuild the `CarNet` and load its weights.

The checkpoint's metadata format (`ModelMetadata`, `CHECKPOINT_KEY`) is `carid.artifacts.checkpoint`;
this module turns it back into a network, so that prediction and explanation load checkpoints
without importing the training code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from carid.artifacts.checkpoint import ModelMetadata, metadata_of
from carid.models.network import CarNet, build_network


def _network_state(state_dict: Mapping[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
    """The `CarModule` state dict's "network." entries, without the prefix."""
    prefix = "network."
    for key, value in state_dict.items():
        if key.startswith(prefix):
            yield key[len(prefix) :], value


def load_for_inference(
    checkpoint_path: Path | str, device: str | torch.device = "cpu"
) -> tuple[CarNet, ModelMetadata]:
    """Rebuild the network of a carid checkpoint, in eval mode, and its metadata.

    Loads with `torch.load(weights_only=True)`: no code from the file is run. The backbone is built
    without downloading or reading pretrained weights (`pretrained="none"`); the checkpoint's
    weights are then loaded strictly.
    """
    path = Path(checkpoint_path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    metadata = metadata_of(checkpoint, path)
    config = replace(metadata.model_config(), pretrained="none")
    network = build_network(config, num_classes=metadata.num_classes, with_box=metadata.with_box)
    network.load_state_dict(dict(_network_state(checkpoint["state_dict"])), strict=True)
    return network.to(device).eval(), metadata
