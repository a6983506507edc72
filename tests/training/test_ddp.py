"""DDP by config alone: two CPU processes (gloo) train one epoch and write one run directory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from carid.models.checkpoint import load_for_inference
from carid.training.plots import epoch_metrics
from tests.training.conftest import tiny_config_tree

# What `carid train CONFIG` runs; Lightning's DDP launcher re-runs this script for rank 1.
SCRIPT = """
import sys
from carid.training.fit import train_from_cli

train_from_cli(sys.argv[1])
"""


@pytest.mark.slow
def test_two_cpu_processes_train_one_epoch(boxed_dataset: Path, tmp_path: Path) -> None:
    tree = tiny_config_tree(
        boxed_dataset,
        tmp_path / "runs",
        train={"epochs": 1, "batch_size": 4, "strategy": "ddp", "accelerator": "cpu", "devices": 2},
    )
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(tree))
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")
    }
    completed = subprocess.run(
        [sys.executable, str(script), str(config_path)],
        capture_output=True,
        timeout=240,
        env={**env, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr.decode()[-4000:]

    runs = sorted((tmp_path / "runs").iterdir())
    assert [run.name for run in runs] == ["ddp"], "both ranks must share one run directory"
    run_dir = runs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 1
    records = epoch_metrics(run_dir / "metrics.csv")
    assert [int(record["epoch"]) for record in records] == [0]
    # each rank trained on half of the training images: DistributedSampler shares them out
    per_rank = math.ceil(summary["split_counts"]["train"] / 2)
    assert records[0]["step"] + 1 == per_rank // 4
    _, metadata = load_for_inference(run_dir / "checkpoints" / "best.ckpt")
    assert metadata.class_names == ("blue", "green", "red") and metadata.with_box
