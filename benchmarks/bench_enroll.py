"""Enrolment of new classes without retraining (`carid.enroll`), measured on Stanford Cars crops.

1. Hold out a seeded set of classes (`--holdout`, default 20 of 196) and train on the other ones
   with the library's own `train()` (the quickstart recipe with its backbone frozen: EfficientNet-Lite0
   with its offline ImageNet weights, a linear class head trained from cached features for 30
   epochs, 192 px: `FROZEN_HEAD`), then
   `export_bundle` it. The dataset given to `train()` is a labels.csv of the known classes only,
   beside a link to the crops' images folder (under the run folder).
2. Run the exported bundle on ONNX Runtime once over every photo of the held-out classes and the
   known classes' val and test photos, keeping both its outputs (trained logits [N, C] and
   embeddings [N, D]); cached in `--work/features.npz`, so re-scoring costs seconds.
3. For each held-out class and each of `--draws` seeded draws: 10 photos are drawn as the
   enrolment pool (1, 5 and 10 photos are its first 1, 5, 10), the rest are the queries. The
   classes are enrolled into the bundle's embedding space (fitted by `carid export` on the known
   run's training photos, calibrated on its validation photos) and scored exactly as `Predictor`
   does (`carid.artifacts.enrolment.Enrolment.scores` appended to the trained logits), on
     - "new among new": queries of the held-out classes, the answer among the new classes only;
     - "new among all": the same queries, the answer among all 196 classes (trained + enrolled);
     - "known": the known classes' test photos, top-1 over all 196 after enrolment, against
       their accuracy with the trained classes alone (before enrolment).
   As a check of the design, the same with a centred cosine (no whitening), calibrated the same way.
4. One real enrolment through the files: `carid.enroll.store.enroll` of every held-out class
   (5 photos of draw 0) into a copy of the bundle, then `Predictor.predict` over their queries,
   which must give the same accuracy as step 3 did from the cached arrays.

Writes a JSON of the figures (default benchmarks/logs/enroll/enroll.json). The command recorded in
benchmarks/RESULTS.md:

    nohup nice -n 5 .venv/bin/python benchmarks/bench_enroll.py > benchmarks/logs/enroll/bench.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

# the frozen-head recipe these figures were measured with (run as a script, benchmarks/ is on the path)
from bench_bodytype import FROZEN_HEAD

from carid import __version__
from carid.artifacts.bundle import EMBEDDING, LOGITS, Bundle
from carid.artifacts.enrolment import require_enrolment
from carid.config import load_config
from carid.data.split import load_split
from carid.embedding import EmbeddingSpace, ScoreCalibration, fit_calibration, prototype_sum, prototypes
from carid.enroll.store import enroll
from carid.files import write_json
from carid.runtime.inputs import prepare_image
from carid.runtime.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "stanford-cars-crops"
DEFAULT_WORK = ROOT / "runs" / "bench-enroll"
DEFAULT_LOG = ROOT / "benchmarks" / "logs" / "enroll" / "enroll.json"
RECIPE = ROOT / "src" / "carid" / "recipes" / "quickstart.yaml"
SHOTS = (1, 5, 10)
POOL = max(SHOTS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Stanford crops folder (labels.csv)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="run, bundle and feature cache")
    parser.add_argument("--holdout", type=int, default=20, help="classes held out of training")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out classes and the draws")
    parser.add_argument("--draws", type=int, default=5, help="seeded enrolment draws per shot count")
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_LOG, help="JSON of the figures")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", flush=True)


# --- 1. train on the known classes and export -------------------------------------------------------


def read_labels(data: Path) -> list[tuple[str, int, str]]:
    """(fname, class_id, class_name) rows of the crops' labels.csv."""
    with (data / "labels.csv").open(newline="", encoding="utf-8") as stream:
        return [(row["fname"], int(row["class_id"]), row["class_name"]) for row in csv.DictReader(stream)]


def choose_holdout(rows: list[tuple[str, int, str]], count: int, seed: int) -> list[str]:
    names = sorted({name for _, _, name in rows})
    chosen = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
    return sorted(names[i] for i in chosen)


def known_dataset(data: Path, rows: list[tuple[str, int, str]], holdout: set[str], folder: Path) -> Path:
    """A crops dataset of the known classes only: labels.csv and a link to the images folder."""
    folder.mkdir(parents=True, exist_ok=True)
    images = folder / "images"
    if not images.exists():
        images.symlink_to((data / "images").resolve(), target_is_directory=True)
    temporary = folder / "labels.csv.tmp"
    with temporary.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["fname", "class_id", "class_name"])
        writer.writerows(row for row in rows if row[2] not in holdout)
    temporary.replace(folder / "labels.csv")
    return folder


def train_and_export(
    dataset: Path, work: Path, image_size: int, overrides: list[str]
) -> tuple[Path, Path, dict[str, Any]]:
    """(run folder, bundle folder, training metrics); reuses a finished run and export."""
    from carid.export import export_bundle
    from carid.training.fit import train

    run_dir = work / "known"
    bundle = run_dir / "export"
    if (bundle / "model.json").is_file():
        say(f"reusing {bundle}")
        if json.loads((bundle / "model.json").read_text(encoding="utf-8")).get("enrolment") is None:
            say("re-exporting it: it has no enrolment space yet")
            export_bundle(run_dir, out=bundle, parity_images=8, overwrite=True, say=say)
        return run_dir, bundle, json.loads((work / "train.json").read_text(encoding="utf-8"))
    config = load_config(
        RECIPE,
        [
            f"data.path={dataset}",
            f"model.image_size={image_size}",
            f"run_dir={work}",
            "name=known",
            *FROZEN_HEAD,
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = train(config, progress=False)
    metrics = {**result.metrics, "train_seconds": round(time.perf_counter() - started, 1)}
    say(f"trained: {metrics}")
    export_bundle(result.run_dir, out=bundle, parity_images=8, overwrite=True, say=say)
    write_json(work / "train.json", metrics)
    return result.run_dir, bundle, metrics


# --- 2. one pass of the bundle over the photos we score -------------------------------------------------


def run_outputs(
    predictor: Predictor, paths: list[Path], batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Trained logits float64 [N, C] and embeddings float32 [N, D] of `paths` (all must be readable)."""
    logits, embeddings = [], []
    for start in range(0, len(paths), batch_size):
        prepared = [
            prepare_image(path, predictor.spec, str(path)) for path in paths[start : start + batch_size]
        ]
        failed = [item.error for item in prepared if item.error is not None]
        if failed:
            raise SystemExit(f"cannot read {failed[0]}")
        outputs = predictor.backend.run(np.stack([item.array for item in prepared]))  # type: ignore[misc]
        logits.append(np.asarray(outputs[LOGITS], dtype=np.float64))
        embeddings.append(np.asarray(outputs[EMBEDDING], dtype=np.float32))
        if (start // batch_size) % 10 == 0:
            say(f"  {min(start + batch_size, len(paths))}/{len(paths)} photos")
    return np.concatenate(logits), np.concatenate(embeddings)


def features(
    args: argparse.Namespace,
    rows: list[tuple[str, int, str]],
    holdout: list[str],
    run_dir: Path,
    bundle: Path,
) -> dict[str, np.ndarray]:
    """Cached arrays: paths, labels (class names), group ("new", "val", "test"), logits, embeddings."""
    cache = args.work / "features.npz"
    if cache.is_file():
        say(f"reusing {cache}")
        with np.load(cache, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    table = load_split(run_dir / "split.csv")
    root = Path(table.root) if table.root is not None else Path()
    paths, labels, groups = [], [], []
    for sample in table.samples:
        if sample.split in ("val", "test"):
            paths.append(sample.path if sample.path.is_absolute() else root / sample.path)
            labels.append(sample.label)
            groups.append(sample.split)
    held = set(holdout)
    for fname, _, name in rows:
        if name in held:
            paths.append(args.data / "images" / fname)
            labels.append(name)
            groups.append("new")
    predictor = Predictor.load(bundle, threads=args.threads)
    say(f"running the bundle over {len(paths)} photos")
    started = time.perf_counter()
    logits, embeddings = run_outputs(predictor, paths)
    seconds = time.perf_counter() - started
    say(f"  {len(paths) / seconds:.1f} photos/s")
    arrays = {
        "paths": np.array([str(path) for path in paths]),
        "labels": np.array(labels),
        "groups": np.array(groups),
        "logits": logits,
        "embeddings": embeddings,
        "class_names": np.array(predictor.class_names),
    }
    temporary = cache.with_name("features.tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, cache)
    return arrays


# --- 3. scoring ----------------------------------------------------------------------------------------


def draws(arrays: dict[str, np.ndarray], holdout: list[str], count: int) -> list[dict[str, Any]]:
    """Per draw: for each held-out class its pool (10 row indices, shuffled) and its query rows."""
    out = []
    new = arrays["groups"] == "new"
    for draw in range(count):
        rng = np.random.default_rng(1000 + draw)
        pools, queries = {}, {}
        for name in holdout:
            rows = rng.permutation(np.flatnonzero(new & (arrays["labels"] == name)))
            pools[name], queries[name] = rows[:POOL], rows[POOL:]
        out.append({"pools": pools, "queries": queries})
    return out


def score(
    arrays: dict[str, np.ndarray],
    holdout: list[str],
    space: EmbeddingSpace,
    calibration: ScoreCalibration,
    plan: list[dict[str, Any]],
) -> dict[str, Any]:
    """Accuracies per shot count (mean and range over the draws)."""
    names = list(arrays["class_names"])
    index = {name: i for i, name in enumerate(names)}
    logits, embeddings, labels = arrays["logits"], arrays["embeddings"], arrays["labels"]
    test = np.flatnonzero(arrays["groups"] == "test")
    test_truth = np.array([index[x] for x in labels[test]])
    known_before = float(np.mean(logits[test].argmax(axis=1) == test_truth))
    test_features = space.transform(embeddings[test])
    figures: dict[str, Any] = {"known_before": round(known_before, 4)}
    for shots in SHOTS:
        rows: dict[str, list[float]] = {
            "new_among_new": [],
            "new_among_all": [],
            "known_after": [],
            "known_to_new": [],
        }
        for draw in plan:
            sums = np.stack(
                [prototype_sum(space.transform(embeddings[draw["pools"][n][:shots]])) for n in holdout]
            )
            protos = prototypes(sums, np.full(len(holdout), shots))
            query = np.concatenate([draw["queries"][n] for n in holdout])
            truth = np.concatenate([np.full(len(draw["queries"][n]), k) for k, n in enumerate(holdout)])
            cosines = space.transform(embeddings[query]) @ protos.T
            combined = np.concatenate([logits[query], calibration.logits(cosines)], axis=1)
            rows["new_among_new"].append(float(np.mean(cosines.argmax(axis=1) == truth)))
            rows["new_among_all"].append(float(np.mean(combined.argmax(axis=1) == truth + len(names))))
            known = np.concatenate([logits[test], calibration.logits(test_features @ protos.T)], axis=1)
            answer = known.argmax(axis=1)
            rows["known_after"].append(float(np.mean(answer == test_truth)))
            rows["known_to_new"].append(float(np.mean(answer >= len(names))))
        figures[f"{shots}_shot"] = {
            key: {"mean": round(float(np.mean(v)), 4), "min": round(min(v), 4), "max": round(max(v), 4)}
            for key, v in rows.items()
        }
    return figures


# --- 4. the real thing through the files --------------------------------------------------------------


def end_to_end(
    arrays: dict[str, np.ndarray], holdout: list[str], bundle: Path, work: Path, plan: list[dict[str, Any]]
) -> dict[str, Any]:
    """enroll() 5 photos of each held-out class (draw 0) into a copy, then predict their queries."""
    copy = work / "bundle-enrolled"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    paths = arrays["paths"]
    started = time.perf_counter()
    for name in holdout:
        enroll(copy, name, [Path(p) for p in paths[plan[0]["pools"][name][:5]]])
    enrol_seconds = time.perf_counter() - started
    predictor = Predictor.load(copy, threads=2)
    query = np.concatenate([plan[0]["queries"][n] for n in holdout])
    started = time.perf_counter()
    predictions = predictor.predict([Path(p) for p in paths[query]], batch_size=32)
    seconds = time.perf_counter() - started
    right = [
        p.top1 is not None and p.top1.label == label
        for p, label in zip(predictions, arrays["labels"][query], strict=True)
    ]
    return {
        "classes_enrolled": len(holdout),
        "photos_per_class": 5,
        "enrol_seconds_total": round(enrol_seconds, 2),
        "queries": len(query),
        "new_among_all_top1": round(float(np.mean(right)), 4),
        "predict_images_per_s": round(len(query) / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = read_labels(args.data)
    holdout = choose_holdout(rows, args.holdout, args.seed)
    say(f"held out {len(holdout)} classes: {holdout}")
    dataset = known_dataset(args.data, rows, set(holdout), args.work / "known-crops")
    run_dir, bundle, train_metrics = train_and_export(dataset, args.work, args.image_size, args.overrides)
    arrays = features(args, rows, holdout, run_dir, bundle)
    say(f"features: {arrays['embeddings'].shape}, {time.perf_counter() - started:.0f} s so far")
    enrolment = require_enrolment(Bundle.load(bundle))
    plan = draws(arrays, holdout, args.draws)
    result: dict[str, Any] = {
        "whitened": score(arrays, holdout, enrolment.space, enrolment.calibration, plan),
        "calibration": Bundle.load(bundle).metadata.enrolment["calibration"],  # type: ignore[index]
        "space": Bundle.load(bundle).metadata.enrolment["space"],  # type: ignore[index]
    }
    # The design check: centred cosine (no whitening), calibrated the same way on the val photos.
    names = list(arrays["class_names"])
    index = {name: i for i, name in enumerate(names)}
    val = np.flatnonzero(arrays["groups"] == "val")
    plain = EmbeddingSpace(enrolment.space.mean, np.eye(enrolment.space.dim, dtype=np.float32))
    plain_calibration = fit_calibration(
        arrays["logits"][val],
        plain.transform(arrays["embeddings"][val]),
        np.array([index[x] for x in arrays["labels"][val]]),
    )
    result["centred_cosine"] = score(arrays, holdout, plain, plain_calibration, plan)
    say(f"whitened: {json.dumps(result['whitened'])}")
    say(f"centred cosine: {json.dumps(result['centred_cosine'])}")
    result["end_to_end"] = end_to_end(arrays, holdout, bundle, args.work, plan)
    say(f"end to end: {result['end_to_end']}")
    result.update(
        {
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "holdout": holdout,
            "draws": args.draws,
            "known_classes": len(names),
            "train": train_metrics,
            "carid": __version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average_after": list(os.getloadavg()),
            "finished": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    write_json(args.out, result)
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
