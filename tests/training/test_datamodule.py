"""Tests for carid.training.datamodule on a tiny synthetic dataset the tests write (12 JPEGs, 3 classes)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carid import preprocess as prep
from carid.config import AugmentConfig, TrainConfig
from carid.data.samples import Problem, Sample, SampleTable
from carid.images import ImageError
from carid.preprocess import Geometry, PreprocessSpec
from carid.training.datamodule import CarDataModule, CarDataset, select_target_box
from carid.training.transforms import build_eval_transform, build_train_transform

CLASSES = ["audi", "bmw", "fiat"]
SPEC = PreprocessSpec(image_size=(48, 64), resize_mode="letterbox")
NO_COLOUR = AugmentConfig(color_jitter=0.0, blur=0.0, grayscale=0.0)
SPLIT_OF = ["train"] * 6 + ["val"] * 3 + ["test"] * 3


def write_rectangle_jpeg(
    path: Path, size: tuple[int, int], rect: tuple[int, int, int, int], seed: int
) -> None:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = rect
    pixels[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def make_table(root: Path) -> SampleTable:
    """12 photos of different sizes, each with a white rectangle; its box is the sample's largest box.

    Sample 0 has a second, smaller box; sample 1 has no box.
    """
    samples = []
    for i in range(12):
        size = (120 + 9 * i, 90 + 4 * i)
        rect = (10 + i, 8 + i, size[0] - 20, size[1] - 15)
        path = root / "images" / f"car_{i:02d}.jpg"
        write_rectangle_jpeg(path, size, rect, seed=i)
        boxes: list[tuple[int, ...]] = [rect]
        if i == 0:
            boxes.append((2, 2, 8, 8))
        if i == 1:
            boxes = []
        samples.append(
            Sample(
                path=path,
                label=CLASSES[i % 3],
                boxes=np.array(boxes, dtype=np.float64),
                width=size[0],
                height=size[1],
                split=SPLIT_OF[i],
                source=f"labels.csv line {i + 2}",
            )
        )
    return SampleTable(samples, list(CLASSES), root, "test")


@pytest.fixture
def table(tmp_path: Path) -> SampleTable:
    return make_table(tmp_path)


def module(table: SampleTable, **train_changes: object) -> CarDataModule:
    train = TrainConfig(**{"batch_size": 4, "num_workers": 0, "seed": 7, **train_changes})  # type: ignore[arg-type]
    return CarDataModule(table, SPEC, classes=CLASSES, augment=NO_COLOUR, train=train)


def bright_box(image: torch.Tensor) -> np.ndarray:
    mask = (prep.denormalize(image.numpy(), SPEC) > 127).all(axis=2)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


NETWORK_SIZE = np.array([SPEC.width, SPEC.height, SPEC.width, SPEC.height])


def test_select_target_box_is_the_largest_inside_the_image() -> None:
    boxes = [[0, 0, 10, 10], [5, 5, 60, 40], [-100, 0, 30, 20]]
    np.testing.assert_array_equal(select_target_box(boxes, 50, 50), [5, 5, 50, 40])
    assert select_target_box([[60, 60, 80, 80]], 50, 50) is None
    assert select_target_box(np.zeros((0, 4)), 50, 50) is None


def test_dataset_items_have_the_documented_shapes_and_boxes(table: SampleTable) -> None:
    dataset = CarDataset(table.samples, table.class_index(), build_eval_transform(SPEC))
    assert len(dataset) == 12
    for position in range(len(dataset)):
        item = dataset[position]
        sample = table.samples[position]
        assert item["image"].shape == (3, 48, 64) and item["image"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and int(item["label"]) == CLASSES.index(sample.label)
        assert item["box"].shape == (4,) and item["box"].dtype == torch.float32
        assert item["has_box"].dtype == torch.bool
        assert int(item["index"]) == position
        assert item["geometry"].shape == (8,) and item["geometry"].dtype == torch.float64
        if position == 1:
            assert not bool(item["has_box"])
            assert torch.equal(item["box"], torch.zeros(4))
            continue
        assert bool(item["has_box"])
        box = item["box"].numpy().astype(np.float64)
        # the box is on the white rectangle's pixels ...
        np.testing.assert_allclose(bright_box(item["image"]), box * NETWORK_SIZE, atol=1.0)
        # ... and maps back to the sample's largest box in original pixels
        geometry = Geometry.from_array(item["geometry"].numpy())
        np.testing.assert_allclose(geometry.boxes_to_original([box])[0], sample.boxes[0], atol=1e-3)


def test_train_items_keep_the_box_on_the_pixels(table: SampleTable) -> None:
    transform = build_train_transform(NO_COLOUR, SPEC, seed=0)
    dataset = CarDataset(table.samples, table.class_index(), transform)
    for position in (0, 2, 5):
        for _ in range(5):
            item = dataset[position]
            assert "geometry" not in item  # augmented items have no fixed geometry
            box = item["box"].numpy().astype(np.float64)
            np.testing.assert_allclose(bright_box(item["image"]), box * NETWORK_SIZE, atol=1.5)


def test_label_mapping_and_unlabeled_samples(table: SampleTable) -> None:
    def by_origin(sample: Sample) -> str | None:
        return {"audi": "german", "bmw": "german", "fiat": None}[sample.label or ""]

    dataset = CarDataset(table.samples, {"german": 0}, build_eval_transform(SPEC), label_of=by_origin)
    assert dataset.labels == [0, 0, -1] * 4
    assert int(dataset[2]["label"]) == -1


def test_unknown_label_is_an_error_naming_the_sample(table: SampleTable) -> None:
    with pytest.raises(ValueError, match=r"labels.csv line 4: 'fiat'"):
        CarDataset(table.samples, {"audi": 0, "bmw": 1}, build_eval_transform(SPEC))


def test_loaders_without_workers(table: SampleTable) -> None:
    data = module(table)
    assert data.num_classes == 3 and data.has_boxes
    train = data.train_dataloader()
    assert train.drop_last and not train.pin_memory and not train.persistent_workers
    batches = list(train)
    assert len(batches) == 1  # 6 training samples, batch 4, last partial batch dropped
    batch = batches[0]
    assert set(batch) == {"image", "label", "box", "has_box", "index"}
    assert batch["image"].shape == (4, 3, 48, 64) and batch["label"].shape == (4,)
    assert set(batch["index"].tolist()) <= set(range(6))
    for name, expected in (("val", [6, 7, 8]), ("test", [9, 10, 11])):
        loader = data.val_dataloader() if name == "val" else data.test_dataloader()
        (batch,) = list(loader)
        assert batch["index"].tolist() == expected
        assert batch["geometry"].shape == (3, 8)


def test_small_train_set_keeps_its_last_batch(table: SampleTable) -> None:
    loader = module(table, batch_size=8).train_dataloader()
    assert not loader.drop_last
    assert sorted(next(iter(loader))["index"].tolist()) == list(range(6))


def test_seeded_shuffling_and_augmentation_are_reproducible(table: SampleTable) -> None:
    def two_epochs(seed: int) -> list[tuple[list[int], torch.Tensor]]:
        loader = module(table, batch_size=2, seed=seed).train_dataloader()
        return [(batch["index"].tolist(), batch["image"]) for _ in range(2) for batch in loader]

    first, again, other = two_epochs(7), two_epochs(7), two_epochs(8)
    assert [order for order, _ in first] == [order for order, _ in again]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again, strict=True))
    assert [order for order, _ in first[:3]] != [order for order, _ in first[3:]]  # epochs differ
    assert [order for order, _ in first] != [order for order, _ in other]


def test_feature_and_predict_loaders_are_deterministic(table: SampleTable) -> None:
    data = module(table)
    passes = [torch.cat([b["index"] for b in data.feature_dataloader("train")]) for _ in range(2)]
    assert passes[0].tolist() == passes[1].tolist() == list(range(6))
    features = next(iter(data.feature_dataloader("val")))
    validation = next(iter(data.val_dataloader()))
    assert torch.equal(features["image"], validation["image"])
    chosen = [table.samples[11], table.samples[3]]
    (batch,) = list(data.predict_dataloader(chosen))
    assert batch["index"].tolist() == [0, 1]
    test_batch = next(iter(data.predict_dataloader()))  # default: the test split
    assert test_batch["index"].tolist() == [9, 10, 11]
    assert torch.equal(batch["image"][0], test_batch["image"][2])  # sample 11 either way


def test_bad_image_is_skipped_in_training_and_named_elsewhere(
    table: SampleTable, caplog: pytest.LogCaptureFixture
) -> None:
    table.samples[3].path.write_bytes(b"this is not a jpeg")
    table.samples[10].path.write_bytes(b"neither is this")
    data = module(table, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="carid.training.datamodule"):
        (batch,) = list(data.train_dataloader())
    assert 3 not in batch["index"].tolist() and len(batch["index"]) == 6  # sample 4 stood in for it
    assert "car_03.jpg" in caplog.text
    with pytest.raises(ImageError, match=r"car_10\.jpg"):
        list(data.test_dataloader())


def test_samples_with_errors_or_without_split_are_left_out(
    table: SampleTable, caplog: pytest.LogCaptureFixture
) -> None:
    table.samples[0] = table.samples[0].with_(split=None)
    table.add_problems([Problem("unreadable_image", "broken", "x", path=str(table.samples[2].path))])
    with caplog.at_level(logging.WARNING, logger="carid.training.datamodule"):
        data = module(table)
    assert data.positions["train"] == [1, 3, 4, 5]
    assert "1 sample(s) have no split" in caplog.text
    table.samples[5] = table.samples[5].with_(split="holdout")
    with pytest.raises(ValueError, match=r"labels.csv line 7: unknown split 'holdout'"):
        module(table)


def test_reduced_decode_matches_the_full_decode(tmp_path: Path) -> None:
    rect = (101, 83, 699, 503)
    path = tmp_path / "big.jpg"
    write_rectangle_jpeg(path, (803, 605), rect, seed=0)
    samples = [Sample(path=path, label="audi", boxes=[rect], width=803, height=605)]
    reduced = CarDataset(samples, {"audi": 0}, build_eval_transform(SPEC))[0]
    full = CarDataset(samples, {"audi": 0}, build_eval_transform(SPEC), decode_min_side=0)[0]
    assert reduced["image"].shape == full["image"].shape
    for item in (reduced, full):
        box = item["box"].numpy().astype(np.float64)
        np.testing.assert_allclose(bright_box(item["image"]), box * NETWORK_SIZE, atol=1.0)
        original = Geometry.from_array(item["geometry"].numpy()).boxes_to_original([box])[0]
        np.testing.assert_allclose(original, rect, atol=0.01)
    # the same geometry whatever the decode size
    assert torch.equal(reduced["geometry"], full["geometry"])
    assert torch.equal(reduced["box"], full["box"])
    assert float((reduced["image"] - full["image"]).abs().mean()) < 0.1


@pytest.mark.slow
def test_loaders_with_two_workers_match_and_reproduce(table: SampleTable) -> None:
    val_single = next(iter(module(table, num_workers=0, batch_size=2).val_dataloader()))

    def train_epoch() -> list[dict[str, torch.Tensor]]:
        data = module(table, num_workers=2, batch_size=2)
        loader = data.train_dataloader()
        assert loader.persistent_workers and loader.num_workers == 2
        batches = list(loader)
        val = next(iter(data.val_dataloader()))
        assert torch.equal(val["image"], val_single["image"])
        assert val["index"].tolist() == val_single["index"].tolist()
        return batches

    first, second = train_epoch(), train_epoch()
    assert len(first) == 3
    for a, b in zip(first, second, strict=True):
        assert a["index"].tolist() == b["index"].tolist()
        assert torch.equal(a["image"], b["image"])


@pytest.mark.slow
def test_each_worker_draws_its_own_augmentations(table: SampleTable) -> None:
    from torch.utils.data import DataLoader

    from carid.training.datamodule import seed_worker_transform

    same_photo = [table.samples[2], table.samples[2]]
    dataset = CarDataset(
        same_photo, table.class_index(), build_train_transform(AugmentConfig(), SPEC, seed=0)
    )
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        dataset, batch_size=1, num_workers=2, worker_init_fn=seed_worker_transform, generator=generator
    )
    first, second = list(loader)  # worker 0 loads item 0, worker 1 item 1
    assert not torch.equal(first["image"], second["image"])


def test_swap_rb_exchanges_red_and_blue_as_images_load(tmp_path: Path) -> None:
    path = tmp_path / "bgr.png"
    Image.new("RGB", (64, 48), (230, 120, 10)).save(path)
    samples = [Sample(path=path, label="audi", width=64, height=48, split="train")]
    stored = CarDataset(samples, {"audi": 0}, build_eval_transform(SPEC))[0]["image"]
    swapped = CarDataset(samples, {"audi": 0}, build_eval_transform(SPEC), swap_rb=True)[0]["image"]
    pixels, swapped_pixels = (prep.denormalize(x.numpy(), SPEC).astype(int) for x in (stored, swapped))
    assert np.abs(swapped_pixels - pixels[..., ::-1]).max() <= 1 and pixels[24, 32, 0] > 200
    table = SampleTable(samples, ["audi"], tmp_path, "test")
    datamodule = CarDataModule(table, SPEC, augment=NO_COLOUR, train=TrainConfig(num_workers=0), swap_rb=True)
    assert torch.allclose(datamodule.dataset("train")[0]["image"], swapped)
    assert datamodule.predict_dataloader(samples).dataset.swap_rb
    # a feature cache made before swap_rb was set is not reused after
    from carid.training.features import samples_fingerprint

    plain = CarDataset(samples, {"audi": 0}, build_eval_transform(SPEC))
    assert samples_fingerprint(datamodule.dataset("train")) != samples_fingerprint(plain)
