#!/usr/bin/env bash
# The small-data study on car-models-5 (issues 3 and 4), one after another on one split (data.seed 42):
#   the from-scratch progression (base -> +augmentation -> +batch norm -> +dropout), the transfer model,
#   the two-resolution from-scratch pair (the body-75px / body-100px recipes on car-models-5's classes),
#   then `carid compare` over the progression and the ensemble benchmark over the pair.
# Run from the project root:  bash benchmarks/car_models_5.sh   (logs: benchmarks/logs/car-models-5/)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
LOGS=benchmarks/logs/car-models-5
DATA=../shared/datasets/car-models-5
mkdir -p "$LOGS"
stamp() { date -u +%H:%M:%S; }
for variant in scratch-base scratch-augment scratch-batchnorm scratch-dropout transfer; do
    echo "$(stamp) train cm5-$variant (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    start=$SECONDS
    $BIN/carid train "configs/car-models-5-$variant.yaml" --set "name=cm5-$variant" > "$LOGS/train-$variant.log" 2>&1
    echo "$(stamp) done cm5-$variant in $((SECONDS - start)) s"
done
for px in 75 100; do
    echo "$(stamp) train cm5-${px}px (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    start=$SECONDS
    $BIN/carid train "configs/body-${px}px.yaml" --set "name=cm5-${px}px" --set "data.path=$DATA" \
        --set data.label_level=class > "$LOGS/train-${px}px.log" 2>&1
    echo "$(stamp) done cm5-${px}px in $((SECONDS - start)) s"
    $BIN/carid export "runs/cm5-${px}px" > "$LOGS/export-${px}px.log" 2>&1
done
$BIN/carid compare runs/cm5-scratch-base runs/cm5-scratch-augment runs/cm5-scratch-batchnorm \
    runs/cm5-scratch-dropout runs/cm5-transfer --metric test/acc --out "$LOGS/compare" > "$LOGS/compare.log" 2>&1
$BIN/python benchmarks/bench_ensemble.py runs/cm5-75px runs/cm5-100px > "$LOGS/ensemble.log" 2>&1
cp benchmarks/logs/ensemble.json "$LOGS/ensemble.json"
for run in runs/cm5-*; do
    mkdir -p "$LOGS/runs/$(basename "$run")"
    cp "$run"/summary.json "$run"/metrics.csv "$run"/config.yaml "$LOGS/runs/$(basename "$run")/" 2>/dev/null || true
done
echo "$(stamp) all done"
