"""Ensembles vs their members: fit each mode on the validation split, score everything on the test split.

Each member (an exported bundle, or a run folder with its RUN/export) is scored once per split on
ONNX Runtime; the "mean", "weighted" and "expert" ensembles are then combined from those scores in
NumPy (`carid.evaluation.ensemble`): weights fitted on the fit split (default "val"), then the
ensemble temperature fitted on the same split, then accuracy / top-5 / macro F1 / NLL / ECE / box
IoU of every member and every mode on the evaluated split (default "test"). Prints the table (and
the F1 of every class side by side) and writes the numbers to benchmarks/logs/ensemble.json.

    .venv/bin/python benchmarks/bench_ensemble.py runs/body-75px runs/body-100px

DATA defaults to the split.csv of the first member run (both body-type runs share one split: same
dataset, same data.seed). `--limit N` keeps the first N images of each split, for a quick check of
the script without loading a shared machine. `--write-ensembles DIR` also builds the three
ensemble folders (DIR/<mode>), for `carid predict` / `carid evaluate`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carid import __version__
from carid.artifacts.ensemble import MODES, class_columns
from carid.artifacts.run_dir import run_split_csv
from carid.evaluation.calibration import fit_temperature
from carid.evaluation.comparison import format_table, summarize
from carid.evaluation.ensemble import resolve_member, score_fit_data, unique_member_names
from carid.evaluation.ensemble_fit import fit_ensemble
from carid.evaluation.evaluation_data import load_run_config, read_evaluation_source
from carid.evaluation.metrics import calibration_stats
from carid.evaluation.sources import BundleScoreSource
from carid.runtime.calibration import apply_temperature
from carid.runtime.ensemble import combine_boxes, combine_probabilities, probabilities_to_logits

DEFAULT_LOG = Path(__file__).resolve().parent / "logs" / "ensemble.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", type=Path, help="bundle folders or run folders with an export")
    parser.add_argument(
        "--data", type=Path, default=None, help="split CSV or dataset (default: a run's split.csv)"
    )
    parser.add_argument("--format", default=None, help="dataset reader (default: detected)")
    parser.add_argument("--fit-on", default="val", help="split the weights and temperature are fitted on")
    parser.add_argument("--split", default="test", help="split the members and ensembles are scored on")
    parser.add_argument("--box-mode", default="mean", choices=("mean", "best"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="first N images of each split only (0 = all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_LOG, help="JSON log to write")
    parser.add_argument("--write-ensembles", type=Path, default=None, help="also build DIR/<mode> folders")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if len(args.members) < 2:
        print("give at least two members", file=sys.stderr)
        return 2
    started = time.perf_counter()
    sources = [resolve_member(path) for path in args.members]
    names = unique_member_names([source.name for source in sources])
    reference = sources[0].bundle.metadata
    classes = reference.class_names
    columns = [
        class_columns(classes, source.bundle.metadata.class_names, f"member {name}")
        for source, name in zip(sources, names, strict=True)
    ]
    with_box = [source.bundle.metadata.with_box for source in sources]
    run_dirs = [source.run_dir for source in sources]
    data = args.data or run_split_csv(run_dirs)
    if data is None:
        print("no --data and no member run with a split.csv", file=sys.stderr)
        return 2
    run_dir = next((run for run in run_dirs if run is not None), None)
    source_data = read_evaluation_source(
        data, run_dir=run_dir, run_config=load_run_config(run_dir), data_format=args.format
    )
    fit_samples = list(source_data.select(args.fit_on).samples)
    test_samples = list(source_data.select(args.split).samples)
    if args.limit:
        fit_samples, test_samples = fit_samples[: args.limit], test_samples[: args.limit]
    member_sources = [BundleScoreSource(s.bundle.path, batch_size=args.batch_size) for s in sources]

    tick = time.perf_counter()
    fit = score_fit_data(member_sources, columns, fit_samples, classes, reference.label_level)
    fit_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    test = score_fit_data(member_sources, columns, test_samples, classes, reference.label_level)
    test_seconds = time.perf_counter() - tick

    rows = [
        summarize(
            name,
            f"member {source.bundle.metadata.preprocess_spec().image_size[0]} px",
            test.probabilities[index],
            test.labels,
            classes,
            test.boxes[index],
            test.true_boxes,
            test.has_box,
        )
        for index, (name, source) in enumerate(zip(names, sources, strict=True))
    ]
    modes: dict[str, Any] = {}
    keep = fit.labels >= 0
    for mode in MODES:
        fitted = fit_ensemble(mode, fit.probabilities, fit.labels, with_box, args.box_mode, fit.member_iou())
        val_logits = probabilities_to_logits(combine_probabilities(fit.probabilities, fitted.weights))
        temperature = fit_temperature(val_logits[keep], fit.labels[keep])
        val_after = calibration_stats(apply_temperature(val_logits[keep], temperature), fit.labels[keep])
        test_probabilities = apply_temperature(
            probabilities_to_logits(combine_probabilities(test.probabilities, fitted.weights)), temperature
        )
        rows.append(
            summarize(
                f"ensemble-{mode}",
                f"ensemble ({mode})",
                test_probabilities,
                test.labels,
                classes,
                combine_boxes(list(test.boxes), fitted.box_weights),
                test.true_boxes,
                test.has_box,
            )
        )
        modes[mode] = {
            **fitted.to_dict(),
            "temperature": temperature,
            "val_nll_before_temperature": calibration_stats(
                apply_temperature(val_logits[keep], 1.0), fit.labels[keep]
            ).nll,
            "val_nll": val_after.nll,
            "val_ece": val_after.ece,
        }

    print(f"fit on {args.fit_on!r}: {len(fit.samples)} images; scored on {args.split!r}: {len(test.samples)}")
    print(format_table(rows, per_class=True))
    for mode, record in modes.items():
        weights = np.asarray(record["weights"])
        shown = (
            np.array2string(weights, precision=3) if weights.ndim == 1 else f"[{len(names)}, {len(classes)}]"
        )
        print(f"{mode}: weights {shown}, temperature {record['temperature']:.3f}")
    total = time.perf_counter() - started
    print(
        f"scoring: {fit_seconds:.1f} s ({args.fit_on}) + {test_seconds:.1f} s ({args.split}); "
        f"total {total:.1f} s"
    )

    log = {
        "command": " ".join(shlex.quote(part) for part in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "carid_version": __version__,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "members": [
            {
                "name": name,
                "bundle": str(source.bundle.path),
                "run_dir": None if source.run_dir is None else str(source.run_dir),
                "image_size": list(source.bundle.metadata.preprocess_spec().image_size),
                "resize_mode": source.bundle.metadata.preprocess_spec().resize_mode,
                "temperature": source.bundle.metadata.temperature,
            }
            for name, source in zip(names, sources, strict=True)
        ],
        "data": str(data),
        "fit_on": args.fit_on,
        "split": args.split,
        "num_fit": len(fit.samples),
        "num_fit_labeled": int(keep.sum()),
        "num_test": len(test.samples),
        "num_test_labeled": int((test.labels >= 0).sum()),
        "limit": args.limit or None,
        "modes": modes,
        "results": [row.to_dict() for row in rows],
        "seconds": {"score_fit": fit_seconds, "score_test": test_seconds, "total": total},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    print(f"log: {args.out}")

    if args.write_ensembles is not None:
        from carid.evaluation.ensemble import build_ensemble

        for mode in MODES:
            built = build_ensemble(
                args.members,
                args.write_ensembles / mode,
                mode=mode,
                data=data,
                fit_on=args.fit_on,
                data_format=args.format,
                box_mode=args.box_mode,
                overwrite=True,
            )
            print(f"ensemble: {built.ensemble.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
