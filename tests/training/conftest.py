"""Fixtures of the training tests: a tiny synthetic boxed dataset and a tiny, fast config.

The dataset is drawn here: coloured rectangles (one colour per class) on random noise, each
rectangle's box written to a csv-boxes file (`image_id,xmin,ymin,xmax,ymax,label`), so the tests
know every label and box they train on.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from carid.config import Config, from_dict

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 230),
}


def draw_boxed_dataset(
    root: Path,
    per_class: int = 8,
    classes: tuple[str, ...] = ("red", "green", "blue"),
    size=(64, 48),
    seed: int = 0,
) -> Path:
    """Write `images/*.png` and `boxes.csv` under root; returns root."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    width, height = size
    rows = []
    for name in classes:
        for number in range(per_class):
            pixels = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
            box_w = int(rng.integers(width // 3, width * 2 // 3))
            box_h = int(rng.integers(height // 3, height * 2 // 3))
            x1 = int(rng.integers(0, width - box_w))
            y1 = int(rng.integers(0, height - box_h))
            pixels[y1 : y1 + box_h, x1 : x1 + box_w] = CLASS_COLOURS[name]
            file = f"{name}_{number:02d}.png"
            Image.fromarray(pixels, "RGB").save(images / file)
            rows.append([file, x1, y1, x1 + box_w, y1 + box_h, name])
    with (root / "boxes.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "xmin", "ymin", "xmax", "ymax", "label"])
        writer.writerows(rows)
    return root


def tiny_config_tree(data_path: Path, run_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config dict for a from-scratch VGG at 32 px, one epoch, no workers (merged with `sections`)."""
    tree: dict[str, Any] = {
        "data": {"path": str(data_path), "format": "csv-boxes", "val_fraction": 0.25, "test_fraction": 0.125},
        "check": {"workers": 1, "min_side": 16, "min_per_class": 2},
        "model": {
            "backbone": "carid_vgg",
            "pretrained": "none",
            "backbone_args": {"widths": [8, 16], "blocks_per_stage": 1, "batch_norm": True},
            "image_size": 32,
            "box_hidden": 16,
            "dropout": 0.0,
        },
        "augment": {"color_jitter": 0.0, "blur": 0.0, "grayscale": 0.0},
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "num_workers": 0,
            "channels_last": False,
            "lr": 0.003,
            "warmup_epochs": 0.0,
        },
        "run_dir": str(run_dir),
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            tree.setdefault(section, {}).update(values)
        else:
            tree[section] = values
    return tree


@pytest.fixture(scope="session")
def boxed_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images (3 classes x 8), each with one box: read-only, shared by the tests."""
    return draw_boxed_dataset(tmp_path_factory.mktemp("boxed"))


@pytest.fixture
def tiny_config(boxed_dataset: Path, tmp_path: Path) -> Callable[..., Config]:
    """`tiny_config(train={"epochs": 2}, name="x")` -> Config writing runs under tmp_path/runs."""

    def make(**sections: Any) -> Config:
        return from_dict(Config, tiny_config_tree(boxed_dataset, tmp_path / "runs", **sections))

    return make
