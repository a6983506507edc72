"""Does the colour-order check tell swapped red and blue from the real order? Measured on real data.

The acceptance figure: 200 Stanford crops (seeded sample, as `carid data check` draws it) as stored,
and the same 200 written with red and blue swapped to a temporary folder under /tmp (never into the
repository). Also: the crops against the devkit's full photos cut at their boxes, and every other
shared dataset as stored and swapped. `--imagenet` adds the paired ImageNet comparison the check
does not use (car probability, max probability and entropy of EfficientNet-Lite0's ImageNet head,
as stored against swapped), to show why: it needs torch and takes minutes on a CPU.

    .venv/bin/python benchmarks/bench_colour_order.py [--sample 200] [--imagenet]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from carid.config import shared_datasets_dir
from carid.data.colour_order import (
    check_colour_order,
    compare_with_references,
    reference_pairs,
    sample_paths,
)
from carid.data.readers import read_dataset
from carid.images import load_rgb, swap_red_blue

OTHER_DATASETS = ("car-models-5", "car-frames", "oxford-pets-sample")


def imagenet_pairs(paths: list[Path]) -> dict[str, float]:
    """Paired ImageNet-head figures, as stored against red/blue swapped."""
    import timm
    import torch

    from carid.models.imagenet import car_probability
    from carid.models.nocar import IMAGENET_BACKBONE, IMAGENET_INPUT
    from carid.models.weights import load_offline_weights
    from carid.preprocess import PreprocessSpec, preprocess

    model = timm.create_model(IMAGENET_BACKBONE, pretrained=False, num_classes=1000)
    load_offline_weights(model, IMAGENET_BACKBONE)
    config = timm.data.resolve_data_config({}, model=model)
    spec = PreprocessSpec(
        image_size=(IMAGENET_INPUT, IMAGENET_INPUT),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=str(config["interpolation"]),
    )
    model.eval()

    def probabilities(images: list) -> np.ndarray:
        batch = torch.from_numpy(np.stack([preprocess(image, spec)[0] for image in images]))
        with torch.inference_mode():
            return torch.softmax(model(batch), dim=1).numpy()

    stored, swapped = [], []
    for start in range(0, len(paths), 25):
        images = [load_rgb(path) for path in paths[start : start + 25]]
        stored.append(probabilities(images))
        swapped.append(probabilities([swap_red_blue(image) for image in images]))
    a, b = np.concatenate(stored), np.concatenate(swapped)
    car_a, car_b = car_probability(a), car_probability(b)
    entropy_a, entropy_b = (-(p * np.log(p + 1e-12)).sum(axis=1) for p in (a, b))
    return {
        "car_probability_stored": float(car_a.mean()),
        "car_probability_swapped": float(car_b.mean()),
        "share_car_probability_higher_as_stored": float(np.mean(car_a > car_b)),
        "mean_log_ratio_stored_over_swapped": float(np.mean(np.log(car_a + 1e-6) - np.log(car_b + 1e-6))),
        "entropy_stored": float(entropy_a.mean()),
        "entropy_swapped": float(entropy_b.mean()),
        "share_entropy_lower_as_stored": float(np.mean(entropy_a < entropy_b)),
        "max_probability_stored": float(a.max(axis=1).mean()),
        "max_probability_swapped": float(b.max(axis=1).mean()),
        "share_max_probability_higher_as_stored": float(np.mean(a.max(axis=1) > b.max(axis=1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--imagenet", action="store_true", help="add the ImageNet-head comparison (torch)")
    args = parser.parse_args()
    root = shared_datasets_dir()
    if root is None:
        raise SystemExit("../shared/datasets is not present beside this checkout")
    results: dict[str, object] = {}
    crops = sorted((root / "stanford-cars-crops" / "images").glob("*.jpg"))
    sample = sample_paths(crops, args.sample, seed=0)
    with tempfile.TemporaryDirectory(prefix="carid-colour-", dir="/tmp") as folder:
        swapped_paths = []
        for path in sample:
            copy = Path(folder) / path.name
            swap_red_blue(load_rgb(path)).save(copy, quality=95)
            swapped_paths.append(copy)
        for name, paths in (("stanford_crops_as_stored", sample), ("stanford_crops_swapped", swapped_paths)):
            start = time.perf_counter()
            verdict = check_colour_order(paths, sample=0)
            results[name] = {**verdict.to_dict(), "seconds": round(time.perf_counter() - start, 2)}
        devkit = read_dataset(root / "stanford-cars-devkit")
        crop_table = read_dataset(root / "stanford-cars-crops")
        pairs = reference_pairs(crop_table.samples, devkit.samples)
        results["devkit_reference_as_stored"] = compare_with_references(pairs).to_dict()
        by_name = {path.name: path for path in swapped_paths}
        swapped_pairs = []
        for crop, photo, box in pairs:  # devkit crops are rarely in the sample: swap them here
            copy = by_name.get(crop.name) or Path(folder) / f"ref-{crop.name}"
            if not copy.exists():
                swap_red_blue(load_rgb(crop)).save(copy, quality=95)
            swapped_pairs.append((copy, photo, box))
        results["devkit_reference_swapped"] = compare_with_references(swapped_pairs).to_dict()
    for name in OTHER_DATASETS:
        table = read_dataset(root / name)
        paths = [sample.path for sample in table.usable().samples]
        for swap in (False, True):
            verdict = check_colour_order(paths, sample=args.sample, swap=swap)
            results[f"{name}_{'swapped' if swap else 'as_stored'}"] = verdict.to_dict()
    if args.imagenet:
        start = time.perf_counter()
        results["imagenet_stanford_crops"] = {
            **imagenet_pairs(sample),
            "seconds": round(time.perf_counter() - start, 1),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
