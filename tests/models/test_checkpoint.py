"""`load_for_inference`: a network rebuilt from a checkpoint's metadata predicts exactly as saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from carid.artifacts.checkpoint import CHECKPOINT_KEY, ModelMetadata
from carid.config import ModelConfig
from carid.models.checkpoint import load_for_inference
from carid.models.network import build_network
from carid.preprocess import PreprocessSpec
from tests.training.helpers import TINY_MODEL


@pytest.mark.parametrize("box_input", ["map", "pooled", "cells"])
def test_a_saved_network_loads_and_predicts_identically(box_input: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = ModelConfig(**{**TINY_MODEL.__dict__, "box_input": box_input})
    network = build_network(config, num_classes=3, with_box=True).eval()
    metadata = ModelMetadata(
        class_names=("a", "b", "c"),
        preprocess=PreprocessSpec(image_size=(32, 32)).to_dict(),
        model={**config.__dict__},
        with_box=True,
    )
    state = {f"network.{key}": value for key, value in network.state_dict().items()}
    path = tmp_path / "model.ckpt"
    torch.save({CHECKPOINT_KEY: metadata.to_dict(), "state_dict": state}, path)
    loaded, loaded_metadata = load_for_inference(path)
    assert loaded_metadata == metadata and not loaded.training
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = network(images), loaded(images)
    assert torch.equal(expected.logits, got.logits) and torch.equal(expected.box, got.box)


def test_load_for_inference_rejects_a_checkpoint_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a carid checkpoint"):
        load_for_inference(path)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_for_inference(tmp_path / "missing.ckpt")
