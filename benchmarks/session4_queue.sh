#!/usr/bin/env bash
# Session 4 (2026-12-06): after the 100-epoch pets fine-tune at 192 px, the same recipe at 256 px
# (an 8x8 feature map for the box head instead of 6x6), 60 epochs (issue 3, pets IoU).
# Run from the project root:  nohup bash benchmarks/session4_queue.sh > benchmarks/logs/session4-queue.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
stamp() { date -u +%H:%M:%S; }
while pgrep -f "name=pets-finetune100" > /dev/null; do sleep 20; done
echo "$(stamp) pets-finetune256 (load: $(cut -d' ' -f1-3 /proc/loadavg))"
start=$SECONDS
$BIN/carid train configs/pets-localize.yaml --set name=pets-finetune256 --set model.image_size=256 \
    --set train.freeze=none --set train.epochs=60 --set train.lr=0.002 --set train.backbone_lr_scale=0.3 \
    --set train.box_weight=3.0 --set train.early_stopping_patience=30 --set train.num_workers=2 \
    > benchmarks/logs/pets/train-finetune256.log 2>&1
echo "$(stamp) pets-finetune256 done in $((SECONDS - start)) s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
