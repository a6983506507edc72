"""Class balancing: the class weights, the balanced sampler, the weighted loss from the train split,
and the per-class recall a balanced run prints and writes into its run folder."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from carid.config import ConfigError
from carid.data.split import load_split
from carid.training.balance import (
    RECALL_FILE,
    Balance,
    ClassRecall,
    class_counts,
    class_weights,
    loss_weights,
    recall_line,
    sample_weights,
    sampling_options,
    train_labels,
)
from carid.training.features import FeatureDataModule
from carid.training.fit import train
from carid.training.sampling import EpochSampler


def test_inverse_weights_average_one_over_the_classes_present() -> None:
    weights = class_weights([10, 5, 0, 1], "inverse")
    expected = np.array([0.1, 0.2, 0.0, 1.0]) * 3 / 1.3
    np.testing.assert_allclose(weights, expected)
    assert weights[[0, 1, 3]].mean() == pytest.approx(1.0)


def test_effective_number_weights_follow_cui_et_al() -> None:
    beta = 0.99
    counts = np.array([100, 10])
    raw = (1 - beta) / (1 - beta**counts)  # 1 / effective number (1 - beta^n) / (1 - beta)
    np.testing.assert_allclose(class_weights(counts, "effective", beta), raw * 2 / raw.sum())
    # beta 0: every present class weighs the same; beta -> 1: inverse frequency
    np.testing.assert_allclose(class_weights([100, 10], "effective", 0.0), [1.0, 1.0])
    np.testing.assert_allclose(
        class_weights([100, 10], "effective", 0.999999), class_weights([100, 10], "inverse"), rtol=1e-3
    )


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"mode": "both"}, "train.balance"),
        ({"scheme": "sqrt"}, "balance_scheme"),
        ({"beta": 1.0}, "balance_beta"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_key(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Balance(**settings)


def test_counting_skips_unlabeled_rows_and_an_empty_training_set_is_refused() -> None:
    assert class_counts(torch.tensor([0, 2, 2, -1]), num_classes=4).tolist() == [1, 0, 2, 0]
    with pytest.raises(ConfigError, match="no labelled sample"):
        class_weights([0, 0])


def test_the_sampler_draws_a_rare_class_about_as_often_as_a_common_one() -> None:
    labels = [0] * 90 + [1] * 10
    balance = Balance("sampler")
    weights = sample_weights(labels, balance)
    assert weights[0] * 9 == pytest.approx(float(weights[-1]))
    options = sampling_options(labels, balance, seed=3)
    sampler = options["sampler"]
    assert isinstance(sampler, EpochSampler) and sampler.weights is not None and len(sampler) == 100
    draws = [index for _ in range(20) for index, _ in sampler]
    rare_share = sum(labels[i] == 1 for i in draws) / len(draws)
    assert 0.4 < rare_share < 0.6  # 0.1 without balancing
    again = sampling_options(labels, balance, seed=3)["sampler"]
    assert list(again) == list(sampling_options(labels, balance, seed=3)["sampler"])  # seeded
    plain = sampling_options(labels, Balance("loss"), seed=3)["sampler"]  # a plain shuffle
    assert plain.weights is None and sorted(row for row, _ in plain) == list(range(100))


def test_loss_weights_only_in_loss_mode_and_labels_beyond_the_network_are_refused() -> None:
    assert loss_weights([0, 1], Balance("sampler"), 2) is None
    weights = loss_weights([0, 0, 0, 1], Balance("loss"), 3)
    assert weights is not None and weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([0.5, 1.5, 0.0])
    with pytest.raises(ConfigError, match="classes of the network"):
        loss_weights([0, 3], Balance("loss"), 2)


def test_class_recall_counts_each_class_and_rewrites_its_csv(tmp_path: Path) -> None:
    recall = ClassRecall(["a", "b", "c"])
    logits = torch.eye(3)[[0, 0, 1, 1, 0]]  # predicted: a a b b a
    recall.update("val", logits, torch.tensor([0, 0, 1, 0, -1]))  # the unlabeled row does not count
    recall.update("train", logits, torch.tensor([2, 2, 2, 2, 2]))  # training batches are not counted
    values = recall.report("val", 0, tmp_path)
    np.testing.assert_allclose(values, [2 / 3, 1.0, 0.0])
    recall.update("val", logits[:2], torch.tensor([0, 0]))
    recall.report("val", 1, tmp_path)
    recall.update("val", logits[:2], torch.tensor([1, 1]))
    recall.report("val", 1, tmp_path)  # epoch 1 again (a resumed run): replaces, does not repeat
    with (tmp_path / RECALL_FILE).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["epoch"], r["class"], r["support"], float(r["recall"])) for r in rows] == [
        ("0", "a", "3", pytest.approx(2 / 3)),
        ("0", "b", "1", 1.0),
        ("0", "c", "0", 0.0),
        ("1", "a", "0", 0.0),
        ("1", "b", "2", 0.0),
        ("1", "c", "0", 0.0),
    ]


def test_the_recall_line_names_every_class_or_the_lowest_ones() -> None:
    line = recall_line("val", 2, ["a", "b"], np.array([0.5, 1.0]), np.array([4, 2]))
    assert line == "val per-class recall, epoch 2: mean 0.750; a 0.500 (4), b 1.000 (2)"
    names = [f"k{i}" for i in range(12)]
    many = recall_line("val", 0, names, np.linspace(1.0, 0.0, 12), np.ones(12, dtype=int))
    assert many.split("; ")[1].startswith("k11 0.000 (1), k10") and many.endswith("... (2 more)")


def test_train_labels_of_a_feature_cache_and_its_balanced_loader() -> None:
    cached = {"train": {"features": torch.zeros(6, 2), "label": torch.tensor([0, 0, 0, 0, 1, 2])}}
    data = FeatureDataModule(cached, batch_size=2, seed=0, balance=Balance("sampler"))
    assert train_labels(data).tolist() == [0, 0, 0, 0, 1, 2]
    sampler = data.train_dataloader().sampler
    assert isinstance(sampler, EpochSampler) and sampler.weights is not None
    with pytest.raises(ConfigError, match="datamodule"):
        train_labels(object())


class LossWeights(L.Callback):
    """The class weights of the loss when training starts."""

    weights: torch.Tensor | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        weights = pl_module.loss_fn.class_weights
        self.weights = None if weights is None else weights.detach().cpu().clone()


def _train_counts(run_dir: Path, classes: list[str]) -> list[int]:
    samples = load_split(run_dir / "split.csv").samples
    counts = Counter(sample.label for sample in samples if sample.split == "train")
    return [counts[name] for name in classes]


def _recall_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / RECALL_FILE).open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_feature_cache_run_with_loss_weights_counts_its_train_split(tiny_config) -> None:
    # two of the eight red images are left, so red is the rare class of the training split
    config = tiny_config(
        data={"exclude": [f"red_0{i}.png" for i in range(6)]},
        train={"freeze": "backbone", "cache_features": True, "balance": "loss"}
        | {"balance_scheme": "effective"},
        name="balanced-cache",
    )
    watcher = LossWeights()
    result = train(config, progress=False, callbacks=[watcher])
    classes = ["blue", "green", "red"]
    counts = _train_counts(result.run_dir, classes)
    assert counts[2] < counts[0]
    assert watcher.weights is not None
    np.testing.assert_allclose(watcher.weights.numpy(), class_weights(counts, "effective", 0.999), rtol=1e-6)
    rows = _recall_rows(result.run_dir)
    assert {row["stage"] for row in rows} == {"val", "test"}
    assert sorted({row["class"] for row in rows}) == classes


def test_a_plain_run_with_the_sampler_logs_per_class_recall(tiny_config, caplog) -> None:
    caplog.set_level(logging.INFO)
    config = tiny_config(train={"balance": "sampler"}, name="balanced-sampler")
    watcher = LossWeights()
    result = train(config, progress=False, callbacks=[watcher])
    assert watcher.weights is None  # the sampler balances; the loss stays unweighted
    rows = _recall_rows(result.run_dir)
    assert [row["class"] for row in rows if row["stage"] == "val"] == ["blue", "green", "red"]
    assert "val per-class recall, epoch 0: mean" in caplog.text
