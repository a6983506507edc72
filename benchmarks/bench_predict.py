"""Prediction speed of one bundle, measured in one run: ONNX Runtime vs PyTorch eager, and where the
time of an end-to-end prediction goes.

On the same N real photos (read into memory once, so disk reads are not timed), the same model and
the same thread count:

* bare model throughput: `backend.run` on ready float32 batches (no decoding, no preprocessing),
  ONNX Runtime and the bundle's source checkpoint on PyTorch eager (`torch.inference_mode`);
* single-image latency: `Predictor.predict` of one encoded photo at a time (decode + preprocess +
  model + post-processing), median over the photos;
* end-to-end throughput: `Predictor.predict` over all photos in batches (encoded bytes in,
  `Prediction`s out), and its ratio to the bare ONNX Runtime throughput (target >= 0.70);
* the share of decode / preprocess / model time, from each prediction's `Timing`;
* with `--tta`: the same figures on ONNX Runtime with `tta="hflip"` (each photo and its mirror
  image), and their ratio to the plain ONNX figures.

Every figure is the median of `--repeats` passes. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_predict.py BUNDLE --images 256 --batch 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carid import __version__
from carid.runtime.inputs import prepare_image
from carid.runtime.predictor import Predictor

DEFAULT_DATA = Path("../shared/datasets/stanford-cars-crops/images")
DEFAULT_LOG = Path(__file__).resolve().parent / "logs" / "predict-speed.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="an exported bundle (its source checkpoint for torch)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder of photos")
    parser.add_argument("--images", type=int, default=256, help="photos used (the first N by name)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the throughput figures")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both backends")
    parser.add_argument("--repeats", type=int, default=3, help="passes per figure (the median is kept)")
    parser.add_argument("--latency-images", type=int, default=48, help="photos timed one at a time")
    parser.add_argument("--skip-torch", action="store_true", help="ONNX Runtime only")
    parser.add_argument("--tta", action="store_true", help="also ONNX Runtime with tta=hflip")
    parser.add_argument("--out", type=Path, default=DEFAULT_LOG, help="JSON output")
    return parser.parse_args(argv)


def read_photos(folder: Path, count: int) -> list[tuple[str, bytes]]:
    suffixes = {".jpg", ".jpeg", ".png"}
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)[:count]
    if not paths:
        raise SystemExit(f"{folder}: no photos")
    return [(path.name, path.read_bytes()) for path in paths]


def ready_batches(predictor: Predictor, photos: list[tuple[str, bytes]], batch: int) -> list[np.ndarray]:
    arrays = []
    for name, data in photos:
        item = prepare_image(data, predictor.spec, name)
        if item.array is None:
            raise SystemExit(f"{name}: {item.error}")
        arrays.append(item.array)
    return [np.stack(arrays[i : i + batch]) for i in range(0, len(arrays), batch)]


def bare_throughput(predictor: Predictor, batches: list[np.ndarray], repeats: int) -> float:
    """Images per second of `backend.run` alone (median of `repeats` passes, after one warm-up)."""
    predictor.backend.run(batches[0])
    images = sum(len(b) for b in batches)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            predictor.backend.run(batch)
        rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates)


def end_to_end(
    predictor: Predictor, photos: list[tuple[str, bytes]], batch: int, repeats: int
) -> tuple[float, dict[str, float]]:
    """Images per second of `Predictor.predict` on encoded bytes, and the mean ms per image of each
    stage (decode, preprocess, model) over the last pass."""
    data = [item for _, item in photos]
    names = [name for name, _ in photos]
    predictor.predict(data[:batch], batch_size=batch, names=names[:batch])
    rates, last = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        last = predictor.predict(data, batch_size=batch, names=names)
        rates.append(len(data) / (time.perf_counter() - started))
    failed = [p.source for p in last if not p.ok]
    if failed:
        raise SystemExit(f"predictions failed: {failed[:5]}")
    stages = {
        "decode_ms": statistics.fmean(p.timing.decode_ms for p in last),
        "preprocess_ms": statistics.fmean(p.timing.preprocess_ms for p in last),
        "model_ms": statistics.fmean(p.timing.inference_ms for p in last),
    }
    return statistics.median(rates), stages


def single_latency(predictor: Predictor, photos: list[tuple[str, bytes]]) -> float:
    """Median milliseconds of `Predictor.predict` on one encoded photo at a time (after a warm-up)."""
    predictor.predict([photos[0][1]])
    times = []
    for _, data in photos:
        started = time.perf_counter()
        predictor.predict([data])
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def measure(predictor: Predictor, photos, args: argparse.Namespace) -> dict[str, Any]:
    batches = ready_batches(predictor, photos, args.batch)
    bare = bare_throughput(predictor, batches, args.repeats)
    e2e, stages = end_to_end(predictor, photos, args.batch, args.repeats)
    latency = single_latency(predictor, photos[: args.latency_images])
    total = sum(stages.values())
    return {
        "bare_img_per_s": bare,
        "end_to_end_img_per_s": e2e,
        "end_to_end_over_bare": e2e / bare,
        "single_image_latency_ms": latency,
        "stage_ms": stages,
        "stage_share": {name: value / total for name, value in stages.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photos = read_photos(args.data, args.images)
    results: dict[str, Any] = {}
    backends = ["onnx"] if args.skip_torch else ["onnx", "torch"]
    for backend in backends:
        predictor = Predictor.load(args.bundle, backend=backend, threads=args.threads)
        results[backend] = measure(predictor, photos, args)
        print(f"{backend}: {json.dumps(results[backend], indent=1)}", flush=True)
    if args.tta:
        predictor = Predictor.load(args.bundle, backend="onnx", threads=args.threads, tta="hflip")
        results["onnx_hflip"] = measure(predictor, photos, args)
        print(f"onnx_hflip: {json.dumps(results['onnx_hflip'], indent=1)}", flush=True)
        for figure in ("bare_img_per_s", "end_to_end_img_per_s"):
            results[f"hflip_over_plain_{figure}"] = results["onnx_hflip"][figure] / results["onnx"][figure]
    if "torch" in results:
        results["onnx_over_torch_bare"] = (
            results["onnx"]["bare_img_per_s"] / results["torch"]["bare_img_per_s"]
        )
        results["onnx_over_torch_latency"] = (
            results["torch"]["single_image_latency_ms"] / results["onnx"]["single_image_latency_ms"]
        )
    record = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "carid": __version__,
        "bundle": str(args.bundle),
        "images": len(photos),
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
