"""Load test of `carid serve`: N concurrent clients post one photo to /predict for D seconds.

Starts the server as a uvicorn subprocess on a free loopback port (the same app factory
`carid serve --workers N` uses), waits for GET /health, warms up, then keeps `--clients`
concurrent clients (httpx async) posting the photo until `--duration` seconds have passed.
Prints requests/s, latency p50/p90/p99/max (client side, milliseconds) and the errors, and writes
everything as JSON (default benchmarks/logs/serve-load.json). Example (the figure recorded in
benchmarks/RESULTS.md):

    .venv/bin/python benchmarks/bench_serve.py runs/x/export --clients 4 --duration 30

Traffic goes to 127.0.0.1 only; every loop is bounded by time and the server is stopped at the end.
`--duration 3` on a tiny bundle checks that the script works (tests/serve/test_api.py does that).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from carid.config import shared_datasets_dir
from carid.files import write_json
from carid.serve.api import ENV_MODEL, ENV_SETTINGS, ServeSettings

DEFAULT_OUT = Path("benchmarks/logs/serve-load.json")
SHARED_PHOTO = Path("stanford-cars-devkit/cars_train/04530.jpg")
LOOPBACK = "127.0.0.1"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="bundle folder, run folder or .ckpt to serve")
    parser.add_argument("--image", type=Path, default=None, help="photo to post (default: a Stanford photo)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument(
        "--slots", type=int, default=ServeSettings().inference_slots, help="inferences at once"
    )
    parser.add_argument("--threads", type=int, default=None, help="inference threads per process")
    parser.add_argument("--backend", default="auto", help="auto, onnx or torch")
    parser.add_argument("--top-k", type=int, default=5, help="top_k query parameter")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for /health")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.workers < 1:
        parser.error("--clients and --workers must be >= 1, --duration > 0 and --warmup >= 0")
    return args


def photo_bytes(path: Path | None) -> tuple[str, bytes]:
    """(name, bytes) of the photo to post: --image, else the shared Stanford photo, else a made-up JPEG."""
    if path is not None:
        return str(path), path.read_bytes()
    shared = shared_datasets_dir()
    if shared is not None and (shared / SHARED_PHOTO).is_file():
        return str(shared / SHARED_PHOTO), (shared / SHARED_PHOTO).read_bytes()
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return "<random 400x300 JPEG>", buffer.getvalue()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def start_server(model: Path, port: int, settings: ServeSettings, log_file: Any) -> subprocess.Popen:
    env = {**os.environ, ENV_MODEL: str(model.resolve()), ENV_SETTINGS: json.dumps(settings.to_dict())}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "carid.serve.api:app_from_environment",
        "--factory",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(settings.workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> float:
    """Poll GET /health until it answers 200; returns the seconds it took. Raises when the server died."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"the server exited with code {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer {url}/health within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


async def run_load(
    url: str, name: str, photo: bytes, clients: int, seconds: float, top_k: int
) -> tuple[list[float], Counter, list[dict[str, float]], float]:
    """(latencies ms of the 200 answers, error kinds, server timings, elapsed s) of `seconds` of load."""
    latencies: list[float] = []
    errors: Counter = Counter()
    timings: list[dict[str, float]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    filename = Path(name).name if not name.startswith("<") else "photo.jpg"
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    response = await client.post(
                        "/predict", params={"top_k": top_k}, files={"file": (filename, photo)}
                    )
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - sent) * 1000.0)
                    timings.append(response.json()["timing"])
                else:
                    errors[f"http_{response.status_code}"] += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, timings, elapsed


def summarize(
    latencies: list[float], errors: Counter, timings: list[dict[str, float]], seconds: float
) -> dict:
    ok = len(latencies)
    failed = sum(errors.values())
    values = np.asarray(latencies, dtype=np.float64)

    def percentile(q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if ok else None

    server = {
        key: round(float(np.mean([t[key] for t in timings])), 3) if timings else None
        for key in ("decode_ms", "preprocess_ms", "inference_ms", "total_ms")
    }
    return {
        "requests": ok + failed,
        "ok": ok,
        "errors": failed,
        "error_kinds": dict(errors),
        "seconds": round(seconds, 3),
        "requests_per_s": round(ok / seconds, 2) if seconds > 0 else None,
        "latency_ms": {
            "p50": percentile(50),
            "p90": percentile(90),
            "p99": percentile(99),
            "max": round(float(values.max()), 2) if ok else None,
            "mean": round(float(values.mean()), 2) if ok else None,
        },
        "server_timing_ms": server,
    }


def print_table(result: dict[str, Any], console: Console) -> None:
    title = (
        f"bench_serve: {result['model']} | {result['clients']} clients, {result['workers']} worker(s), "
        f"{result['inference_slots']} slot(s), {result['duration_s']:.0f} s"
    )
    table = Table(title=title, title_justify="left")
    for column in ("requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"):
        table.add_column(column, justify="right")
    latency = result["latency_ms"]

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    table.add_row(
        f"{result['requests']:,}",
        show(result["requests_per_s"]),
        show(latency["p50"]),
        show(latency["p90"]),
        show(latency["p99"]),
        show(latency["max"]),
        f"{result['errors']:,}" + (f" {result['error_kinds']}" if result["errors"] else ""),
    )
    console.print(table)
    server = result["server_timing_ms"]
    console.print(
        f"server side per photo (mean): decode {show(server['decode_ms'])} ms, preprocess "
        f"{show(server['preprocess_ms'])} ms, inference {show(server['inference_ms'])} ms; "
        f"photo {result['image']} ({result['image_bytes']:,} bytes)",
        markup=False,
        highlight=False,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    name, photo = photo_bytes(args.image)
    settings = ServeSettings(
        host=LOOPBACK,
        workers=args.workers,
        backend=args.backend,
        threads=args.threads,
        inference_slots=args.slots,
        max_waiting=max(64, 2 * args.clients),
        warmup=True,
    )
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        log_path = Path(folder) / "server.log"
        with log_path.open("w", encoding="utf-8") as log_file:
            process = start_server(args.model, port, settings, log_file)
            try:
                startup_s = wait_until_ready(url, process, log_path, args.startup_timeout)
                if args.warmup > 0:
                    asyncio.run(run_load(url, name, photo, args.clients, args.warmup, args.top_k))
                latencies, errors, timings, elapsed = asyncio.run(
                    run_load(url, name, photo, args.clients, args.duration, args.top_k)
                )
                backend = httpx.get(f"{url}/model", timeout=10.0).json().get("backend")
            finally:
                stop_server(process)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    result = {
        "format": "carid.bench.serve",
        "version": 1,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "model": str(args.model),
        "backend": backend,
        "image": name,
        "image_bytes": len(photo),
        "clients": args.clients,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workers": args.workers,
        "inference_slots": args.slots,
        "threads": args.threads,
        "top_k": args.top_k,
        "startup_s": round(startup_s, 2),
        **summarize(latencies, errors, timings, elapsed),
        "machine": {"cpus": len(cpus), "python": platform.python_version(), "platform": platform.platform()},
    }
    write_json(args.out, result)
    print_table(result, console)
    console.print(f"results: {args.out}", markup=False, highlight=False)
    return 0 if result["ok"] and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
