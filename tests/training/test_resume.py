"""Kill a training process after its first checkpoint, resume it, and get the planned epochs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from carid.training.epoch_table import read_results
from carid.training.fit import train_from_cli
from carid.training.plots import epoch_metrics
from tests.training.conftest import tiny_config_tree

# Trains like `carid train CONFIG`, but sleeps at the start of every epoch after the first so the
# test has time to kill it mid-run.
SCRIPT = """
import sys, time
from pathlib import Path
import lightning as L
from carid.config import load_config
from carid.training.fit import train

class SlowEpochs(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= 1:
            time.sleep(float(sys.argv[2]))

config_path = Path(sys.argv[1])
train(load_config(config_path), default_name=config_path.stem, progress=False, callbacks=[SlowEpochs()])
"""

EPOCHS = 4


def _wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stderr.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_run_resumes_to_the_planned_epochs(boxed_dataset: Path, tmp_path: Path) -> None:
    tree = tiny_config_tree(
        boxed_dataset,
        tmp_path / "runs",
        train={
            "epochs": EPOCHS,
            "batch_size": 4,
            "num_workers": 0,
            "channels_last": False,
            "freeze": "stages.1",
            "unfreeze": [{"epoch": 2, "start": "none"}],
        },
    )
    config_path = tmp_path / "resumable.yaml"
    config_path.write_text(yaml.safe_dump(tree))
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    run_dir = (tmp_path / "runs" / "resumable").resolve()
    last = run_dir / "checkpoints" / "last.ckpt"

    process = subprocess.Popen(
        [sys.executable, str(script), str(config_path), "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        _wait_for(last, process, timeout=90)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    interrupted_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert interrupted_at < EPOCHS - 1, "the run finished before it could be interrupted"
    assert not (run_dir / "summary.json").exists()

    result = train_from_cli(config_path, resume=True)

    assert result.run_dir == run_dir
    records = epoch_metrics(run_dir / "metrics.csv")
    assert [int(record["epoch"]) for record in records] == list(range(EPOCHS))
    assert all("val/acc" in record and "val/loss" in record for record in records)
    assert all("train/loss" in record for record in records[interrupted_at + 1 :])
    # results.csv keeps one row per epoch across the kill: the finished epochs' rows, then the resumed ones
    results = read_results(run_dir / "results.csv")
    assert [int(row["epoch"]) for row in results] == list(range(1, EPOCHS + 1))
    times = [row["time"] for row in results]
    assert all("val/acc" in row for row in results) and times == sorted(times)
    steps = [record["step"] for record in records]
    assert steps == sorted(steps) and len(set(steps)) == EPOCHS
    # the unfreezing schedule is re-applied on resume: from stages.1 up to epoch 1, everything from 2
    resumed = [record for record in records if record["epoch"] > interrupted_at]
    trainable = {int(record["epoch"]): record["train/trainable_params"] for record in resumed}
    everything = max(trainable.values())
    assert all((count == everything) == (epoch >= 2) for epoch, count in trainable.items())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] is True and summary["epochs_completed"] == EPOCHS
    final = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert final["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == EPOCHS
