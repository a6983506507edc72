"""Body type: a body-type-only model against the roll-up of the 196-class model (issue 6).

1. One seeded stratified split of the Stanford crops by the library (`inspect_dataset`, the split
   `carid run` makes), saved as `--work/data/split.csv`; both runs train on it (`data.split_csv`).
2. (a) the fine-grained model: `train()` with the quickstart recipe with its backbone frozen
   (EfficientNet-Lite0 with its offline ImageNet weights, heads trained from cached features for 30
   epochs, 192 px: `FROZEN_HEAD`).
   (b) the body-type model: the same recipe, budget and split with `data.label_level: body_type`.
   The library keys its feature cache on the labels too, so (b) cannot reuse (a)'s cache by itself;
   the benchmark writes (a)'s cached embeddings, relabelled with (b)'s body-type labels, under the
   key `carid.training.features.cache_key` gives (b), and checks that (b)'s run reports a cache hit.
3. The held-out test photos: their embeddings computed once (`extract_features`, the frozen
   backbone both runs share: its fingerprint is checked against both checkpoints), then each best
   checkpoint's heads give probabilities. Body-type accuracy, per-body-type recall, NLL and ECE
   come from `carid.evaluation.metrics.evaluate_predictions` on (a) the class probabilities summed
   per body type (`carid.taxonomy.roll_up`) and (b) the body-type model's own probabilities; make
   and year accuracy of the roll-up from the same function at class level.

Writes `--out` (default benchmarks/logs/bodytype/bodytype.json). The command recorded in
benchmarks/RESULTS.md:

    nohup nice -n 5 .venv/bin/python benchmarks/bench_bodytype.py > benchmarks/logs/bodytype/bench.log 2>&1 &
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carid import __version__
from carid.config import Config, load_config
from carid.data.inspect import inspect_dataset
from carid.data.split import load_split
from carid.evaluation.metric_records import EvaluationResult
from carid.evaluation.metrics import evaluate_predictions
from carid.files import write_json
from carid.models.checkpoint import load_for_inference
from carid.runtime.calibration import apply_temperature
from carid.taxonomy import Taxonomy, roll_up
from carid.training.features import (
    CACHE_VERSION,
    backbone_fingerprint,
    build_feature_cache,
    cache_key,
    extract_features,
)
from carid.training.fit import build_model, train
from carid.training.run_data import prepare_labels

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "stanford-cars-crops"
DEFAULT_WORK = ROOT / "runs" / "bench-bodytype"
DEFAULT_OUT = ROOT / "benchmarks" / "logs" / "bodytype" / "bodytype.json"
RECIPE = ROOT / "src" / "carid" / "recipes" / "quickstart.yaml"
# The quickstart as it was when these figures were first measured (a frozen backbone and a linear
# head); the packaged quickstart now fine-tunes its last blocks from a stage cache. --set goes after.
FROZEN_HEAD = [
    "train.epochs=30",
    "train.label_smoothing=0.0",
    "train.freeze=backbone",
    "train.backbone_lr_scale=0.1",
    "train.cache_map_hflip=0.0",
]
CACHED_SPLITS = ("train", "val")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="runs, split and feature cache")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=42, help="train.seed of both runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    return parser.parse_args(argv)


def recipe(args: argparse.Namespace, split_csv: Path, level: str) -> Config:
    config = load_config(RECIPE, [*FROZEN_HEAD, *args.overrides])
    data = replace(config.data, path=str(args.data), split_csv=str(split_csv), label_level=level)
    train_settings = replace(config.train, seed=args.seed, test_after_fit=False)
    return replace(
        config, data=data, train=train_settings, run_dir=str(args.work), name=f"{level}-seed{args.seed}"
    )


def make_split(args: argparse.Namespace) -> tuple[Path, float]:
    split_csv = args.work / "data" / "split.csv"
    started = time.perf_counter()
    if not split_csv.exists():
        config = load_config(RECIPE, [*FROZEN_HEAD, *args.overrides])
        inspect_dataset(args.data, config.data, config.check, out_dir=split_csv.parent, progress=False)
    return split_csv, time.perf_counter() - started


def run_dir_of(config: Config) -> Path:
    return Path(config.run_dir).expanduser().resolve() / str(config.name)


def train_once(config: Config) -> tuple[Path, float, bool | None]:
    """(best checkpoint, seconds, feature-cache hit); a run already trained is reused."""
    best = run_dir_of(config) / "checkpoints" / "best.ckpt"
    if best.exists():
        return best, 0.0, None
    started = time.perf_counter()
    result = train(config, progress=False)
    assert result.best_checkpoint is not None, f"{result.run_dir}: no best checkpoint"
    hit = bool(result.metrics.get("feature_cache_hit"))
    return result.best_checkpoint, time.perf_counter() - started, hit


def share_cache(class_config: Config, body_config: Config) -> dict[str, Any]:
    """Write the class run's cached embeddings, relabelled, under the body-type run's cache key."""
    cache_dir = Path(class_config.run_dir).expanduser().resolve() / "feature-cache"
    table = load_split(class_config.data.split_csv)  # type: ignore[arg-type]
    class_module, class_data = build_model(class_config, prepare_labels(table, "class"), "class")
    body_module, body_data = build_model(body_config, prepare_labels(table, "body_type"), "body")
    cached, info = build_feature_cache(class_module.network, class_data, cache_dir, progress=False)
    assert info.hit, "the class run's feature cache should exist by now"
    relabelled = {}
    for split in CACHED_SPLITS:
        dataset = body_data.dataset(split)
        tensors = dict(cached[split])
        assert tensors["index"].tolist() == list(dataset.indices), f"{split}: rows are not in table order"
        tensors["label"] = torch.tensor(dataset.labels, dtype=tensors["label"].dtype)
        relabelled[split] = tensors
    key = cache_key(body_module.network, body_data, CACHED_SPLITS)
    path = cache_dir / f"{key[:24]}.pt"
    torch.save({"version": CACHE_VERSION, "key": key, "splits": relabelled}, path)
    return {"class_cache": info.to_dict(), "body_cache_path": str(path)}


def test_features(config: Config, work: Path) -> tuple[torch.Tensor, np.ndarray, str, float]:
    """(test embeddings [N, D], test class indices [N], backbone fingerprint, seconds), cached in work."""
    table = load_split(config.data.split_csv)  # type: ignore[arg-type]
    module, datamodule = build_model(config, prepare_labels(table, "class"), "test")
    fingerprint = backbone_fingerprint(module.network)
    path = work / "test-features.pt"
    started = time.perf_counter()
    if path.exists():
        stored = torch.load(path, weights_only=True)
    else:
        stored = extract_features(module.network, datamodule.feature_dataloader("test"))
        torch.save(stored, path)
    return stored["features"], stored["label"].numpy(), fingerprint, time.perf_counter() - started


def probabilities(checkpoint: Path, features: torch.Tensor, fingerprint: str) -> tuple[np.ndarray, Any]:
    network, metadata = load_for_inference(checkpoint)
    assert backbone_fingerprint(network) == fingerprint, f"{checkpoint}: another backbone than the test pass"
    with torch.inference_mode():
        logits = network.forward_heads(features).logits.double().numpy()
    return apply_temperature(logits, 1.0), metadata


def body_scores(result: EvaluationResult) -> dict[str, Any]:
    return {
        "accuracy": result.accuracy,
        "macro_recall": result.macro.recall,
        "nll": result.calibration.nll,
        "ece": result.calibration.ece,
        "recall": {m.name: m.recall for m in result.per_class},
        "support": {m.name: m.support for m in result.per_class},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    split_csv, split_seconds = make_split(args)
    class_config = recipe(args, split_csv, "class")
    body_config = recipe(args, split_csv, "body_type")
    class_ckpt, class_seconds, class_hit = train_once(class_config)
    print(f"class model: {class_ckpt} ({class_seconds:.0f} s)", flush=True)
    shared = share_cache(class_config, body_config)
    body_ckpt, body_seconds, body_hit = train_once(body_config)
    print(f"body-type model: {body_ckpt} ({body_seconds:.0f} s, cache hit {body_hit})", flush=True)
    features, labels, fingerprint, test_seconds = test_features(class_config, args.work)

    class_probs, class_meta = probabilities(class_ckpt, features, fingerprint)
    body_probs, body_meta = probabilities(body_ckpt, features, fingerprint)
    taxonomy = Taxonomy.from_dict(class_meta.taxonomy)
    fine = evaluate_predictions(class_probs, labels, class_meta.class_names, taxonomy=taxonomy)
    body_names = list(body_meta.class_names)
    rolled_all = roll_up(class_probs, taxonomy, "body_type")
    rolled = rolled_all[:, [taxonomy.values("body_type").index(name) for name in body_names]]
    assert np.allclose(rolled.sum(axis=1), 1.0), "every body type of the classes is a body-model class"
    truth = np.array([body_names.index(value) for value in np.array(taxonomy.labels("body_type"))[labels]])
    via_roll_up = evaluate_predictions(rolled, truth, body_names)
    direct = evaluate_predictions(body_probs, truth, body_names)
    roll_right = rolled.argmax(axis=1) == truth
    direct_right = body_probs.argmax(axis=1) == truth
    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "carid": __version__},
        "seed": args.seed,
        "split_csv": str(split_csv),
        "num_test": len(labels),
        "runs": {"class": str(class_ckpt), "body_type": str(body_ckpt)},
        "feature_cache": {**shared, "class_run_hit": class_hit, "body_run_hit": body_hit},
        "seconds": {
            "split": round(split_seconds, 1),
            "train_class": round(class_seconds, 1),
            "train_body_type": round(body_seconds, 1),
            "test_features": round(test_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "fine_grained": {
            "top1": fine.accuracy,
            "levels": {level.level: level.accuracy for level in fine.taxonomy_levels},
        },
        "body_type": {
            "roll_up": body_scores(via_roll_up),
            "direct": body_scores(direct),
            "roll_up_right_direct_wrong": int((roll_right & ~direct_right).sum()),
            "direct_right_roll_up_wrong": int((direct_right & ~roll_right).sum()),
        },
    }
    write_json(args.out, report)
    print(f"wrote {args.out}: body type roll-up {via_roll_up.accuracy:.4f}, direct {direct.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
