"""Summarize every measured variant: python summarize.py (reads the run folders and *.load files)."""

import json
import re
from pathlib import Path

LOGS = Path(__file__).parent
RUNS = Path("/work/runs/stage-cache")
for log in sorted(LOGS.glob("*.log"), key=lambda p: p.stat().st_mtime):
    name = log.stem
    run = RUNS / name / name
    if not run.exists():
        run = RUNS / "shared" / name  # a variant that reused the shared feature-cache
    summary_path, evaluation_path = run / "summary.json", run / "evaluation-test" / "evaluation.json"
    if not summary_path.exists():
        print(f"{name}: not finished")
        continue
    summary = json.loads(summary_path.read_text())
    test = None
    if evaluation_path.exists():
        test = json.loads(evaluation_path.read_text())["result"]["top_k_accuracy"]["top1"]
    load_path = LOGS / f"{name}.load"
    trained = re.search(r"trained \S+T(\d\d:\d\d:\d\d)", log.read_text(errors="replace"))
    lines = [line.split() for line in load_path.read_text().splitlines() if line.strip()]
    # the load while training (the samples before the "trained" line), not while evaluating
    loads = [float(parts[1]) for parts in lines if trained is None or parts[0] <= trained.group(1)]
    config = (run / "config.yaml").read_text()
    cache = summary.get("feature_cache") or {}
    text = log.read_text(errors="replace")
    epoch_times = re.findall(r"Epoch (\d+)/\d+ .*? (\d+:\d\d:\d\d) •", text)
    print(
        json.dumps(
            {
                "name": name,
                "test_top1": None if test is None else round(test, 4),
                "val_top1": round(summary["best_score"], 4),
                "train_seconds": summary["seconds"],
                "cache_seconds": cache.get("seconds"),
                "epochs": summary["epochs_completed"],
                "load_mean": round(sum(loads) / max(1, len(loads)), 2),
                "load_range": [min(loads, default=None), max(loads, default=None)],
                "cache_hit": cache.get("hit"),
                "epoch_times": [t for _, t in epoch_times][-3:],
            }
        )
    )
