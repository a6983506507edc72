"""Batch prediction speed: the local engine of `carid predict` against the Ray engine with 1 and 2
workers, on the same photos and the same bundle, measured in one run.

* local: `carid.runtime.predict_io.run_predict` (model load + predict + the CSV), with 1 and with
  2 inference threads;
* ray: `carid.scale.ray_engine.run_ray_predict` into a fresh folder (plan, actor start-up with one
  model load each, predict, shard files, manifest), 1 inference thread per worker, with 1 and 2
  workers, on a Ray cluster started here with `ray.init(num_cpus=2)` (its start-up is timed on
  its own: a cluster is started once and serves many jobs).

Each job is timed once, wall clock, end to end; photos/s = photos / seconds. Ray's overhead is the
Ray job's seconds minus the local engine's with the same total threads; its fixed part, from a job
of one shard (one worker) against the local engine on the same photos. The rows of every Ray job
are checked against the local CSV (every column but the timings). Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_ray.py BUNDLE --data ../shared/datasets/stanford-cars-crops/images \\
        --images 500 --shard-size 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carid import __version__
from carid.runtime.predict_io import run_predict
from carid.scale.ray_engine import import_ray, run_ray_predict
from carid.scale.writer import read_shard

DEFAULT_DATA = Path("../shared/datasets/stanford-cars-crops/images")
DEFAULT_LOG = Path(__file__).resolve().parent / "logs" / "ray-predict.json"
TIMING_COLUMNS = ("decode_ms", "preprocess_ms", "inference_ms", "total_ms")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="an exported bundle")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder of photos")
    parser.add_argument("--images", type=int, default=500, help="photos used (the first N by name)")
    parser.add_argument("--shard-size", type=int, default=50, help="photos per shard of the Ray jobs")
    parser.add_argument("--batch", type=int, default=16, help="photos per model batch")
    parser.add_argument("--out", type=Path, default=DEFAULT_LOG, help="JSON output")
    return parser.parse_args(argv)


def comparable(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS} for row in rows]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photos = sorted(p for p in args.data.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = photos[: args.images]
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch:
        folder = Path(scratch)
        listing = folder / "photos.txt"
        listing.write_text("".join(f"{path.resolve()}\n" for path in photos), encoding="utf-8")
        inputs = [str(path.resolve()) for path in photos]

        local_rows: list[dict[str, str]] = []
        for threads in (1, 2):
            out = folder / f"local-{threads}.csv"
            started = time.perf_counter()
            run = run_predict(
                args.bundle, inputs, batch_size=args.batch, threads=threads, out=out, progress=False
            )
            seconds = time.perf_counter() - started
            results[f"local, {threads} thread(s)"] = {"seconds": seconds, "photos": len(run.predictions)}
            local_rows = comparable(read_shard(out))
            print(f"local {threads} thread(s): {seconds:.2f} s", flush=True)

        ray = import_ray()
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - started
        print(f"ray.init: {ray_start:.2f} s", flush=True)
        try:
            # the fixed cost of a job: one shard, one worker, against the local engine on those photos
            small = folder / "small.txt"
            small.write_text("".join(f"{path.resolve()}\n" for path in photos[: args.shard_size]), "utf-8")
            started = time.perf_counter()
            first = inputs[: args.shard_size]
            run_predict(args.bundle, first, batch_size=args.batch, threads=1, progress=False)
            local_small = time.perf_counter() - started
            started = time.perf_counter()
            run_ray_predict(args.bundle, [small], folder / "ray-small", workers=1, shard_size=args.shard_size)
            ray_small = time.perf_counter() - started
            print(f"{args.shard_size} photos: local {local_small:.2f} s, ray {ray_small:.2f} s", flush=True)
            for workers in (1, 2):
                out = folder / f"ray-{workers}"
                started = time.perf_counter()
                run = run_ray_predict(
                    args.bundle,
                    [listing],
                    out,
                    workers=workers,
                    shard_size=args.shard_size,
                    batch_size=args.batch,
                    threads=1,
                )
                seconds = time.perf_counter() - started
                rows = [row for record in run.records for row in read_shard(out / record.file)]
                same = comparable(rows) == local_rows
                entry = {"seconds": seconds, "photos": run.photos, "rows_equal": same}
                results[f"ray, {workers} worker(s)"] = entry
                print(f"ray {workers} worker(s): {seconds:.2f} s, rows equal local: {same}", flush=True)
        finally:
            ray.shutdown()

    for entry in results.values():
        entry["photos_per_second"] = entry["photos"] / entry["seconds"]
    overhead = {
        f"one shard of {args.shard_size} photos: ray 1 worker - local 1 thread (s)": ray_small - local_small,
        "ray 1 worker - local 1 thread (s)": results["ray, 1 worker(s)"]["seconds"]
        - results["local, 1 thread(s)"]["seconds"],
        "ray 2 workers - local 2 threads (s)": results["ray, 2 worker(s)"]["seconds"]
        - results["local, 2 thread(s)"]["seconds"],
    }
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "carid": __version__,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "bundle": str(args.bundle),
        "data": str(args.data),
        "images": len(photos),
        "shard_size": args.shard_size,
        "batch": args.batch,
        "ray_init_seconds": ray_start,
        "one_shard_seconds": {"local": local_small, "ray": ray_small},
        "jobs": results,
        "overhead": overhead,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\n{'job':<24} {'seconds':>8} {'photos/s':>9}")
    for name, entry in results.items():
        print(f"{name:<24} {entry['seconds']:>8.2f} {entry['photos_per_second']:>9.1f}")
    print(f"ray.init {ray_start:.2f} s; overhead: " + "; ".join(f"{k} {v:+.2f}" for k, v in overhead.items()))
    print(f"load average before {load_before}, after {report['load_average_after']}; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
