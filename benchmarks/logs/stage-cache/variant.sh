#!/usr/bin/env bash
# One measured variant of the main job's training (issue 22): `carid train` on the quickstart recipe
# plus --set overrides, on the shared split made once by
#   carid data split --out /work/runs/stage-cache/split.csv
# (the split `carid run` makes: val 0.15, test 0.15, seed 42), without the test pass (as `carid run`
# trains), then `carid evaluate RUN --split test` (as `carid run` evaluates). Load average sampled
# every 20 s. Usage: bash variant.sh NAME [--set key=value ...]; run from anywhere. SPLIT=path
# trains on another split.csv (e.g. the one a `carid run --out DIR` made, DIR/data/split.csv, with
# RUN_DIR=DIR/runs to hit that run's stage cache); LOGS=dir writes the logs there.
set -euo pipefail
cd /work/main
name=$1
shift
logs=${LOGS:-/work/main/benchmarks/logs/stage-cache}
split=${SPLIT:-/work/runs/stage-cache/split.csv}
mkdir -p "$logs"
runs=${RUN_DIR:-/work/runs/stage-cache/$name}  # RUN_DIR=.../shared: variants share one feature-cache (cache hits)
(while true; do echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 20; done) > "$logs/$name.load" &
sampler=$!
trap 'kill $sampler' EXIT
echo "start $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
.venv/bin/carid train src/carid/recipes/quickstart.yaml --set name="$name" --set run_dir="$runs" \
  --set data.split_csv="$split" --set train.test_after_fit=false "$@"
echo "trained $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
.venv/bin/carid evaluate "$runs/$name" --split test --out "$runs/$name/evaluation-test"
echo "end $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
.venv/bin/python - "$runs/$name" "$logs/$name.load" "$*" <<'PY'
import json, sys
from pathlib import Path
run, load_file, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
summary = json.loads((run / "summary.json").read_text())
evaluation = json.loads((run / "evaluation-test" / "evaluation.json").read_text())
loads = [float(line.split()[1]) for line in load_file.read_text().splitlines() if line.strip()]
result = {
    "name": run.name,
    "overrides": overrides,
    "test_top1": evaluation["result"]["top_k_accuracy"]["top1"],
    "val_top1_best": summary["best_score"],
    "train_seconds": summary["seconds"],
    "epochs": summary["epochs_completed"],
    "feature_cache": summary["feature_cache"],
    "load_1min_mean": round(sum(loads) / max(1, len(loads)), 2),
    "load_1min_max": max(loads, default=None),
}
print("RESULT " + json.dumps(result))
PY
