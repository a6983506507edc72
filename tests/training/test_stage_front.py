"""The frozen front of a stage cache: traced once per image size, equal to the eager front."""

from __future__ import annotations

import torch

from carid.config import ModelConfig
from carid.models.network import build_network
from carid.training.stage_cache import StageSplit
from carid.training.stage_front import FrontRunner

MODEL = ModelConfig(backbone="test_efficientnet", pretrained="none", image_size=64, dropout=0.0)


def test_the_front_is_traced_once_per_image_size_and_matches_the_eager_front() -> None:
    torch.manual_seed(0)
    network = build_network(MODEL, num_classes=3, with_box=False)
    network.apply_freeze("blocks.3")
    split = StageSplit.at(network.backbone, "blocks.3", probe_size=(64, 64))
    split.backbone.eval()
    runner = FrontRunner(split)
    with torch.inference_mode():
        for batch, size in ((9, 64), (2, 64), (5, 72), (9, 64)):
            images = torch.randn(batch, 3, size, size)
            torch.testing.assert_close(runner(images), split.front(images), rtol=1e-4, atol=1e-4)
    assert sorted(runner.graphs) == [(3, 64, 64), (3, 72, 72)]
    assert all(isinstance(graph, torch.jit.ScriptModule) for graph in runner.graphs.values())
