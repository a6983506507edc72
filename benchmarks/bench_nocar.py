"""The no-car filter of `carid data curate` on car-frames: how well does the ImageNet car score tell
frames with a car from frames without one?

car-frames: 384 roadside frames (676 x 380); 284 have at least one car box in boxes.csv, 100 none.
Every frame is scored once per grid (`carid.models.nocar.ImageNetCarScorer`, EfficientNet-Lite0 with
offline ImageNet weights): the whole frame, and the whole frame plus each grid's tiles (score = the
largest car probability over the views). "Flag as no car" when score < threshold; the positive
class is a frame without a car, so

    precision = flagged frames that really have no car / flagged frames
    recall    = flagged frames that really have no car / frames without a car (100)

over a threshold sweep, with ROC AUC (how well the score ranks the two kinds, any threshold) and the
threshold of best F1. Writes every frame's view scores and the tables as JSON; prints Markdown.

    nice -n 5 .venv/bin/python benchmarks/bench_nocar.py --grids 2x1 3x2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carid import __version__
from carid.config import CurateConfig
from carid.data.readers import read_dataset
from carid.models.nocar import ImageNetCarScorer, view_count

DEFAULT_DATA = Path("../shared/datasets/car-frames")
DEFAULT_LOG = Path(__file__).resolve().parent / "logs" / "nocar" / "nocar.json"
THRESHOLDS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def parse_grid(text: str) -> tuple[int, int]:
    columns, _, rows = text.lower().partition("x")
    return int(columns), int(rows)


def flag_figures(scores: np.ndarray, no_car: np.ndarray, threshold: float) -> dict[str, float | int]:
    """Precision / recall / F1 of flagging `scores < threshold` as "no car" (no_car: bool [N])."""
    flagged = scores < threshold
    hits = int(np.sum(flagged & no_car))
    precision = hits / int(flagged.sum()) if flagged.any() else float("nan")
    recall = hits / int(no_car.sum())
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {
        "threshold": threshold,
        "flagged": int(flagged.sum()),
        "true_no_car": hits,
        "cars_flagged": int(np.sum(flagged & ~no_car)),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def roc_auc(scores: np.ndarray, no_car: np.ndarray) -> float:
    """P(a frame without car scores lower than a frame with one), ties half (Mann-Whitney)."""
    empty, cars = scores[no_car], scores[~no_car]
    lower = (empty[:, None] < cars[None, :]).sum() + 0.5 * (empty[:, None] == cars[None, :]).sum()
    return float(lower / (len(empty) * len(cars)))


def best_f1(scores: np.ndarray, no_car: np.ndarray) -> dict[str, float | int]:
    """The threshold (a midpoint between sorted scores) with the best F1."""
    ordered = np.unique(scores)
    candidates = (ordered[:-1] + ordered[1:]) / 2
    figures = [flag_figures(scores, no_car, float(t)) for t in candidates]
    return max(figures, key=lambda entry: entry["f1"])


def evaluate(name: str, scores: np.ndarray, no_car: np.ndarray, default: float) -> dict[str, Any]:
    return {
        "scoring": name,
        "roc_auc": round(roc_auc(scores, no_car), 4),
        "sweep": [flag_figures(scores, no_car, t) for t in THRESHOLDS],
        "default": flag_figures(scores, no_car, default),
        "best_f1": best_f1(scores, no_car),
        "median_score_with_car": round(float(np.median(scores[~no_car])), 4),
        "median_score_without_car": round(float(np.median(scores[no_car])), 4),
    }


def _row(scoring: str, auc: str, threshold: str, entry: dict[str, Any]) -> str:
    return (
        f"| {scoring} | {auc} | {threshold} | {entry['flagged']} | {entry['true_no_car']} "
        f"| {entry['cars_flagged']} | {entry['precision']:.3f} | {entry['recall']:.3f} | {entry['f1']:.3f} |"
    )


def markdown(results: list[dict[str, Any]]) -> str:
    header = "| scoring | ROC AUC | threshold | flagged | no car | car | precision | recall | F1 |"
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for entry in result["sweep"]:
            auc = f"{result['roc_auc']:.3f}"
            lines.append(_row(result["scoring"], auc, f"{entry['threshold']:g}", entry))
        best = result["best_f1"]
        lines.append(_row(f"{result['scoring']} best F1", "", f"{best['threshold']:.4f}", best))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--grids", nargs="*", default=["2x1", "3x2"], help="Tile grids, e.g. 3x2.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="Score only the first N frames (0 = all).")
    parser.add_argument("--out", type=Path, default=DEFAULT_LOG)
    args = parser.parse_args(argv)

    table = read_dataset(args.data, "csv-boxes")
    samples = sorted(table.samples, key=lambda sample: str(sample.path))
    if args.limit:
        samples = samples[: args.limit]
    paths = [sample.path for sample in samples]
    no_car = np.array([not sample.has_box for sample in samples])
    counts = f"{int((~no_car).sum())} with a car box, {int(no_car.sum())} without"
    print(f"{len(paths)} frames: {counts}", file=sys.stderr)

    default = CurateConfig().no_car_threshold
    whole: np.ndarray | None = None
    views: dict[str, list[list[float]]] = {}
    results: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    for text in args.grids:
        grid = parse_grid(text)
        scorer = ImageNetCarScorer(grid=grid, batch_size=args.batch, threads=args.threads)
        started = time.perf_counter()
        scores = scorer(paths)
        timing[text] = round(time.perf_counter() - started, 2)
        views[text] = np.round(scorer.last_views, 5).tolist()
        if whole is None:
            whole = scorer.last_views[:, 0]
            results.append(evaluate("whole frame", whole, no_car, default))
        results.append(evaluate(f"whole + {text} tiles ({view_count(grid)} views)", scores, no_car, default))

    print(markdown(results))
    record = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "carid": __version__,
        "machine": platform.node(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "data": str(args.data),
        "frames": len(paths),
        "frames_without_car": int(no_car.sum()),
        "default_threshold": default,
        "seconds": timing,
        "threads": args.threads,
        "results": results,
        "frames_scored": [
            {
                "path": Path(path).name,
                "has_car": not empty,
                "views": {text: views[text][index] for text in views},
            }
            for index, (path, empty) in enumerate(zip(paths, no_car, strict=True))
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(f"JSON: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
