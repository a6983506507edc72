"""int8 against fp32 on one bundle, in one run: throughput, single-photo latency and top-1 on the test split.

The fp32 bundle is quantized by `carid.export_quantize.quantize_bundle` (the code behind
`carid export BUNDLE --quantize int8`; calibration photos from the training split of the bundle's run,
its check on the validation split) once per `--settings` entry, with the tolerance lifted so every
variant is measured; whether the configured tolerance (`export.quantize_max_top1_drop`) would have
refused it is reported. Then, on the test photos of the run's split.csv, each photo decoded and
preprocessed once by the predictor's own `prepare_image`:

* top-1 accuracy of every graph, and its top-1 agreement with fp32;
* throughput: `backend.run` on batches of `--batch` ready arrays, the graphs taking turns on each
  batch so that a change of machine load hits them alike (images / inference seconds);
* single-photo latency: median `backend.run` time of a 1-photo batch (graphs taking turns per photo),
  and the median end-to-end `Predictor.predict` of one encoded photo (decode + preprocess + model).

Prints a Markdown table (ratios against fp32) and writes JSON with `--out`.

    .venv/bin/python benchmarks/bench_int8.py /work/runs/mainjob-s5-excl/bundle --threads 2 --batch 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carid import __version__
from carid.artifacts.bundle import LOGITS, Bundle
from carid.artifacts.run_dir import CHECKPOINT_DIR, SPLIT_FILE
from carid.data.split import load_split
from carid.export_quantize import QUANTIZATION_KEY, QuantizeOptions, QuantizeSettings, quantize_bundle
from carid.runtime.backends import OnnxBackend
from carid.runtime.inputs import prepare_image
from carid.runtime.predictor import Predictor

SETTINGS = {
    "qoperator-perchannel-rr": QuantizeSettings("qoperator", per_channel=True, reduce_range=True),
    "qoperator-perchannel": QuantizeSettings("qoperator", per_channel=True, reduce_range=False),
    "qdq-perchannel-rr": QuantizeSettings("qdq", per_channel=True, reduce_range=True),
    "qdq-perchannel": QuantizeSettings("qdq", per_channel=True, reduce_range=False),
    "qdq-pertensor": QuantizeSettings("qdq", per_channel=False, reduce_range=False),
    "qoperator-perchannel-rr-percentile": QuantizeSettings(
        "qoperator", per_channel=True, reduce_range=True, calibration="percentile"
    ),
}

DEFAULT_SETTINGS = "qoperator-perchannel-rr,qdq-perchannel-rr,qoperator-perchannel"
CPU = "CPUExecutionProvider"


def _split_csv(bundle: Bundle) -> Path:
    checkpoint = Path(bundle.metadata.source_checkpoint or "")
    if checkpoint.parent.name != CHECKPOINT_DIR or not (checkpoint.parent.parent / SPLIT_FILE).is_file():
        sys.exit(f"{bundle.path}: its source checkpoint is not in a run folder with a {SPLIT_FILE}")
    return checkpoint.parent.parent / SPLIT_FILE


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.machine()


def _median_ms(values: list[float]) -> float:
    return round(1000.0 * statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path, help="an fp32 bundle exported from a run (uses its split.csv)")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"of: {', '.join(SETTINGS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=0, help="test photos (0: all)")
    parser.add_argument("--latency-photos", type=int, default=40)
    parser.add_argument("--calibration-images", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    fp32_bundle = Bundle.load(args.bundle)
    split_csv = _split_csv(fp32_bundle)
    configured = QuantizeOptions.resolve(split_csv.parent)
    names = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        sys.exit(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}")
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    try:
        report = _measure(args, fp32_bundle, split_csv, configured.max_top1_drop, names, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["started"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    report["load_average_before"] = [round(v, 2) for v in load_before]
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    _print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _measure(
    args: argparse.Namespace,
    fp32_bundle: Bundle,
    split_csv: Path,
    tolerance: float,
    names: list[str],
    work: Path,
) -> dict[str, Any]:
    graphs: dict[str, Bundle] = {"fp32": fp32_bundle}
    quantization: dict[str, Any] = {}
    for name in names:
        began = time.perf_counter()
        result = quantize_bundle(
            fp32_bundle.path,
            work / name,
            max_top1_drop=100.0,
            calibration_images=args.calibration_images,
            settings=SETTINGS[name],
            say=lambda line, name=name: print(f"  [{name}] {line}", flush=True),
        )
        graphs[name] = result.bundle
        check = result.bundle.metadata.extra[QUANTIZATION_KEY]["check"]
        quantization[name] = {
            "seconds": round(time.perf_counter() - began, 1),
            "model_mb": round(result.bundle.model_path.stat().st_size / 1e6, 2),
            "check": {key: value for key, value in check.items() if key != "unreadable"},
            "refused_at_configured_tolerance": check["top1_agreement_loss_points"] > tolerance,
        }

    spec = fp32_bundle.metadata.preprocess_spec()
    index = {name: i for i, name in enumerate(fp32_bundle.metadata.class_names)}
    test = sorted({(Path(s.path), s.label) for s in load_split(split_csv).samples if s.split == "test"})
    if args.images:
        test = test[: args.images]
    backends = {
        name: OnnxBackend(bundle.model_path, bundle.metadata.input_name, [CPU], args.threads)
        for name, bundle in graphs.items()
    }
    for backend in backends.values():  # warm-up
        backend.run(np.zeros((args.batch, 3, spec.height, spec.width), np.float32))
    top1: dict[str, list[int]] = {name: [] for name in graphs}
    seconds = dict.fromkeys(graphs, 0.0)
    labels: list[int] = []
    arrays_for_latency: list[np.ndarray] = []
    for start in range(0, len(test), args.batch):
        chunk = test[start : start + args.batch]
        items = [(prepare_image(path, spec, str(path)), label) for path, label in chunk]
        good = [(item, label) for item, label in items if item.error is None and label in index]
        batch = np.stack([item.array for item, _ in good])
        labels += [index[label] for _, label in good]
        if len(arrays_for_latency) < args.latency_photos:
            arrays_for_latency += [item.array for item, _ in good]
        order = list(graphs) if (start // args.batch) % 2 == 0 else list(reversed(graphs))
        for name in order:
            began = time.perf_counter()
            logits = backends[name].run(batch)[LOGITS]
            seconds[name] += time.perf_counter() - began
            top1[name] += logits.argmax(axis=1).tolist()
    latency: dict[str, list[float]] = {name: [] for name in graphs}
    for i, array in enumerate(arrays_for_latency[: args.latency_photos]):
        for name in list(graphs) if i % 2 == 0 else list(reversed(graphs)):
            began = time.perf_counter()
            backends[name].run(array[None])
            latency[name].append(time.perf_counter() - began)
    predictors = {name: Predictor.load(bundle.path, threads=args.threads) for name, bundle in graphs.items()}
    encoded = [path.read_bytes() for path, _ in test[: args.latency_photos]]
    for predictor in predictors.values():
        predictor.warmup()
    end_to_end: dict[str, list[float]] = {name: [] for name in graphs}
    for i, data in enumerate(encoded):
        for name in list(graphs) if i % 2 == 0 else list(reversed(graphs)):
            began = time.perf_counter()
            predictors[name].predict([data])
            end_to_end[name].append(time.perf_counter() - began)

    truth = np.asarray(labels)
    reference = np.asarray(top1["fp32"])
    rows: dict[str, dict[str, Any]] = {}
    for name in graphs:
        predicted = np.asarray(top1[name])
        rows[name] = {
            "test_top1": round(float(np.mean(predicted == truth)), 4),
            "agreement_with_fp32": round(float(np.mean(predicted == reference)), 4),
            "throughput_img_s": round(len(truth) / seconds[name], 1),
            "latency_ms": _median_ms(latency[name]),
            "end_to_end_ms": _median_ms(end_to_end[name]),
        }
    base = rows["fp32"]
    for row in rows.values():
        row["throughput_ratio"] = round(row["throughput_img_s"] / base["throughput_img_s"], 2)
        row["latency_ratio"] = round(base["latency_ms"] / row["latency_ms"], 2)
        row["end_to_end_ratio"] = round(base["end_to_end_ms"] / row["end_to_end_ms"], 2)
        row["top1_points_lost"] = round(100.0 * (base["test_top1"] - row["test_top1"]), 1)
    report = {
        "bundle": str(fp32_bundle.path),
        "split_csv": str(split_csv),
        "test_images": len(truth),
        "threads": args.threads,
        "batch": args.batch,
        "latency_photos": len(latency["fp32"]),
        "configured_max_top1_drop": tolerance,
        "goal": "throughput >= 1.5x fp32 with <= 1 point of test top-1 lost",
        "rows": rows,
        "quantization": quantization,
        "cpu": _cpu(),
        "carid": __version__,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }
    return report


def _print(report: dict[str, Any]) -> None:
    rows, quantization = report["rows"], report["quantization"]
    print(
        f"| graph | test top-1 | agrees with fp32 | img/s (batch {report['batch']}) | x fp32 | 1-photo ms "
        "| x fp32 | end-to-end ms | x fp32 | check agreement (val) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        check = quantization.get(name, {}).get("check")
        agreement = "" if check is None else f"{100 * check['top1_agreement']:.1f} %"
        print(
            f"| {name} | {100 * row['test_top1']:.1f} % | {100 * row['agreement_with_fp32']:.1f} % | "
            f"{row['throughput_img_s']} | {row['throughput_ratio']} | {row['latency_ms']} | "
            f"{row['latency_ratio']} | {row['end_to_end_ms']} | {row['end_to_end_ratio']} | {agreement} |"
        )
    print(f"load average before {report['load_average_before']}, after {report['load_average_after']}")


if __name__ == "__main__":
    main()
