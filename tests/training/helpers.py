"""Small shared pieces of the training tests: a tiny network, its metadata, random batches."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.data import Dataset

from carid.artifacts.checkpoint import ModelMetadata
from carid.config import ModelConfig, TrainConfig
from carid.models.network import CarNet, build_network
from carid.preprocess import PreprocessSpec
from carid.training.module import CarModule

TINY_MODEL = ModelConfig(
    backbone="carid_vgg",
    pretrained="none",
    backbone_args={"widths": [8, 16], "blocks_per_stage": 1, "batch_norm": True},
    image_size=32,
    box_hidden=16,
    dropout=0.0,
)


def tiny_network(num_classes: int = 3, with_box: bool = True, box_refine: int = 0) -> CarNet:
    torch.manual_seed(0)
    config = replace(TINY_MODEL, box_refine=box_refine)
    return build_network(config, num_classes=num_classes, with_box=with_box)


def metadata_for(num_classes: int, with_box: bool = True, box_refine: int = 0) -> ModelMetadata:
    return ModelMetadata(
        class_names=tuple(f"class {i}" for i in range(num_classes)),
        preprocess=PreprocessSpec(image_size=(32, 32)).to_dict(),
        model={**replace(TINY_MODEL, box_refine=box_refine).__dict__},
        with_box=with_box,
    )


def make_module(
    num_classes: int = 3, with_box: bool = True, box_refine: int = 0, **train: object
) -> CarModule:
    config = TrainConfig(channels_last=False, **train)  # type: ignore[arg-type]
    network = tiny_network(num_classes, with_box, box_refine)
    return CarModule(network, config, metadata_for(num_classes, with_box, box_refine))


class RandomBatches(Dataset):
    """Random images with labels and boxes (every other sample has a box)."""

    def __init__(self, count: int, num_classes: int) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(count, 3, 32, 32, generator=generator)
        self.labels = torch.arange(count) % num_classes
        corners = torch.rand(count, 2, generator=generator) * 0.4
        self.boxes = torch.cat([corners, corners + 0.5], dim=1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[i],
            "label": self.labels[i],
            "box": self.boxes[i],
            "has_box": torch.tensor(i % 2 == 0),
            "index": torch.tensor(i),
        }
