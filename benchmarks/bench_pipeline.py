"""A detect -> identify pipeline on real photos: the uncropped Stanford devkit photos, and the time
one roadside frame takes end to end.

1. The devkit photos (`stanford-cars-devkit/cars_train/*.jpg`, ten uncropped photos with their
   official box and class): for each, the car the pipeline found with the highest IoU against the
   official box, whether that IoU is >= 0.7, and whether the named class (make + model + year) is
   the official one. The crops of these photos must have been kept out of every split of the
   detector and the identifier (`data.exclude`).
2. Speed: one car-frames frame (676x380) with three cars, predicted from its encoded bytes through
   `Predictor.predict` (ONNX Runtime, `--threads`), `--repeats` times after a warm-up; the median
   wall time, and the median detector share (detection + cropping), identifier share and decode.

    .venv/bin/python benchmarks/bench_pipeline.py PIPELINE --threads 2 --repeats 30
    .venv/bin/python benchmarks/bench_pipeline.py PIPELINE --no-devkit --spin  # threads that spin
    .venv/bin/python benchmarks/bench_pipeline.py PIPELINE --tta hflip  # crops also scored mirrored
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
from carid.boxes import iou
from carid.data.readers import read_dataset
from carid.runtime.backends import OnnxBackend
from carid.runtime.predictor import Predictor

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
DEFAULT_LOG = Path(__file__).resolve().parent / "logs" / "pipeline.json"
FRAMES_WITH_THREE_CARS = "vid_4_13720.jpg"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="a pipeline folder (carid pipeline ...)")
    parser.add_argument("--devkit", type=Path, default=DATASETS / "stanford-cars-devkit")
    parser.add_argument("--frames", type=Path, default=DATASETS / "car-frames")
    parser.add_argument("--frame", default=None, help="the car-frames image timed (default: one with 3 cars)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=DEFAULT_LOG)
    parser.add_argument(
        "--spin",
        action="store_true",
        help="let ONNX Runtime's idle threads spin (its own default; carid turns it off) to compare",
    )
    parser.add_argument("--no-devkit", action="store_true", help="time the frame only")
    parser.add_argument("--tta", default="none", help='"hflip": the identifier also scores crops mirrored')
    return parser.parse_args(argv)


def devkit_photos(predictor: Predictor, devkit: Path) -> dict[str, Any]:
    table = read_dataset(devkit, "stanford")
    samples = [s for s in table.samples if s.path.is_file()]
    rows = []
    for sample in samples:
        [answer] = predictor.predict([sample.path])
        truth = np.asarray(sample.boxes[:1], dtype=np.float64)
        cars = answer.all_cars
        boxes = np.asarray([c.box.to_list() for c in cars if c.box is not None], dtype=np.float64)
        ious = iou(truth, boxes)[0] if len(boxes) else np.zeros(0)
        best = int(np.argmax(ious)) if len(ious) else None
        matched = cars[best] if best is not None else None
        named = None if matched is None else (matched.top1.label if matched.top1 else None)
        rows.append(
            {
                "photo": sample.path.name,
                "true_class": sample.label,
                "cars_found": len(cars),
                "best_iou": None if best is None else round(float(ious[best]), 3),
                "found": bool(best is not None and ious[best] >= 0.7),
                "answer": None if matched is None else matched.label,
                "best_guess": named,
                "probability": None
                if matched is None or matched.probability is None
                else round(matched.probability, 3),
                "right": bool(matched is not None and named == sample.label),
                "answered_right": bool(matched is not None and not matched.unknown and named == sample.label),
            }
        )
    return {
        "photos": len(rows),
        "found_at_iou_0.7": sum(r["found"] for r in rows),
        "right_class": sum(r["right"] for r in rows),
        "right_and_sure": sum(r["answered_right"] for r in rows),
        "rows": rows,
    }


def frame_speed(predictor: Predictor, frames: Path, name: str, repeats: int) -> dict[str, Any]:
    data = (frames / "images" / name).read_bytes()
    predictor.predict([data])  # warm-up
    walls, detection, identifier, decode, cars = [], [], [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        [answer] = predictor.predict([data])
        walls.append((time.perf_counter() - started) * 1000.0)
        detection.append(answer.timing.detection_ms)
        identifier.append(answer.timing.inference_ms)
        decode.append(answer.timing.decode_ms)
        cars.append(len(answer.all_cars))
    median = statistics.median(walls)
    return {
        "frame": name,
        "cars_found": statistics.median(cars),
        "median_ms": round(median, 2),
        "detector_ms": round(statistics.median(detection), 2),
        "identifier_ms": round(statistics.median(identifier), 2),
        "decode_ms": round(statistics.median(decode), 2),
        "detector_share": round(statistics.median(detection) / median, 3),
        "identifier_share": round(statistics.median(identifier) / median, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.spin:  # every session this process opens spins, as ONNX Runtime does by default
        OnnxBackend.__init__.__kwdefaults__["spin"] = True
    predictor = Predictor.load(args.pipeline, threads=args.threads, tta=args.tta)
    result: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "carid": __version__,
        "pipeline": str(args.pipeline),
        "threads": args.threads,
        "spinning_threads": args.spin,
        "tta": args.tta,
    }
    if args.devkit.is_dir() and not args.no_devkit:
        result["devkit"] = devkit_photos(predictor, args.devkit)
        for row in result["devkit"]["rows"]:
            print(
                f"{row['photo']}: iou {row['best_iou']} found {row['found']} | {row['best_guess']} "
                f"({row['probability']}) right {row['right']} | truth {row['true_class']}"
            )
        summary = {k: v for k, v in result["devkit"].items() if k != "rows"}
        print("devkit:", summary)
    if args.frames.is_dir():
        result["speed"] = frame_speed(
            predictor, args.frames, args.frame or FRAMES_WITH_THREE_CARS, args.repeats
        )
        print("speed:", result["speed"])
    result["load_after"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
