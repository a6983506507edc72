"""The learning-rate finder of a run (`train.lr_find`): Lightning's `Tuner.lr_find`, recorded in
the run folder as lr_find.json (and lr_find.png) and reused on resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L

from carid.config import Config
from carid.files import write_atomic, write_json
from carid.reporting import figure_png
from carid.training.hardware import is_distributed
from carid.training.module import CarModule

log = logging.getLogger(__name__)


def find_lr(
    trainer: L.Trainer,
    module: CarModule,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    resuming: bool,
    write: bool,
    config: Config,
) -> dict[str, Any] | None:
    """Run Lightning's learning-rate finder, record it in the run dir and use its suggestion.

    On resume the recorded suggestion is reused (the optimizer state holds it anyway).
    """
    record_path = run_dir / "lr_find.json"
    if resuming and record_path.exists():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("suggestion"):
            module.lr = float(record["suggestion"])
        return record
    if is_distributed(config):
        log.warning(
            "train.lr_find is skipped with DDP (each rank would find its own rate); run it on one device"
        )
        return None
    from lightning.pytorch.tuner import Tuner

    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False)
    if finder is None:
        return None
    suggestion = finder.suggestion()
    record = {
        "suggestion": suggestion,
        "configured_lr": config.train.lr,
        "lr": [float(v) for v in finder.results.get("lr", [])],
        "loss": [float(v) for v in finder.results.get("loss", [])],
    }
    if suggestion is not None:
        module.lr = float(suggestion)
    else:
        log.warning("the learning-rate finder gave no suggestion; keeping train.lr = %s", config.train.lr)
    if write:
        write_json(record_path, record)
        try:
            import matplotlib

            matplotlib.use("Agg")
            figure = finder.plot(suggest=suggestion is not None)
            write_atomic(run_dir / "lr_find.png", figure_png(figure))
            import matplotlib.pyplot as plt

            plt.close(figure)
        except Exception as exc:  # the plot is a convenience; the JSON is the record
            log.warning("could not draw the learning-rate finder plot: %s", exc)
    return record
