"""Speed of the data checks: read a dataset, then check it, timing each step.

Prints images, seconds and images/s for reading (`read_dataset`) and for checking
(`run_checks`: every image opened and decoded once, hashed, all rules applied), plus the
problem summary. Example (the figure recorded in benchmarks/RESULTS.md):

    .venv/bin/python benchmarks/bench_checks.py --data ../shared/datasets/stanford-cars-crops --workers 0

`--limit N` checks only the first N samples (reading still reads the whole dataset), for a
quick run that validates the script without loading a shared machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from carid.config import CheckConfig, resolve_data_path
from carid.data.checks import run_checks
from carid.data.readers import read_dataset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset folder or annotation file")
    parser.add_argument("--format", default=None, help="reader name (default: detected)")
    parser.add_argument(
        "--workers", type=int, default=CheckConfig().workers, help="processes; 0 = one per CPU"
    )
    parser.add_argument("--limit", type=int, default=0, help="check only the first N samples (0 = all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the full check report here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    path = resolve_data_path(args.data)

    started = time.perf_counter()
    table = read_dataset(path, args.format)
    read_seconds = time.perf_counter() - started
    read_count = len(table)
    if args.limit > 0:
        table = table.with_samples(table.samples[: args.limit])

    report = run_checks(table, CheckConfig(workers=args.workers), progress=not args.no_progress)
    if args.json is not None:
        report.write_json(args.json)

    timings = Table(title=f"bench_checks: {path} ({table.format})", title_justify="left")
    for column in ("step", "images", "seconds", "images/s"):
        timings.add_column(column, justify="left" if column == "step" else "right")
    timings.add_row("read", f"{read_count:,}", f"{read_seconds:.2f}", rate(read_count, read_seconds))
    timings.add_row(
        "check (open + hash)",
        f"{report.images_opened:,}",
        f"{report.probe_seconds:.2f}",
        rate(report.images_opened, report.probe_seconds),
    )
    timings.add_row(
        "check (total)",
        f"{report.images_opened:,}",
        f"{report.seconds:.2f}",
        f"{report.images_per_second:,.0f}",
    )
    console.print(timings)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    console.print(
        f"workers {report.workers} (of {len(cpus)} CPUs), Python {platform.python_version()}, "
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}"
    )
    report.print_summary(console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
