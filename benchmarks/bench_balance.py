"""Class balancing on imbalanced data: plain training against `train.balance` (sampler, loss).

1. One seeded stratified split of car-models-5 by the library (`inspect_dataset`, the split `carid
   run` makes), saved under `--work` (default /tmp/carid-balance, never inside the repository).
2. The imbalanced copy: the same split CSV with 90 % of one class's *training* photos left out
   (`--rare`, default "jazz", the class most confused with "yaris"; `--keep` 0.1 of them, drawn
   with `--cut-seed`). Validation and test are untouched; the photos stay where they are.
3. Every run trains on that CSV (`data.split_csv`) with the same recipe and seed: the transfer
   recipe of configs/car-models-5-transfer.yaml with the backbone frozen and its features cached
   (`train.freeze: backbone`, `train.cache_features: true`: the runs share one cache and each takes
   seconds to a minute), once per `--variants` entry ("none", "sampler:inverse",
   "loss:effective:0.99", ...: mode, scheme, beta), for each of `--seeds` (train.seed; a run
   already in `--work` is reused, so more seeds can be added later).
4. The held-out test photos: their embeddings computed once with the frozen backbone (its fingerprint
   is checked against every checkpoint), each best checkpoint's heads give probabilities, and
   `carid.evaluation.metrics.evaluate_predictions` gives top-1, macro F1 and per-class recall.

Prints one table row per run and writes `--out` (default benchmarks/logs/balance/balance.json).
The command recorded in benchmarks/RESULTS.md:

    nice -n 5 .venv/bin/python benchmarks/bench_balance.py --seeds 42 1 2 \
        > benchmarks/logs/balance/bench.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carid import __version__
from carid.config import Config, load_config
from carid.data.inspect import inspect_dataset
from carid.data.split import load_split, save_split, splits_of
from carid.evaluation.metrics import evaluate_predictions
from carid.files import write_json
from carid.models.checkpoint import load_for_inference
from carid.runtime.calibration import apply_temperature
from carid.training.features import backbone_fingerprint, extract_features
from carid.training.fit import build_model, train
from carid.training.run_data import prepare_labels

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "car-models-5"
DEFAULT_WORK = Path("/tmp/carid-balance")
DEFAULT_OUT = ROOT / "benchmarks" / "logs" / "balance" / "balance.json"
RECIPE = ROOT / "configs" / "car-models-5-transfer.yaml"
FROZEN = ["train.freeze=backbone", "train.cache_features=true", "train.test_after_fit=false"]
DEFAULT_VARIANTS = ["none", "sampler:inverse", "loss:inverse", "loss:effective:0.999", "loss:effective:0.99"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="splits, runs, feature cache")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rare", default="jazz", help="the class whose training photos are cut")
    parser.add_argument("--keep", type=float, default=0.1, help="share of its training photos kept")
    parser.add_argument("--cut-seed", type=int, default=42, help="which training photos are left out")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="train.seed of the runs")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="mode[:scheme[:beta]]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    return parser.parse_args(argv)


def recipe(args: argparse.Namespace) -> Config:
    return load_config(RECIPE, [*FROZEN, *args.overrides])


def make_splits(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The imbalanced split CSV (made once) and the train counts per class before and after the cut."""
    full_csv = args.work / "data" / "split.csv"
    if not full_csv.exists():
        config = recipe(args)
        inspect_dataset(args.data, config.data, config.check, out_dir=full_csv.parent, progress=False)
    table = load_split(full_csv)
    if args.rare not in table.classes:
        raise SystemExit(f"--rare {args.rare!r} is not a class of {args.data}: {', '.join(table.classes)}")
    rare_train = [i for i, s in enumerate(table.samples) if s.split == "train" and s.label == args.rare]
    keep = max(1, round(len(rare_train) * args.keep))
    dropped = set(np.random.default_rng(args.cut_seed).permutation(rare_train)[keep:].tolist())
    cut = table.with_samples(s for i, s in enumerate(table.samples) if i not in dropped)
    cut_csv = args.work / "data" / f"split-{args.rare.replace(' ', '-')}-{args.keep:g}.csv"
    save_split(cut, splits_of(cut), cut_csv, seed=args.cut_seed)

    def counts(samples) -> dict[str, dict[str, int]]:
        return {
            split: dict(sorted(Counter(s.label for s in samples if s.split == split).items()))
            for split in ("train", "val", "test")
        }

    return cut_csv, {"full": counts(table.samples), "imbalanced": counts(cut.samples)}


def variant_config(args: argparse.Namespace, split_csv: Path, variant: str, seed: int) -> Config:
    mode, *rest = variant.split(":")
    scheme = rest[0] if rest else "inverse"
    beta = float(rest[1]) if len(rest) > 1 else 0.999
    config = recipe(args)
    data = replace(config.data, path=str(args.data), split_csv=str(split_csv))
    train_settings = replace(config.train, seed=seed, balance=mode, balance_scheme=scheme, balance_beta=beta)
    name = f"{variant.replace(':', '-')}-seed{seed}"
    return replace(config, data=data, train=train_settings, run_dir=str(args.work / "runs"), name=name)


def test_features(config: Config, work: Path) -> tuple[torch.Tensor, np.ndarray, str, tuple[str, ...]]:
    """(test embeddings [N, D], test class indices [N], backbone fingerprint, class names)."""
    table = load_split(config.data.split_csv)  # type: ignore[arg-type]
    prepared = prepare_labels(table, "class")
    module, datamodule = build_model(config, prepared, "test")
    fingerprint = backbone_fingerprint(module.network)
    path = work / "test-features.pt"
    if path.exists():
        stored = torch.load(path, weights_only=True)
    else:
        stored = extract_features(module.network, datamodule.feature_dataloader("test"))
        torch.save(stored, path)
    return stored["features"], stored["label"].numpy(), fingerprint, tuple(prepared.classes)


def scores(checkpoint: Path, features: torch.Tensor, labels: np.ndarray, fingerprint: str, rare: str):
    network, metadata = load_for_inference(checkpoint)
    assert backbone_fingerprint(network) == fingerprint, f"{checkpoint}: another backbone than the test pass"
    with torch.inference_mode():
        logits = network.forward_heads(features).logits.double().numpy()
    result = evaluate_predictions(apply_temperature(logits, 1.0), labels, metadata.class_names)
    recall = {m.name: m.recall for m in result.per_class}
    return {
        "rare_recall": recall[rare],
        "macro_f1": result.macro.f1,
        "macro_recall": result.macro.recall,
        "top1": result.accuracy,
        "recall": recall,
        "support": {m.name: m.support for m in result.per_class},
        "rare_precision": next(m.precision for m in result.per_class if m.name == rare),
    }


def train_once(config: Config) -> dict[str, Any]:
    """Train (or reuse the finished run of that name) and say what the run did."""
    run_dir = Path(config.run_dir) / str(config.name)
    started = time.perf_counter()
    if (run_dir / "summary.json").exists() and (run_dir / "checkpoints" / "best.ckpt").exists():
        summary = json.loads((run_dir / "summary.json").read_text())
        metrics = {"epochs_completed": summary["epochs_completed"], "best_score": summary["best_score"]}
        reused = True
    else:
        result = train(config, progress=False)
        assert result.best_checkpoint is not None, f"{result.run_dir}: no best checkpoint"
        run_dir, metrics, reused = result.run_dir, result.metrics, False
    run = {
        "run_dir": str(run_dir),
        "seconds": round(time.perf_counter() - started, 1),
        "reused": reused,
        "epochs": metrics.get("epochs_completed"),
        "best_val_acc": metrics.get("best_score"),
        "feature_cache_hit": metrics.get("feature_cache_hit"),
    }
    print(f"{config.name}: {run}", flush=True)
    return run


def mean_scores(tests: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each figure over the seeds' test scores."""
    return {
        "rare_recall": float(np.mean([t["rare_recall"] for t in tests])),
        "macro_f1": float(np.mean([t["macro_f1"] for t in tests])),
        "top1": float(np.mean([t["top1"] for t in tests])),
        "recall": {name: float(np.mean([t["recall"][name] for t in tests])) for name in tests[0]["recall"]},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    split_csv, counts = make_splits(args)
    print(f"imbalanced split: {split_csv}; train counts {counts['imbalanced']['train']}", flush=True)
    runs: dict[str, Any] = {}
    for seed in args.seeds:
        for variant in args.variants:
            runs[f"{variant} seed{seed}"] = train_once(variant_config(args, split_csv, variant, seed))
    first = variant_config(args, split_csv, "none", args.seeds[0])
    features, labels, fingerprint, classes = test_features(first, args.work)
    for run in runs.values():
        best = Path(run["run_dir"]) / "checkpoints" / "best.ckpt"
        run["test"] = scores(best, features, labels, fingerprint, args.rare)
    means = {
        variant: mean_scores([runs[f"{variant} seed{seed}"]["test"] for seed in args.seeds])
        for variant in args.variants
    }

    rare_test = int((labels == classes.index(args.rare)).sum())
    print(f"\ntest split ({len(labels)} photos, {args.rare}: {rare_test})")
    print(f"{'run':30s} {args.rare + ' recall':>14s} {'macro F1':>9s} {'top-1':>7s}  per-class recall")
    rows = [*runs.items(), *((f"{variant} mean", test) for variant, test in means.items())]
    for name, run in rows:
        test = run.get("test", run)
        per_class = ", ".join(f"{label} {value:.3f}" for label, value in test["recall"].items())
        figures = f"{test['rare_recall']:14.3f} {test['macro_f1']:9.3f} {test['top1']:7.3f}"
        print(f"{name:30s} {figures}  {per_class}")
    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "carid": __version__},
        "recipe": str(RECIPE.relative_to(ROOT)),
        "recipe_overrides": [*FROZEN, *args.overrides],
        "rare": args.rare,
        "keep": args.keep,
        "cut_seed": args.cut_seed,
        "seeds": args.seeds,
        "split_csv": str(split_csv),
        "counts": counts,
        "runs": runs,
        "means": means,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(f"\nwrote {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
