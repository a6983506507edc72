"""Does a box head trained on composites find cars in real photos?

`configs/stanford-composite.yaml` trains the 196-class network with a box head on Stanford crops
pasted onto car-free street frames (`carid data compose`). This scores its exported bundle, through
the same `Predictor` that `carid predict` and `carid serve` use, on the 10 real, uncropped Stanford
devkit photos (`../shared/datasets/stanford-cars-devkit/cars_train/045{30..39}.jpg`) against their
official boxes; their crops were left out of the composites (two of them are not among the shared
crops at all). It also copies the composite test split's figures from the run's summary.

    .venv/bin/python benchmarks/bench_compose.py runs/stanford-composite \
        --out benchmarks/logs/compose/compose.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from carid import boxes as box_math
from carid.config import shared_datasets_dir
from carid.data.readers import read_dataset
from carid.runtime.predictor import Predictor


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the trained run (exported to RUN/export first if missing)")
    parser.add_argument("--devkit", type=Path, default=None, help="the Stanford devkit folder")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/logs/compose/compose.json"))
    return parser.parse_args(argv)


def bundle_of(run: Path) -> Path:
    bundle = run / "export"
    if not (bundle / "model.json").is_file():  # `carid export RUN` writes RUN/export, parity-checked
        subprocess.run([str(Path(sys.executable).parent / "carid"), "export", str(run)], check=True)
    return bundle


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    devkit = args.devkit or (shared_datasets_dir() or Path("../shared/datasets")) / "stanford-cars-devkit"
    samples = list(read_dataset(devkit).usable())
    if not samples:
        raise SystemExit(f"{devkit}: no uncropped photos with boxes")
    bundle = bundle_of(args.run)
    predictor = Predictor.load(bundle)
    started = time.perf_counter()
    predictions = predictor.predict([s.path for s in samples], top_k=5)
    seconds = time.perf_counter() - started
    photos = []
    for sample, prediction in zip(samples, predictions, strict=True):
        if not prediction.ok or prediction.box is None:
            raise SystemExit(f"{sample.path}: {prediction.error or 'the bundle has no box head'}")
        truth = sample.boxes[0]
        found = np.array(prediction.box.to_list())
        top = [score.label for score in prediction.top_k]
        photos.append(
            {
                "photo": sample.path.name,
                "label": sample.label,
                "official_box": truth.tolist(),
                "predicted_box": [round(v, 1) for v in found.tolist()],
                "iou": float(box_math.iou(found[None], truth[None])[0, 0]),
                "top1": top[0] == sample.label,
                "top5": sample.label in top,
                "predicted": top[0],
            }
        )
    ious = [p["iou"] for p in photos]
    summary = json.loads((args.run / "summary.json").read_text())
    test = summary.get("test_metrics") or {}
    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": str(args.run),
        "bundle": str(bundle),
        "real_photos": {
            "count": len(photos),
            "mean_iou": statistics.fmean(ious),
            "median_iou": statistics.median(ious),
            "share_iou_50": sum(i >= 0.5 for i in ious) / len(ious),
            "share_iou_75": sum(i >= 0.75 for i in ious) / len(ious),
            "top1": sum(p["top1"] for p in photos) / len(photos),
            "top5": sum(p["top5"] for p in photos) / len(photos),
            "predict_seconds": seconds,
            "photos": photos,
        },
        "composite_test": {k: v for k, v in test.items() if k.startswith("test/")},
        "train_seconds": summary.get("seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for p in photos:
        print(f"{p['photo']}: IoU {p['iou']:.3f}  {'right' if p['top1'] else 'wrong'}: {p['predicted']}")
    real = result["real_photos"]
    print(
        f"real photos: mean IoU {real['mean_iou']:.3f}, median {real['median_iou']:.3f}, "
        f"IoU>=0.5 {real['share_iou_50']:.2f}, top-1 {real['top1']:.2f}, top-5 {real['top5']:.2f}"
    )
    print(f"composite test: {result['composite_test']}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
