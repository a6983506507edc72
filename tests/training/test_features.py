"""Frozen-backbone feature cache: heads trained from cached embeddings give a normal full checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from carid.config import TrainConfig
from carid.data.split import load_split
from carid.models.checkpoint import load_for_inference
from carid.models.network import build_network
from carid.training.datamodule import CarDataModule
from carid.training.features import FeatureDataModule, backbone_fingerprint, build_feature_cache, cache_key


class Snapshot(L.Callback):
    """The network's weights when training starts."""

    initial: dict[str, torch.Tensor]

    def on_fit_start(self, trainer, pl_module) -> None:
        self.initial = {
            name: value.detach().clone() for name, value in pl_module.network.state_dict().items()
        }


CACHED = {"freeze": "backbone", "cache_features": True, "epochs": 3, "lr": 0.01}


def test_cached_head_training_checkpoint_predicts_like_the_full_model(tiny_config) -> None:
    config = tiny_config(train=CACHED, name="cached")
    from carid.training.fit import train

    snapshot = Snapshot()
    first = train(config, progress=False, callbacks=[snapshot])
    summary = json.loads((first.run_dir / "summary.json").read_text())
    assert summary["feature_cache"]["hit"] is False and summary["epochs_completed"] == 3
    assert summary["feature_cache"]["counts"]["train"] == summary["split_counts"]["train"]

    network, metadata = load_for_inference(first.best_checkpoint)
    # the box head reads the feature map (box_input "map"), so the cache holds the maps too
    grid = network.box_head.grid
    assert summary["feature_cache"]["feature_map"] == [network.backbone.feature_channels, *grid]
    # the embeddings the heads were trained on are the backbone's output on the eval-transformed images
    cached = torch.load(summary["feature_cache"]["path"], weights_only=True)["splits"]["val"]
    datamodule = CarDataModule(
        load_split(first.run_dir / "split.csv"),
        metadata.preprocess_spec(),
        classes=list(metadata.class_names),
        train=TrainConfig(num_workers=0, batch_size=64),
    )
    batch = next(iter(datamodule.feature_dataloader("val")))
    assert torch.equal(batch["index"], cached["index"])
    with torch.no_grad():
        full = network(batch["image"])
        from_cache = network.forward_heads(cached["features"], cached["feature_map"])
    torch.testing.assert_close(full.logits, from_cache.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(full.box, from_cache.box, rtol=0, atol=1e-5)
    # the heads trained, the backbone did not
    state = network.state_dict()
    assert all(
        torch.equal(state[name], snapshot.initial[name]) for name in state if name.startswith("backbone.")
    )
    assert not torch.equal(state["class_head.fc.weight"], snapshot.initial["class_head.fc.weight"])
    assert not torch.equal(state["box_head.fc.weight"], snapshot.initial["box_head.fc.weight"])

    second = train(config.__class__(**{**config.__dict__, "name": "cached-again"}), progress=False)
    again = json.loads((second.run_dir / "summary.json").read_text())
    assert again["feature_cache"]["hit"] is True and second.metrics["feature_cache_hit"] is True
    assert again["feature_cache"]["key"] == summary["feature_cache"]["key"]


def test_cache_key_follows_the_backbone_weights_and_image_size(tiny_config, tmp_path: Path) -> None:
    from carid.preprocess import PreprocessSpec
    from carid.training.run_data import load_run_data

    config = tiny_config()
    table = load_run_data(config, tmp_path / "run", reuse_split=False, write=False, progress=False)
    network = build_network(config.model, num_classes=3, with_box=True)
    train_config = TrainConfig(num_workers=0, batch_size=8)

    def datamodule(size: int) -> CarDataModule:
        return CarDataModule(table, PreprocessSpec(image_size=(size, size)), train=train_config)

    key = cache_key(network, datamodule(32), ["train", "val"])
    assert key == cache_key(network, datamodule(32), ["train", "val"])
    assert key != cache_key(network, datamodule(40), ["train", "val"])
    before = backbone_fingerprint(network)
    with torch.no_grad():
        next(network.backbone.parameters()).add_(1.0)
    assert backbone_fingerprint(network) != before
    assert cache_key(network, datamodule(32), ["train", "val"]) != key

    cached, info = build_feature_cache(
        network, datamodule(32), tmp_path / "cache", augment_passes=1, progress=False
    )
    train_images = len(datamodule(32).positions["train"])
    assert info.counts["train"] == 2 * train_images and not info.hit and info.path.is_file()
    loader = FeatureDataModule(cached, batch_size=4).train_dataloader()
    batch = next(iter(loader))
    assert batch["features"].shape == (4, info.feature_dim) and set(batch) >= {"label", "box", "has_box"}
    assert batch["feature_map"].shape == (4, *info.feature_map) and info.megabytes > 0


def test_a_pooled_box_head_caches_no_maps_and_gets_its_own_key(tiny_config, tmp_path: Path) -> None:
    from dataclasses import replace

    from carid.preprocess import PreprocessSpec
    from carid.training.run_data import load_run_data

    config = tiny_config()
    table = load_run_data(config, tmp_path / "run", reuse_split=False, write=False, progress=False)
    data = CarDataModule(table, PreprocessSpec(image_size=(32, 32)), train=TrainConfig(num_workers=0))
    torch.manual_seed(0)
    with_map = build_network(config.model, num_classes=3, with_box=True)
    torch.manual_seed(0)
    pooled = build_network(replace(config.model, box_input="pooled"), num_classes=3, with_box=True)
    assert backbone_fingerprint(with_map) == backbone_fingerprint(pooled)
    assert cache_key(with_map, data, ["train"]) != cache_key(pooled, data, ["train"])
    cached, info = build_feature_cache(pooled, data, tmp_path / "cache", splits=("train",), progress=False)
    assert "feature_map" not in cached["train"] and info.feature_map is None
    assert info.to_dict()["feature_map"] is None


def test_a_box_head_reading_a_finer_map_caches_it_and_predicts_from_it(tiny_config, tmp_path: Path) -> None:
    from dataclasses import replace

    from carid.preprocess import PreprocessSpec
    from carid.training.run_data import load_run_data

    model = {"backbone": "test_efficientnet", "backbone_args": {}, "image_size": 64, "box_refine": 1}
    config = tiny_config(model=model)
    table = load_run_data(config, tmp_path / "run", reuse_split=False, write=False, progress=False)
    data = CarDataModule(table, PreprocessSpec(image_size=(64, 64)), train=TrainConfig(num_workers=0))
    torch.manual_seed(0)
    last_map = build_network(config.model, num_classes=3, with_box=True).eval()
    torch.manual_seed(0)
    finer = build_network(replace(config.model, box_refine_stride=16), num_classes=3, with_box=True).eval()
    assert finer.box_reads_detail and not last_map.box_reads_detail
    assert cache_key(last_map, data, ["val"]) != cache_key(finer, data, ["val"])
    assert (
        "detail_map"
        not in build_feature_cache(last_map, data, tmp_path / "a", splits=("val",), progress=False)[0]["val"]
    )

    cached = build_feature_cache(finer, data, tmp_path / "b", splits=("val",), progress=False)[0]["val"]
    assert cached["detail_map"].shape[-2:] == (4, 4)  # 64 px at stride 16
    batch = next(iter(data.feature_dataloader("val")))
    assert torch.equal(batch["index"], cached["index"])
    with torch.no_grad():
        full = finer(batch["image"])
        from_cache = finer.forward_heads(cached["features"], cached["feature_map"], cached["detail_map"])
    torch.testing.assert_close(full.box, from_cache.box, rtol=0, atol=1e-5)
    torch.testing.assert_close(full.logits, from_cache.logits, rtol=0, atol=1e-5)


def test_the_feature_pass_reports_progress_in_a_log_file(capsys) -> None:
    from torch.utils.data import DataLoader

    from carid.training.features import extract_features
    from tests.training.helpers import tiny_network

    network = tiny_network(num_classes=3, with_box=False)
    images = [
        {"image": torch.rand(3, 32, 32), "label": 0, "box": torch.zeros(4), "has_box": False, "index": i}
        for i in range(6)
    ]
    loader = DataLoader(images, batch_size=2)
    out = extract_features(network, loader, progress=True, description="val features")
    assert out["features"].shape[0] == 6
    lines = capsys.readouterr().out.splitlines()  # pytest captures stdout: not a terminal
    assert lines[0] == "val features: 3 batches" and lines[-1].startswith("val features: 3/3 (100%), ")
