"""Mixup / CutMix of training batches: what gets mixed, the soft targets, what is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from carid.config import ConfigError, TrainConfig
from carid.training.mixing import TARGET, BatchMixer, check_mixing
from carid.training.stage_front import ACTIVATION
from tests.training.helpers import RandomBatches, make_module
from tests.training.test_stage_cache import STAGE


def test_mixup_blends_each_row_with_its_mirror_row_and_leaves_the_odd_one_out() -> None:
    images = torch.randn(5, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 2])
    batch = {"image": images.clone(), "label": labels}
    mixer = BatchMixer(mixup=1.0, cutmix=0.0, prob=1.0, num_classes=4)
    np.random.seed(3)
    mixed = mixer(batch)
    assert torch.equal(batch["image"], images)  # the batch it was given is not changed
    targets = mixed[TARGET]
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(5))
    lam = float(targets[0, 0])
    assert 0.0 < lam < 1.0 and float(targets[0, 3]) == pytest.approx(1 - lam)
    for row, partner in ((0, 3), (1, 2)):
        expected = lam * images[row] + (1 - lam) * images[partner]
        torch.testing.assert_close(mixed["image"][row], expected)
    assert torch.equal(mixed["image"][4], images[4])  # the odd last row stays itself
    assert torch.equal(targets[4], F.one_hot(torch.tensor(2), 4).float())


def test_cutmix_on_cached_maps_pastes_a_window_and_weights_by_its_area() -> None:
    maps = torch.randn(4, 6, 10, 10).half()
    labels = torch.tensor([0, 1, 2, 3])
    mixer = BatchMixer(mixup=0.0, cutmix=1.0, prob=1.0, num_classes=4)
    np.random.seed(0)
    mixed = mixer({ACTIVATION: maps, "label": labels})
    out, original = mixed[ACTIVATION], maps.float()
    assert out.dtype == torch.float32
    own = (out[0] == original[0]).all(dim=0)  # map cells still the row's own
    from_partner = (out[0] == original[3]).all(dim=0)
    assert bool((own | from_partner).all()) and 0 < int(from_partner.sum()) < 100
    assert float(mixed[TARGET][0, 0]) == pytest.approx(float(own.float().mean()))
    assert float(mixed[TARGET][0, 3]) == pytest.approx(float(from_partner.float().mean()))


def test_pooled_features_are_mixed_with_mixup() -> None:
    features = torch.randn(4, 16)
    mixer = BatchMixer(mixup=0.5, cutmix=0.0, prob=1.0, num_classes=4)
    np.random.seed(1)
    mixed = mixer({"features": features, "label": torch.tensor([0, 1, 2, 3])})
    lam = float(mixed[TARGET][0, 0])
    torch.testing.assert_close(mixed["features"][0], lam * features[0] + (1 - lam) * features[3])


def test_mixing_off_builds_no_mixer() -> None:
    assert BatchMixer.from_config(TrainConfig(), 4) is None
    assert BatchMixer.from_config(TrainConfig(mixup=0.2, mix_prob=0.0), 4) is None
    assert isinstance(BatchMixer.from_config(TrainConfig(cutmix=1.0), 4), BatchMixer)


def test_settings_that_cannot_work_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"train\.mixup and train\.cutmix must be >= 0"):
        check_mixing(TrainConfig(mixup=-0.1), with_box=False, pooled_cache=False)
    with pytest.raises(ConfigError, match="mix_prob"):
        check_mixing(TrainConfig(mixup=0.2, mix_prob=1.5), with_box=False, pooled_cache=False)
    with pytest.raises(ConfigError, match="no one true box"):
        check_mixing(TrainConfig(mixup=0.2), with_box=True, pooled_cache=False)
    with pytest.raises(ConfigError, match="pooled-feature cache"):
        check_mixing(TrainConfig(cutmix=1.0), with_box=False, pooled_cache=True)
    check_mixing(TrainConfig(mixup=0.2), with_box=False, pooled_cache=True)
    with pytest.raises(ConfigError, match="no one true box"):
        make_module(with_box=True, mixup=0.2)


def test_a_mixed_training_step_trains_on_the_soft_targets() -> None:
    module = make_module(num_classes=3, with_box=False, mixup=0.4, label_smoothing=0.1)
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    batch = next(iter(DataLoader(RandomBatches(8, 3), batch_size=8)))
    np.random.seed(5)
    mixed = module.mixed(batch)
    assert not torch.equal(mixed["image"], batch["image"])
    with torch.no_grad():
        logits = module.network(mixed["image"]).logits
        expected = F.cross_entropy(logits, mixed[TARGET], label_smoothing=0.1)
        hard = F.cross_entropy(logits, batch["label"], label_smoothing=0.1)
        np.random.seed(5)
        loss = module.training_step(batch, 0)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, hard)


@pytest.mark.parametrize(
    ("name", "settings", "model"),
    [
        ("images", {"mixup": 0.4, "cutmix": 1.0}, {}),
        ("stage", {"cutmix": 1.0, "freeze": "blocks.3", "cache_features": True}, STAGE["model"]),
    ],
)
def test_training_runs_mix_images_or_the_stage_cache(tiny_config, monkeypatch, name, settings, model) -> None:
    from carid.training.fit import train

    mixed_keys: list[str] = []
    mix = BatchMixer.__call__

    def spy(self, batch):
        result = mix(self, batch)
        mixed_keys.extend(key for key in ("image", ACTIVATION) if key in batch)
        return result

    monkeypatch.setattr(BatchMixer, "__call__", spy)
    config = tiny_config(
        name=f"mix-{name}", train={"epochs": 1, **settings}, model={**model, "box_head": "off"}
    )
    result = train(config, progress=False)
    assert result.metrics["train/loss"] > 0 and "test/acc" in result.metrics
    assert mixed_keys and set(mixed_keys) == {"image" if name == "images" else ACTIVATION}
    with pytest.raises(ConfigError, match="no one true box"):
        train(tiny_config(name=f"mix-box-{name}", train=settings, model=model), progress=False)
