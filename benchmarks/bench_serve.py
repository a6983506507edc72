"""Load test of `carid serve`: N concurrent clients post photos to /predict for D seconds.

Starts the server as a subprocess on a free loopback port the way `carid serve` runs it
(`carid.serve.server.run_server`: uvicorn with the guarded h11 protocol and its timeouts; the
settings go through CARID_SERVE_SETTINGS), waits for GET /health, warms up, then keeps `--clients`
concurrent clients (httpx async, keep-alive) posting the photo until `--duration` seconds have
passed. Prints requests/s, latency p50/p90/p99/max (client side, milliseconds) and the errors, and
writes everything as JSON (default benchmarks/logs/serve-load.json).

With `--hostile-share 0.25` the same server then gets one more phase of `--duration` seconds per
`--hostile-mix` entry, in which each request is, with that probability, a hostile upload:

    corpus   drawn from tests/hostile/corpus.py: every kind of hostile upload (the 7000x7000 RGBA
             PNG included) and the fuzzer's 200 mutations, each as likely as the others
    bomb     always the 7000x7000 RGBA PNG (49 MP, ~190 KB: issue 23's worst case)

A valid request that does not get 200 is a failure (there must be none); a hostile one must get a
2xx or 4xx (a 5xx or a broken connection is a failure). The server's resident memory is read
before each phase and its peak during the phase (Linux: /proc/PID/status VmHWM, reset through
/proc/PID/clear_refs). Examples (the figures in benchmarks/RESULTS.md):

    .venv/bin/python benchmarks/bench_serve.py runs/x/export --clients 4 --duration 30
    .venv/bin/python benchmarks/bench_serve.py runs/x/export --hostile-share 0.25 --hostile-mix corpus,bomb

Traffic goes to 127.0.0.1 only; every loop is bounded by time and the server is stopped at the end.
`--duration 3` on a tiny bundle checks that the script works (tests/serve/test_api.py does that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from carid.config import shared_datasets_dir
from carid.files import write_json
from carid.serve.server import ENV_SETTINGS
from carid.serve.settings import ServeSettings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("benchmarks/logs/serve-load.json")
SHARED_PHOTO = Path("stanford-cars-devkit/cars_train/04530.jpg")
LOOPBACK = "127.0.0.1"
MIXES = ("corpus", "bomb")
SERVE = (
    "import json, os, sys; from carid.serve.server import run_server; "
    "from carid.serve.settings import ServeSettings; "
    f"run_server(sys.argv[1], ServeSettings.from_dict(json.loads(os.environ['{ENV_SETTINGS}'])))"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="bundle folder, run folder or .ckpt to serve")
    parser.add_argument("--image", type=Path, default=None, help="photo to post (default: a Stanford photo)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of measured load per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument(
        "--slots", type=int, default=ServeSettings().inference_slots, help="inferences at once"
    )
    parser.add_argument("--threads", type=int, default=None, help="inference threads per process")
    parser.add_argument("--backend", default="auto", help="auto, onnx or torch")
    parser.add_argument("--top-k", type=int, default=5, help="top_k query parameter")
    parser.add_argument(
        "--hostile-share", type=float, default=0.0, help="share of hostile requests in the extra phases"
    )
    parser.add_argument(
        "--hostile-mix", default="corpus", help=f"comma-separated phases of hostile load: {', '.join(MIXES)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the hostile draws")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for /health")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.workers < 1:
        parser.error("--clients and --workers must be >= 1, --duration > 0 and --warmup >= 0")
    if not 0 <= args.hostile_share <= 1:
        parser.error("--hostile-share must be in 0..1")
    args.mixes = [name.strip() for name in args.hostile_mix.split(",") if name.strip()]
    if unknown := sorted(set(args.mixes) - set(MIXES)):
        parser.error(f"--hostile-mix: unknown {', '.join(unknown)} (known: {', '.join(MIXES)})")
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


def hostile_uploads(mix: str) -> list[tuple[str, str, bytes, str]]:
    """(case name, file name, bytes, content type) of the hostile uploads of phase `mix`."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the corpus lives with the tests
    from tests.hostile.corpus import case_by_name, hostile_cases, mutations

    cases = [case_by_name("png_rgba_7000x7000")] if mix == "bomb" else hostile_cases(heavy=True) + mutations()
    return [(case.name, case.filename, case.data, case.content_type) for case in cases]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def start_server(model: Path, settings: ServeSettings, log_file: Any) -> subprocess.Popen:
    env = {**os.environ, ENV_SETTINGS: json.dumps(settings.to_dict())}
    command = [sys.executable, "-c", SERVE, str(model.resolve())]
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


def memory_mb(pid: int) -> dict[str, float | None]:
    """The process's resident memory now and its peak since the last reset (MiB; None off Linux)."""
    values: dict[str, float | None] = {"rss_mb": None, "peak_mb": None}
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values["rss_mb" if key == "VmRSS" else "peak_mb"] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return values


def reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")  # resets VmHWM to VmRSS


@dataclass
class Phase:
    """What one phase of load measured, client side."""

    latencies: list[float] = field(default_factory=list)  # ms, the valid requests answered 200
    errors: Counter = field(default_factory=Counter)  # the valid requests that failed, by kind
    timings: list[dict[str, float]] = field(default_factory=list)
    hostile: Counter = field(default_factory=Counter)  # hostile answers by status (or error kind)
    hostile_failures: Counter = field(default_factory=Counter)  # 5xx and broken connections, by case
    hostile_latencies: list[float] = field(default_factory=list)  # ms, the hostile requests answered
    seconds: float = 0.0


async def run_load(
    url: str,
    photo: tuple[str, bytes],
    clients: int,
    seconds: float,
    top_k: int,
    share: float = 0.0,
    hostile: list[tuple[str, str, bytes, str]] | None = None,
    seed: int = 0,
) -> Phase:
    """`seconds` of load; each request is hostile with probability `share` (drawn from `hostile`)."""
    phase = Phase()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    name, data = photo
    filename = Path(name).name if not name.startswith("<") else "photo.jpg"
    query = {"top_k": top_k}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def one_client(index: int) -> None:
            draw = random.Random(seed * 1000 + index)
            while time.perf_counter() < deadline:
                if hostile and draw.random() < share:
                    case, hostile_name, hostile_data, content_type = draw.choice(hostile)
                    sent = time.perf_counter()
                    try:
                        response = await client.post(
                            "/predict", files={"file": (hostile_name, hostile_data, content_type)}
                        )
                        phase.hostile_latencies.append((time.perf_counter() - sent) * 1000.0)
                        phase.hostile[response.status_code] += 1
                        if response.status_code >= 500:
                            phase.hostile_failures[f"{case}: {response.status_code}"] += 1
                    except httpx.HTTPError as exc:
                        phase.hostile[type(exc).__name__] += 1
                        phase.hostile_failures[f"{case}: {type(exc).__name__}"] += 1
                    continue
                sent = time.perf_counter()
                try:
                    response = await client.post("/predict", params=query, files={"file": (filename, data)})
                except httpx.HTTPError as exc:
                    phase.errors[type(exc).__name__] += 1
                    continue
                if response.status_code == 200:
                    phase.latencies.append((time.perf_counter() - sent) * 1000.0)
                    phase.timings.append(response.json()["timing"])
                else:
                    phase.errors[f"http_{response.status_code}"] += 1

        await asyncio.gather(*(one_client(index) for index in range(clients)))
        phase.seconds = time.perf_counter() - started
    return phase


def summarize(phase: Phase) -> dict[str, Any]:
    ok = len(phase.latencies)
    failed = sum(phase.errors.values())
    hostile = sum(phase.hostile.values())
    values = np.asarray(phase.latencies, dtype=np.float64)
    seconds = phase.seconds

    def percentile(q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if ok else None

    server = {
        key: round(float(np.mean([t[key] for t in phase.timings])), 3) if phase.timings else None
        for key in ("decode_ms", "preprocess_ms", "inference_ms", "total_ms")
    }
    return {
        "requests": ok + failed,
        "ok": ok,
        "errors": failed,
        "error_kinds": dict(phase.errors),
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
        "hostile_requests": hostile,
        "hostile_per_s": round(hostile / seconds, 2) if seconds > 0 else None,
        "hostile_statuses": {str(key): value for key, value in sorted(phase.hostile.items(), key=str)},
        "hostile_latency_ms": {
            "p50": round(float(np.median(phase.hostile_latencies)), 2) if phase.hostile_latencies else None,
            "max": round(max(phase.hostile_latencies), 2) if phase.hostile_latencies else None,
        },
        "hostile_failures": dict(phase.hostile_failures),
    }


def print_table(result: dict[str, Any], console: Console) -> None:
    title = (
        f"bench_serve: {result['model']} | {result['clients']} clients, {result['workers']} worker(s), "
        f"{result['inference_slots']} slot(s), {result['duration_s']:.0f} s per phase"
    )
    table = Table(title=title, title_justify="left")
    columns = ("phase", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors")
    for column in (*columns, "hostile", "hostile 5xx", "peak MB"):
        table.add_column(column, justify="right")

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    for phase in result["phases"]:
        latency = phase["latency_ms"]
        table.add_row(
            phase["phase"],
            f"{phase['requests']:,}",
            show(phase["requests_per_s"]),
            show(latency["p50"]),
            show(latency["p90"]),
            show(latency["p99"]),
            show(latency["max"]),
            f"{phase['errors']:,}" + (f" {phase['error_kinds']}" if phase["errors"] else ""),
            f"{phase['hostile_requests']:,}",
            f"{sum(phase['hostile_failures'].values()):,}",
            show(phase["server_memory"]["peak_mb"]),
        )
    console.print(table)
    server = result["server_timing_ms"]
    console.print(
        f"server side per photo (mean, all-valid phase): decode {show(server['decode_ms'])} ms, preprocess "
        f"{show(server['preprocess_ms'])} ms, inference {show(server['inference_ms'])} ms; "
        f"photo {result['image']} ({result['image_bytes']:,} bytes)",
        markup=False,
        highlight=False,
    )


def measure(url: str, pid: int, args: argparse.Namespace, photo: tuple[str, bytes]) -> list[dict[str, Any]]:
    """The all-valid phase, then one phase per hostile mix, against the one server."""
    plans: list[tuple[str, float, list[tuple[str, str, bytes, str]] | None]] = [("all-valid", 0.0, None)]
    if args.hostile_share > 0:
        share = args.hostile_share
        plans += [(f"{mix} {share:.0%}", share, hostile_uploads(mix)) for mix in args.mixes]
    phases = []
    for number, (name, share, hostile) in enumerate(plans):
        before = memory_mb(pid)
        reset_peak(pid)
        seed = args.seed + number
        load = run_load(url, photo, args.clients, args.duration, args.top_k, share, hostile, seed)
        summary = summarize(asyncio.run(load))
        memory = memory_mb(pid)
        summary["server_memory"] = {"rss_before_mb": before["rss_mb"], "peak_mb": memory["peak_mb"]}
        phases.append({"phase": name, "hostile_share": share, **summary})
    return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=150)
    photo = photo_bytes(args.image)
    port = free_port()
    settings = ServeSettings(
        host=LOOPBACK,
        port=port,
        workers=args.workers,
        backend=args.backend,
        threads=args.threads,
        inference_slots=args.slots,
        max_waiting=max(64, 2 * args.clients),
        warmup=True,
    )
    url = f"http://{LOOPBACK}:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        log_path = Path(folder) / "server.log"
        with log_path.open("w", encoding="utf-8") as log_file:
            process = start_server(args.model, settings, log_file)
            try:
                startup_s = wait_until_ready(url, process, log_path, args.startup_timeout)
                if args.warmup > 0:
                    asyncio.run(run_load(url, photo, args.clients, args.warmup, args.top_k))
                phases = measure(url, process.pid, args, photo)
                backend = httpx.get(f"{url}/model", timeout=10.0).json().get("backend")
            finally:
                stop_server(process)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    result = {
        "format": "carid.bench.serve",
        "version": 2,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "model": str(args.model),
        "backend": backend,
        "image": photo[0],
        "image_bytes": len(photo[1]),
        "clients": args.clients,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workers": args.workers,
        "inference_slots": args.slots,
        "threads": args.threads,
        "top_k": args.top_k,
        "hostile_share": args.hostile_share,
        "startup_s": round(startup_s, 2),
        **{key: value for key, value in phases[0].items() if key not in ("phase", "hostile_share")},
        "phases": phases,
        "machine": {"cpus": len(cpus), "python": platform.python_version(), "platform": platform.platform()},
    }
    write_json(args.out, result)
    print_table(result, console)
    console.print(f"results: {args.out}", markup=False, highlight=False)
    clean = all(not phase["errors"] and not phase["hostile_failures"] for phase in phases)
    return 0 if result["ok"] and clean else 1


if __name__ == "__main__":
    sys.exit(main())
