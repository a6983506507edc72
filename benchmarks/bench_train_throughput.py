"""Training throughput: full fine-tuning vs a frozen backbone trained from the feature cache.

Both modes run through `carid.training.fit.train` on the same images (a seeded subset of the
dataset with its own split), the same recipe and the same machine, one after the other, so the
ratio is measured in one run. A callback counts the images of every training batch and times each
training epoch (validation excluded); the figure is the median over the epochs after the first
(the first full-mode epoch warms up the data workers; the first cache-mode epoch is already fast).
The cache mode's one-off feature extraction is reported separately.

    .venv/bin/python benchmarks/bench_train_throughput.py --config configs/stanford-cars.yaml \
        --images 800 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
from rich.console import Console
from rich.table import Table

from carid.config import load_config, resolve_data_path
from carid.data.readers import read_dataset
from carid.data.split import make_split, save_split
from carid.training.fit import train


class EpochTimer(L.Callback):
    """Wall time and image count of each training epoch (validation not included)."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float]] = []
        self._start = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._images += int(batch["label"].shape[0])

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.epochs.append((self._images, time.perf_counter() - self._start))

    def images_per_second(self) -> float:
        rates = [images / seconds for images, seconds in self.epochs[1:] or self.epochs]
        return statistics.median(rates)


def subset_split(data: Path, images: int, seed: int, out: Path) -> Path:
    """A seeded, class-stratified subset of `images` samples with a 80/20 train/val split."""
    table = read_dataset(data).usable()
    order = sorted(table.samples, key=lambda sample: str(sample.path))
    import numpy as np

    rng = np.random.default_rng(seed)
    chosen = [order[i] for i in sorted(rng.choice(len(order), size=min(images, len(order)), replace=False))]
    subset = table.with_samples(sample.with_(split=None) for sample in chosen)
    splits = make_split(subset, val_fraction=0.2, test_fraction=0.0, seed=seed)
    return save_split(subset, splits, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/stanford-cars.yaml"))
    parser.add_argument("--images", type=int, default=800, help="images in the subset (80 %% train)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/logs/train-throughput.json"))
    args = parser.parse_args()
    console = Console()

    base = load_config(args.config)
    data = resolve_data_path(base.data.path)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="carid-throughput-") as tmp:
        split_csv = subset_split(data, args.images, args.seed, Path(tmp) / "split.csv")
        common = [
            f"data.split_csv={split_csv}",
            f"train.epochs={args.epochs}",
            f"run_dir={tmp}/runs",
            "train.test_after_fit=false",
            "train.early_stopping_patience=0",
        ]
        modes = {
            "full fine-tuning": ["train.freeze=none", "train.cache_features=false"],
            "frozen backbone, cached features": ["train.freeze=backbone", "train.cache_features=true"],
        }
        for mode, overrides in modes.items():
            timer = EpochTimer()
            started = time.perf_counter()
            result = train(
                base, [*common, *overrides, f"name={mode.split()[0]}"], progress=False, callbacks=[timer]
            )
            summary = json.loads((result.run_dir / "summary.json").read_text())
            cache = summary.get("feature_cache") or {}
            results[mode] = {
                "train_images_per_epoch": timer.epochs[-1][0],
                "epoch_seconds_median": statistics.median(seconds for _, seconds in timer.epochs),
                "images_per_second": timer.images_per_second(),
                "feature_extraction_seconds": float(cache.get("seconds", 0.0)),
                "run_seconds": time.perf_counter() - started,
            }
    full = results["full fine-tuning"]["images_per_second"]
    cached = results["frozen backbone, cached features"]["images_per_second"]

    table = Table("mode", "train images/epoch", "epoch s (median)", "images/s", "feature extraction s")
    for mode, row in results.items():
        table.add_row(
            mode,
            f"{row['train_images_per_epoch']:.0f}",
            f"{row['epoch_seconds_median']:.2f}",
            f"{row['images_per_second']:,.1f}",
            f"{row['feature_extraction_seconds']:.1f}",
        )
    console.print(table)
    console.print(f"ratio (cached heads / full fine-tuning): {cached / full:,.0f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"config": str(args.config), "results": results, "ratio": cached / full}, indent=2)
    )


if __name__ == "__main__":
    main()
