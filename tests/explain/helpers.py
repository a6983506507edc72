"""Small networks and photos for the explanation tests (everything tiny: 32-64 px, random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from carid.artifacts.checkpoint import ModelMetadata
from carid.config import ModelConfig
from carid.explain import ClassifierInfo, ExplainedModel
from carid.models.network import CarNet, build_network
from carid.preprocess import PreprocessSpec

CLASS_NAMES = ("Audi TTS Coupe 2012", "Ford Fiesta Sedan 2012", "Volvo 240 Sedan 1993")

TINY_VGG = ModelConfig(
    backbone="carid_vgg",
    pretrained="none",
    backbone_args={"widths": [8, 16], "blocks_per_stage": 1, "batch_norm": True},
    image_size=32,
    box_hidden=16,
    dropout=0.0,
)


def tiny_network(config: ModelConfig = TINY_VGG, with_box: bool = True, seed: int = 0) -> CarNet:
    torch.manual_seed(seed)
    return build_network(config, num_classes=len(CLASS_NAMES), with_box=with_box).eval()


def tiny_metadata(
    config: ModelConfig = TINY_VGG, with_box: bool = True, resize_mode: str = "stretch"
) -> ModelMetadata:
    size = config.image_size
    return ModelMetadata(
        class_names=CLASS_NAMES,
        preprocess=PreprocessSpec(image_size=(size, size), resize_mode=resize_mode).to_dict(),
        model={**config.__dict__},
        with_box=with_box,
    )


def tiny_model(
    config: ModelConfig = TINY_VGG, with_box: bool = True, resize_mode: str = "stretch"
) -> ExplainedModel:
    return ExplainedModel.of(tiny_network(config, with_box), tiny_metadata(config, with_box, resize_mode))


def write_checkpoint(path: Path, network: CarNet, metadata: ModelMetadata) -> Path:
    """A checkpoint file in the layout `load_for_inference` reads (Lightning's keys + carid metadata)."""
    state = {f"network.{key}": value for key, value in network.state_dict().items()}
    torch.save({"state_dict": state, "carid": metadata.to_dict()}, path)
    return path


def random_photo(width: int = 50, height: int = 30, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class BrightnessNet(nn.Module):
    """A hand-built CNN that scores brightness: logit 0 = mean over a half-resolution feature map of
    relu(sum of the normalized RGB values), logit 1 = its negative.

    Black pixels and the letterbox border (mean colour, normalized to 0) give 0 activation, white
    pixels a positive one, so Grad-CAM of class 0 must light up exactly the white parts of the photo.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        nn.init.ones_(self.conv.weight)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.act(self.conv(images)))  # [B, 1, H / 2, W / 2]
        score = features.mean(dim=(1, 2, 3))
        return torch.stack([score, -score], dim=1)


def brightness_model(resize_mode: str, size: int = 64) -> ExplainedModel:
    spec = PreprocessSpec(image_size=(size, size), resize_mode=resize_mode)
    return ExplainedModel.of(BrightnessNet(), ClassifierInfo(("bright", "dark"), spec))


def square_photo(size: tuple[int, int], square: tuple[int, int, int, int]) -> Image.Image:
    """A black photo of `size` (width, height) with a white square at xyxy pixels `square`."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x1, y1, x2, y2 = square
    pixels[y1:y2, x1:x2] = 255
    return Image.fromarray(pixels)
