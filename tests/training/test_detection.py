"""Detection training: the datamodule's batches (every box, letterboxed; negatives kept; bad boxes
dropped with a message), the LightningModule on empty frames, and `carid train` with `task: detect`
end to end on frames drawn here (red rectangles on noise, a quarter of them without any).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from carid.config import Config, ConfigError, DetectConfig, TrainConfig, from_dict
from carid.data.readers import read_dataset
from carid.data.samples import Sample, SampleTable
from carid.models.detector import build_detector, load_detector
from carid.preprocess import Geometry
from carid.training.detection import build_detection
from carid.training.detection_data import DetectionDataModule, usable_boxes
from carid.training.fit import train
from carid.training.plots import epoch_metrics

DETECT = {
    "backbone": "test_efficientnet",
    "pretrained": "none",
    "image_size": [128, 96],
    "fpn_channels": 32,
}


def draw_frames(root: Path, count: int = 24, size: tuple[int, int] = (160, 90), seed: int = 0) -> Path:
    """`images/frame_<n>.png` and `boxes.csv` (image_id,xmin,ymin,xmax,ymax): 1-2 rectangles per
    frame, none in every fourth frame (those frames have no row)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    width, height = size
    rows = []
    for index in range(count):
        pixels = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
        for _ in range(0 if index % 4 == 3 else int(rng.integers(1, 3))):
            box_w, box_h = int(rng.integers(24, 60)), int(rng.integers(18, 40))
            x, y = int(rng.integers(0, width - box_w)), int(rng.integers(0, height - box_h))
            pixels[y : y + box_h, x : x + box_w] = (230, 30, 30)
            rows.append([f"frame_{index * 20}.png", x, y, x + box_w, y + box_h])
        Image.fromarray(pixels).save(root / "images" / f"frame_{index * 20}.png")
    with (root / "boxes.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "xmin", "ymin", "xmax", "ymax"])
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return draw_frames(tmp_path_factory.mktemp("frames"))


def split_table(root: Path) -> SampleTable:
    """The drawn frames, every other one train, the rest val / test alternately."""
    table = read_dataset(root, "csv-boxes")
    splits = ["train", "val", "train", "test"]
    return table.with_samples(s.with_(split=splits[i % 4]) for i, s in enumerate(table.samples))


def datamodule(table: SampleTable, **detect: object) -> DetectionDataModule:
    config = DetectConfig(**{**DETECT, "image_size": (128, 96), **detect})  # type: ignore[arg-type]
    spec = build_detector(config).preprocess_spec
    return DetectionDataModule(table, spec, config, TrainConfig(batch_size=4, num_workers=0))


def test_eval_batches_hold_every_box_letterboxed_and_keep_empty_frames(frames: Path):
    table = split_table(frames)
    data = datamodule(table)
    seen_empty = 0
    for batch in data.val_dataloader():
        assert batch["image"].shape[1:] == (3, 96, 128)
        for boxes, index, row in zip(batch["boxes"], batch["index"], batch["geometry"], strict=True):
            sample = table.samples[int(index)]
            geometry = Geometry.from_array(row.numpy())
            assert geometry.scale_x == pytest.approx(128 / 160) and geometry.pad_top == pytest.approx(12)
            expected = geometry.boxes_to_network(sample.boxes) * [128, 96, 128, 96]
            np.testing.assert_allclose(boxes.numpy(), expected.reshape(-1, 4), atol=1e-4)
            seen_empty += int(len(boxes) == 0)
    assert seen_empty == sum(not table.samples[i].has_box for i in data.positions["val"]) > 0


def test_augmented_batches_keep_boxes_inside_and_large_enough(frames: Path):
    data = datamodule(split_table(frames), min_box_side=8.0, scale=(0.4, 1.0))
    counts = []
    for _ in range(3):
        for batch in data.train_dataloader():
            for boxes in batch["boxes"]:
                counts.append(len(boxes))
                if len(boxes):
                    assert float(boxes[:, :2].min()) >= 0 and float(boxes[:, 2].max()) <= 128
                    assert float(boxes[:, 3].max()) <= 96
                    assert float((boxes[:, 2:] - boxes[:, :2]).min()) >= 8.0
    assert 0 in counts and max(counts) >= 1


def test_bad_boxes_are_clipped_or_dropped_with_a_message(caplog: pytest.LogCaptureFixture):
    sample = Sample(
        path=Path("frame.png"),
        label=None,
        boxes=np.array(
            [
                [-10.0, 5.0, 40.0, 30.0],  # partly outside: clipped
                [200.0, 10.0, 260.0, 40.0],  # outside the 160x90 photo
                [50.0, 50.0, 50.2, 70.0],  # degenerate
                [np.nan, 0.0, 10.0, 10.0],  # not finite
                [30.0, 40.0, 20.0, 60.0],  # inverted
            ]
        ),
        source="boxes.csv line 7",
    )
    with caplog.at_level(logging.WARNING, logger="carid.training.detection_data"):
        kept = usable_boxes(sample, 160, 90)
    np.testing.assert_allclose(kept, [[0.0, 5.0, 40.0, 30.0]])
    assert "boxes.csv line 7: 4 of 5 box(es) left out" in caplog.text
    assert "[200.0, 10.0, 260.0, 40.0]" in caplog.text


def test_a_frame_whose_boxes_are_all_bad_trains_as_a_negative(frames: Path):
    table = split_table(frames)
    broken = [
        s.with_(boxes=np.array([[500.0, 500.0, 600.0, 600.0]])) if i == 0 else s
        for i, s in enumerate(table.samples)
    ]
    item = datamodule(table.with_samples(broken)).dataset("train", augment=True)[0]
    assert item["boxes"].shape == (0, 4)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_empty_frames_train_without_error(frames: Path):
    config = from_dict(Config, {"task": "detect", "detect": DETECT, "train": {"num_workers": 0}})
    module, _ = build_detection(config, split_table(frames), "run")
    empty = {"image": torch.randn(4, 3, 96, 128), "boxes": [torch.zeros(0, 4)] * 4, "index": torch.arange(4)}
    loss = module.training_step(empty, 0)
    assert bool(torch.isfinite(loss))
    loss.backward()


def test_carid_train_with_task_detect_writes_a_run(frames: Path, tmp_path: Path):
    tree = {
        "task": "detect",
        "data": {"path": str(frames), "format": "csv-boxes", "val_fraction": 0.25, "test_fraction": 0.25},
        "check": {"workers": 1, "min_side": 16},
        "detect": {**DETECT, "hflip": 0.0, "color_jitter": 0.0, "scale": [1.0, 1.0]},
        "train": {"epochs": 5, "batch_size": 4, "num_workers": 0, "lr": 0.005},  # channels_last: default on
        "run_dir": str(tmp_path / "runs"),
        "name": "cars",
    }
    result = train(from_dict(Config, tree), progress=False)
    run = result.run_dir
    for name in ("config.yaml", "split.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == "detect"
    assert result.metrics["monitor"] == "val/map50"
    assert {"test/map50", "test/map"} <= set(result.metrics)
    assert 0.0 <= result.metrics["test/map50"] <= 1.0
    records = epoch_metrics(run / "metrics.csv")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert any("val/map50" in r for r in records)
    detector = load_detector(result.best_checkpoint)
    assert not detector.training and detector.config.backbone == "test_efficientnet"
    scores, boxes = detector.forward_export(torch.zeros(1, 3, 96, 128))
    assert scores.shape == boxes.shape[:2]


def test_detect_refuses_the_classification_only_training_switches(frames: Path, tmp_path: Path):
    tree = {"task": "detect", "data": {"path": str(frames)}, "run_dir": str(tmp_path), "detect": DETECT}
    with pytest.raises(ConfigError, match="classification only"):
        train(from_dict(Config, {**tree, "train": {"freeze": "backbone"}}), progress=False)


def test_validation_boxes_are_clipped_to_the_photo_as_the_runtime_clips_them():
    from carid.preprocess import Geometry
    from carid.training.detection import _clip_to_photo

    # a 200x100 photo letterboxed into 128x96: scale 0.64, 64 px tall, 16 px border above and below
    geometry = Geometry(200, 100, 128, 96, 0.64, 0.64, 0.0, 16.0)
    detection = {
        "boxes": torch.tensor([[-5.0, 2.0, 60.0, 50.0], [10.0, 20.0, 30.0, 40.0]]),
        "scores": torch.ones(2),
    }
    clipped = _clip_to_photo(detection, torch.from_numpy(geometry.to_array()))
    assert clipped["boxes"].tolist() == [[0.0, 16.0, 60.0, 50.0], [10.0, 20.0, 30.0, 40.0]]
    assert clipped["scores"] is detection["scores"]
