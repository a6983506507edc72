"""Memory and time of decoding one big accepted upload, as the server does (issue 23, defect 1).

`carid serve` hands each upload's bytes to `carid.runtime.inputs.prepare_image` (decode, EXIF,
alpha on white, reduced-size decode, preprocessing). This measures, for uploads just under the
server's pixel limit (`carid.serve.limits.DEFAULT_MAX_PIXELS`), how far the process's resident memory
rises above its idle level while one such upload is prepared, and how long that takes:

* each case runs in a fresh Python process (`--worker`), which reads the file into memory, prepares a
  small image of the same kind first (plugins imported, allocator warm), records its idle RSS,
  resets the kernel's peak-RSS mark (`/proc/self/clear_refs`, Linux) and prepares the big upload
  once: peak = VmHWM - idle RSS. Then the same for the header check the server makes first
  (`carid.images.probe_image(decode=False)`, in `check_upload`), and `--repeats` more runs of
  `prepare_image` give its median time.
* cases: RGBA PNG (mostly flat colour, ~200 KB: the issue's 186 KB bomb), RGB PNG, JPEG, 16-bit
  RGBA PNG, 16-bit grey PNG, palette PNG with transparency, and WebP, TIFF and GIF, the other
  formats the server accepts.
* `--before REF` also measures the package as it is at git commit REF (`git archive REF src`, put
  first on PYTHONPATH), so before and after come from one run on one machine.

    .venv/bin/python benchmarks/bench_decode_memory.py --before HEAD

Prints a Markdown table and writes JSON (default benchmarks/logs/decode-memory/decode_memory.json).
"""

from __future__ import annotations

import argparse
import ast
import gc
import io
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "logs" / "decode-memory" / "decode_memory.json"
TARGET_MB = 300.0
MB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="also measure the package at this git commit")
    parser.add_argument("--image-size", type=int, default=224, help="network input side (letterbox spec)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after the memory run")
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), help="only these cases (default: all)")
    parser.add_argument("--side", type=int, help="square side of the uploads (default: under the limit)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output")
    parser.add_argument("--worker", nargs=2, metavar=("BIG", "SMALL"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the uploads ----------------------------------------------------------------------------------------


def _drawn(mode: str, side: int, background: Any, car: Any, hole: Any | None = None) -> Image.Image:
    """A flat `background` with a `car` rectangle and, for modes with alpha, a transparent `hole`."""
    image = Image.new(mode, (side, side), background)
    draw = ImageDraw.Draw(image)
    draw.rectangle([side // 5, side // 3, side * 4 // 5, side * 2 // 3], fill=car)
    if hole is not None:
        draw.rectangle([0, 0, side // 4, side - 1], fill=hole)
    return image


def _png16_rgba(side: int) -> bytes:
    """A 16-bit-per-channel RGBA PNG (Pillow cannot write one), rows streamed through zlib."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    background = struct.pack(">4H", 50000, 60000, 65535, 65535)
    car = struct.pack(">4H", 40000, 2000, 2000, 65535)
    clear = struct.pack(">4H", 0, 0, 0, 0)
    row = [clear if x < side // 4 else background for x in range(side)]
    car_row = [car if side // 5 <= x <= side * 4 // 5 else pixel for x, pixel in enumerate(row)]
    plain, with_car = b"\x00" + b"".join(row), b"\x00" + b"".join(car_row)  # filter byte 0, then pixels
    compressor = zlib.compressobj(6)
    parts = [compressor.compress(with_car if side // 3 <= y <= side * 2 // 3 else plain) for y in range(side)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def _saved(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _palette(side: int) -> Image.Image:
    image = _drawn("P", side, 1, 2, hole=0)
    image.putpalette([0, 0, 0, 70, 110, 200, 200, 30, 30] + [0] * (768 - 9))
    image.info["transparency"] = 0
    return image


def _rgba(side: int) -> Image.Image:
    return _drawn("RGBA", side, (70, 110, 200, 255), (200, 30, 30, 255), (0, 0, 0, 0))


def _rgb(side: int) -> Image.Image:
    return _drawn("RGB", side, (70, 110, 200), (200, 30, 30))


CASES: dict[str, Callable[[int], bytes]] = {
    "png-rgba": lambda s: _saved(_rgba(s), "PNG"),
    "png-rgb": lambda s: _saved(_rgb(s), "PNG"),
    "jpeg": lambda s: _saved(_rgb(s), "JPEG", quality=90),
    "png16-rgba": _png16_rgba,
    "png16-grey": lambda s: _saved(_drawn("I;16", s, 30000, 60000), "PNG"),
    "png-palette-trns": lambda s: _saved(_palette(s), "PNG", transparency=0),
    "webp-rgba": lambda s: _saved(_rgba(s), "WEBP", lossless=True),
    "tiff-rgba": lambda s: _saved(_rgba(s), "TIFF", compression="tiff_adobe_deflate"),
    "gif": lambda s: _saved(_palette(s), "GIF", transparency=0),
}


def serve_side() -> tuple[int, int]:
    """(side, limit): the largest multiple of 100 whose square is under the server's pixel limit.

    The limit is read from the source of `carid.serve.limits` (not imported: no web framework needed).
    """
    tree = ast.parse((ROOT / "src" / "carid" / "serve" / "limits.py").read_text(encoding="utf-8"))
    limit = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == "DEFAULT_MAX_PIXELS" for target in node.targets)
    )
    return math.isqrt(limit - 1) // 100 * 100, limit


# --- one measurement, in its own process -----------------------------------------------------------------


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def worker(big: Path, small: Path, image_size: int, repeats: int) -> dict[str, Any]:
    import carid
    from carid.images import probe_image
    from carid.preprocess import PreprocessSpec
    from carid.runtime.inputs import prepare_image

    spec = PreprocessSpec(image_size=(image_size, image_size), resize_mode="letterbox")
    data, warm = big.read_bytes(), small.read_bytes()
    assert prepare_image(warm, spec, "warm").error is None
    gc.collect()
    idle = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS mark (VmHWM) := the current RSS
    started = time.perf_counter()
    prepared = prepare_image(data, spec, big.name)
    first_ms = (time.perf_counter() - started) * 1000.0
    peak = _status("VmHWM") - idle
    if prepared.error is not None:
        raise SystemExit(prepared.error)
    del prepared
    gc.collect()
    probe_idle = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    probe_image(data, big.name, decode=False)  # the server's header check (check_upload) before it
    probe_ms = (time.perf_counter() - started) * 1000.0
    probe_peak = _status("VmHWM") - probe_idle
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        item = prepare_image(data, spec, big.name)
        runs.append(((time.perf_counter() - started) * 1000.0, item.decode_ms, item.preprocess_ms))
        del item
    return {
        "package": str(Path(carid.__file__).parent),
        "idle_rss_mb": idle / MB,
        "peak_above_idle_mb": peak / MB,
        "first_ms": first_ms,
        "probe_ms": probe_ms,
        "probe_peak_above_idle_mb": probe_peak / MB,
        "median_ms": statistics.median(run[0] for run in runs) if runs else first_ms,
        "median_decode_ms": statistics.median(run[1] for run in runs) if runs else None,
        "median_preprocess_ms": statistics.median(run[2] for run in runs) if runs else None,
    }


def measure(src: Path, big: Path, small: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(big), str(small)]
    command += ["--image-size", str(args.image_size), "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if Path(measured["package"]).resolve() != (src / "carid").resolve():
        raise SystemExit(f"the worker imported {measured['package']}, not {src / 'carid'}")
    return measured


def export_tree(ref: str, into: Path) -> Path:
    """`git archive REF src` unpacked under `into`; returns its src folder (read-only git use)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def table(results: dict[str, Any], trees: list[str]) -> str:
    header = (
        "| upload | file | "
        + " | ".join(f"{tree}: peak above idle | {tree}: time | {tree}: header probe" for tree in trees)
        + " |"
    )
    lines = [header, "|" + "---|" * (2 + 3 * len(trees))]
    for case, row in results["cases"].items():
        cells = [case, f"{row['file_bytes'] / 1024:,.0f} KB"]
        for tree in trees:
            measured = row[tree]
            if "error" in measured:
                cells += [f"error: {measured['error']}", "", ""]
            else:
                cells += [
                    f"{measured['peak_above_idle_mb']:,.0f} MB",
                    f"{measured['median_ms']:,.0f} ms",
                    f"{measured['probe_ms']:,.0f} ms, {measured['probe_peak_above_idle_mb']:,.0f} MB",
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), Path(args.worker[1]), args.image_size, args.repeats)))
        return
    side, limit = serve_side()
    side = args.side or side
    names = args.cases or list(CASES)
    load_before = _uptime()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="carid-decode-bench-") as temporary:
        work = Path(temporary)
        trees: dict[str, Path] = {}
        if args.before:
            trees["before"] = export_tree(args.before, work / "before")
        trees["after"] = ROOT / "src"
        results: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": started.isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "uptime_before": load_before,
            "serve_max_pixels": limit,
            "side": side,
            "image_size": args.image_size,
            "before_ref": args.before,
            "target_mb": TARGET_MB,
            "cases": {},
        }
        for name in names:
            big, small = work / f"{name}.big", work / f"{name}.small"
            big.write_bytes(CASES[name](side))
            small.write_bytes(CASES[name](300))
            row: dict[str, Any] = {"file_bytes": big.stat().st_size}
            for tree, src in trees.items():
                row[tree] = measure(src, big, small, args)
                print(f"{name} {tree}: {row[tree]}", file=sys.stderr, flush=True)
            results["cases"][name] = row
            big.unlink()
    results["uptime_after"] = _uptime()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(
        f"{side}x{side} uploads ({side * side / 1e6:.0f} MP; serve limit {limit / 1e6:.0f} MP), "
        f"{args.image_size} px letterbox spec; {results['uptime_before']}"
    )
    print(table(results, list(trees)))
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
