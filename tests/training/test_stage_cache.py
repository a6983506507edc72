"""Stage cache: the back of a backbone trained from cached activations of its frozen front."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch

from carid.artifacts.checkpoint import ModelMetadata
from carid.config import ModelConfig, TrainConfig
from carid.data.split import load_split
from carid.models.checkpoint import load_for_inference
from carid.models.network import CarNet, build_network
from carid.preprocess import PreprocessSpec
from carid.training.datamodule import CarDataModule
from carid.training.module import CarModule
from carid.training.stage_cache import (
    MapAugment,
    StageCacheError,
    StageCacheModule,
    StageSplit,
    build_stage_cache,
    is_stage_freeze,
    stage_cache_key,
)

SIZE = 64
MODEL = ModelConfig(
    backbone="test_efficientnet", pretrained="none", image_size=SIZE, dropout=0.0, box_hidden=16
)
# test_efficientnet: conv_stem, bn1, blocks.0..blocks.4 (one block each), conv_head, bn2
STAGE = {"model": {"backbone": "test_efficientnet", "backbone_args": {}, "image_size": SIZE}}


class Snapshot(L.Callback):
    """The network's weights when training starts."""

    initial: dict[str, torch.Tensor]

    def on_fit_start(self, trainer, pl_module) -> None:
        self.initial = {
            name: value.detach().clone() for name, value in pl_module.network.state_dict().items()
        }


def network_and_split(freeze: str = "blocks.3", with_box: bool = True) -> tuple[CarNet, StageSplit]:
    torch.manual_seed(0)
    network = build_network(MODEL, num_classes=3, with_box=with_box)
    network.apply_freeze(freeze)
    return network, StageSplit.at(network.backbone, freeze, probe_size=(SIZE, SIZE))


def metadata(with_box: bool = True) -> ModelMetadata:
    return ModelMetadata(
        class_names=("a", "b", "c"),
        preprocess=PreprocessSpec(image_size=(SIZE, SIZE)).to_dict(),
        model=dict(MODEL.__dict__),
        with_box=with_box,
    )


def gradients(network: CarNet) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in network.named_parameters() if p.grad is not None}


def test_cached_and_uncached_steps_give_the_same_loss_and_gradients() -> None:
    network, split = network_and_split()
    train = TrainConfig(channels_last=False, freeze="blocks.3", cache_features=True)
    generator = torch.Generator().manual_seed(3)
    corners = torch.rand(6, 2, generator=generator) * 0.4
    batch = {
        "image": torch.randn(6, 3, SIZE, SIZE, generator=generator),
        "label": torch.tensor([0, 1, 2, 0, 1, 2]),
        "box": torch.cat([corners, corners + 0.5], dim=1),
        "has_box": torch.tensor([True, False, True, True, False, True]),
        "index": torch.arange(6),
    }
    uncached = CarModule(network, train, metadata())
    uncached.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    network.train()
    expected_loss = uncached.training_step(batch, 0)
    expected_loss.backward()
    expected = gradients(network)
    network.zero_grad(set_to_none=True)

    network.eval()
    with torch.no_grad():
        activation = split.front(batch["image"])
    network.train()
    cached = StageCacheModule(network, train, metadata(), split)
    cached.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    rows = {name: value for name, value in batch.items() if name != "image"}
    loss = cached.training_step({**rows, "activation": activation}, 0)
    loss.backward()
    got = gradients(network)

    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert set(got) == set(expected)
    trained = {name.split(".")[2] for name in got if name.startswith("backbone.")}
    assert {"blocks", "conv_head", "bn2"} <= trained  # the back trains ...
    assert not any(name.startswith(("backbone.model.conv_stem", "backbone.model.bn1")) for name in got)
    assert all(not name.startswith(f"backbone.model.blocks.{i}.") for name in got for i in range(3))
    assert any(name.startswith("backbone.model.blocks.3.") for name in got)  # ... from the freeze point
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_the_cut_follows_the_freeze_point_and_refuses_a_layer_inside_a_block() -> None:
    network, split = network_and_split("blocks.3")
    assert split.stage == "blocks.3.0" and [name for name, _ in split.steps[: split.cut]][:2] == [
        "conv_stem",
        "bn1",
    ]
    layer = network.backbone.layer_index("blocks.4")
    assert StageSplit.at(network.backbone, layer, (SIZE, SIZE)).stage == "blocks.4.0"
    with pytest.raises(StageCacheError, match=r"inside a block.*'blocks\.3\.0' or 'blocks\.4\.0'"):
        StageSplit.at(network.backbone, "blocks.3.0.bn1", (SIZE, SIZE))
    assert is_stage_freeze("blocks.5") and is_stage_freeze(70)
    assert not any(is_stage_freeze(value) for value in ("backbone", "none", 0, "0"))


def test_cache_key_follows_the_freeze_point_and_the_front_weights_only(tiny_config, tmp_path: Path) -> None:
    from carid.training.run_data import load_run_data

    table = load_run_data(tiny_config(), tmp_path / "run", reuse_split=False, write=False, progress=False)
    data = CarDataModule(table, PreprocessSpec(image_size=(SIZE, SIZE)), train=TrainConfig(num_workers=0))
    network, split = network_and_split("blocks.3")
    key = stage_cache_key(split, data, ["train", "val"])
    assert key == stage_cache_key(split, data, ["train", "val"])
    later = StageSplit.at(network.backbone, "blocks.4", (SIZE, SIZE))
    assert stage_cache_key(later, data, ["train", "val"]) != key
    assert stage_cache_key(split, data, ["train", "val"], crop=1) != key
    with torch.no_grad():
        network.backbone.model.conv_head.weight.add_(1.0)  # the back: the cached activations stay valid
    assert stage_cache_key(split, data, ["train", "val"]) == key
    with torch.no_grad():
        network.backbone.model.conv_stem.weight.add_(1.0)  # the front: they do not
    assert stage_cache_key(split, data, ["train", "val"]) != key


def test_cached_rows_are_the_front_of_the_eval_images_and_crop_rows_are_larger(
    tiny_config, tmp_path: Path
) -> None:
    from carid.training.run_data import load_run_data

    table = load_run_data(tiny_config(), tmp_path / "run", reuse_split=False, write=False, progress=False)
    data = CarDataModule(
        table, PreprocessSpec(image_size=(SIZE, SIZE)), train=TrainConfig(num_workers=0, batch_size=64)
    )
    _, split = network_and_split("blocks.3")
    cached, info = build_stage_cache(
        split, data, tmp_path / "cache", crop=1, augment_passes=1, progress=False
    )
    batch = next(iter(data.feature_dataloader("val")))
    assert torch.equal(cached["val"]["index"], batch["index"])
    split.backbone.eval()
    with torch.no_grad():
        expected = split.front(batch["image"])
    assert cached["val"]["activation"].dtype == torch.float16
    torch.testing.assert_close(cached["val"]["activation"].float(), expected, rtol=2e-3, atol=2e-3)
    train_images = len(data.positions["train"])
    assert info.counts["train"] == 2 * train_images and not info.hit
    channels, height, width = info.activation  # 64 px at stride 8: 8x8; train rows one cell larger
    assert (height, width) == (8, 8) and info.train_activation == (channels, 9, 9)
    again, second = build_stage_cache(
        split, data, tmp_path / "cache", crop=1, augment_passes=1, progress=False
    )
    assert second.hit and torch.equal(again["val"]["activation"], cached["val"]["activation"])


def test_map_augment_flips_and_crops_the_map_and_its_box() -> None:
    activation = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    box = torch.tensor([0.2, 0.2, 0.6, 0.8])
    has_box = torch.tensor(True)
    generator = torch.Generator().manual_seed(0)
    flipped, flipped_box, kept = MapAugment(hflip=1.0)(activation, box, has_box, generator)
    assert torch.equal(flipped, activation.flip(-1)) and bool(kept)
    torch.testing.assert_close(flipped_box, torch.tensor([0.4, 0.2, 0.8, 0.8]))
    same, same_box, _ = MapAugment(hflip=0.0)(activation, box, has_box, generator)
    assert torch.equal(same, activation) and torch.equal(same_box, box)

    windows = set()
    for _ in range(40):
        window, window_box, _ = MapAugment(crop=1)(activation, box, has_box, generator)
        assert window.shape == (2, 4, 4)
        top, left = divmod(int(window[0, 0, 0]), 5)
        windows.add((top, left))
        assert torch.equal(window, activation[:, top : top + 4, left : left + 4])
        # the box in cells of the 5x5 map, shifted into the 4x4 window
        expected = (torch.tensor([1.0, 1.0, 3.0, 4.0]) - torch.tensor([left, top] * 2)) / 4
        torch.testing.assert_close(window_box, expected.clamp(0, 1))
    assert windows == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_training_from_the_stage_cache_gives_a_full_checkpoint(tiny_config) -> None:
    from carid.training.fit import train

    settings = {"freeze": "blocks.3", "cache_features": True, "epochs": 2, "lr": 0.01, "cache_map_hflip": 0.5}
    settings["channels_last"] = True  # the front's pass converts the network, which must stay trainable
    config = tiny_config(name="stage", train=settings, **STAGE)
    snapshot = Snapshot()
    first = train(config, progress=False, callbacks=[snapshot])
    initial = snapshot.initial
    summary = json.loads((first.run_dir / "summary.json").read_text())
    cache = summary["feature_cache"]
    assert cache["kind"] == "stage" and cache["stage"] == "blocks.3.0" and cache["hit"] is False
    assert cache["counts"]["train"] == summary["split_counts"]["train"] and summary["epochs_completed"] == 2
    assert "test/acc" in first.metrics  # the test split is scored on images, through the whole network

    network, saved = load_for_inference(first.best_checkpoint)
    state = network.state_dict()
    front = ("backbone.model.conv_stem.", "backbone.model.bn1.", "backbone.model.blocks.0.")
    assert all(torch.equal(state[name], initial[name]) for name in state if name.startswith(front))
    for name in ("backbone.model.blocks.3.0.conv_pw.weight", "backbone.model.conv_head.weight"):
        assert not torch.equal(state[name], initial[name]), name
    # what validation scored (the back on the cached val rows) is the whole network on the val images
    stored = torch.load(cache["path"], weights_only=True)["splits"]["val"]
    datamodule = CarDataModule(
        load_split(first.run_dir / "split.csv"),
        saved.preprocess_spec(),
        classes=list(saved.class_names),
        train=TrainConfig(num_workers=0, batch_size=64),
    )
    batch = next(iter(datamodule.feature_dataloader("val")))
    assert torch.equal(batch["index"], stored["index"])
    split = StageSplit.at(network.backbone, "blocks.3", (SIZE, SIZE))
    with torch.no_grad():
        full = network(batch["image"])
        feature_map = split.back(stored["activation"].float())
        from_cache = network.forward_heads(network.backbone.pool(feature_map), feature_map)
    torch.testing.assert_close(from_cache.logits, full.logits, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(from_cache.box, full.box, rtol=1e-2, atol=1e-2)

    second = train(replace(config, name="stage-again"), progress=False)
    assert json.loads((second.run_dir / "summary.json").read_text())["feature_cache"]["hit"] is True
