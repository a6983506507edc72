#!/usr/bin/env bash
# One after another (2 cores: parallel training runs slow each other 3-5x), logs under benchmarks/logs/:
#   1. the car-models-5 75/100 px from-scratch pair trained longer (100 epochs, batch 32) and the
#      ensemble benchmark over it (issue 4);
#   2. training throughput, full fine-tune vs frozen backbone from the cache (issue 3).
# Run from the project root:  nohup bash benchmarks/session3_queue.sh > benchmarks/logs/session3-queue.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
LOGS=benchmarks/logs/car-models-5
DATA=../shared/datasets/car-models-5
stamp() { date -u +%H:%M:%S; }
while pgrep -f "carid train configs/pets-localize.yaml" > /dev/null; do sleep 20; done
for px in 75 100; do
    echo "$(stamp) train cm5-${px}px-long (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    start=$SECONDS
    $BIN/carid train "configs/body-${px}px.yaml" --set "name=cm5-${px}px-long" --set "data.path=$DATA" \
        --set data.label_level=class --set train.epochs=100 --set train.batch_size=32 \
        > "$LOGS/train-${px}px-long.log" 2>&1
    echo "$(stamp) done cm5-${px}px-long in $((SECONDS - start)) s"
    $BIN/carid export "runs/cm5-${px}px-long" > "$LOGS/export-${px}px-long.log" 2>&1
done
$BIN/python benchmarks/bench_ensemble.py runs/cm5-75px-long runs/cm5-100px-long \
    --out "$LOGS/ensemble-long.json" > "$LOGS/ensemble-long.log" 2>&1
echo "$(stamp) ensemble done"
for run in runs/cm5-75px-long runs/cm5-100px-long; do
    mkdir -p "$LOGS/runs/$(basename "$run")"
    cp "$run"/summary.json "$run"/metrics.csv "$run"/config.yaml "$LOGS/runs/$(basename "$run")/"
done
echo "$(stamp) throughput (load: $(cut -d' ' -f1-3 /proc/loadavg))"
mkdir -p benchmarks/logs/throughput
$BIN/python benchmarks/bench_train_throughput.py --config configs/stanford-cars.yaml --images 800 --epochs 3 \
    --json benchmarks/logs/throughput/throughput.json > benchmarks/logs/throughput/throughput.log 2>&1
echo "$(stamp) all done (load: $(cut -d' ' -f1-3 /proc/loadavg))"
