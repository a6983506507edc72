"""Where a model lives: the layout of a training run folder (`RunDir`) and what kind of model a path
names (`locate`).

A run folder, as `carid train` writes it:

    RUN/config.yaml            the resolved config
    RUN/split.csv              the split the run trained on (train / val / test)
    RUN/metrics.csv            one row per logged step and epoch
    RUN/checkpoints/best.ckpt  the best epoch (last.ckpt: the latest)
    RUN/export/                the bundle `carid export RUN` writes (model.json + model.onnx)

`locate(path)` turns what a user typed into a `ModelLocation`: a checkpoint (a .ckpt, or a run
folder's best.ckpt, else its last.ckpt), a bundle folder (or its model.json / model.onnx), an
ensemble folder (or its ensemble.json) or a pipeline folder (or its pipeline.json: a detector and an
identifier, `carid.artifacts.pipeline`). Every command that takes a model asks it, so that a run
folder, a checkpoint, a bundle and an ensemble mean the same thing everywhere. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from carid.artifacts.bundle import ENSEMBLE_FILE, METADATA_FILE, MODEL_FILE, Bundle
from carid.artifacts.pipeline import PIPELINE_FILE, is_pipeline_dir
from carid.config import read_yaml
from carid.errors import CaridError

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = Path(CHECKPOINT_DIR) / "best.ckpt"
LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / "last.ckpt"
EXPORT_DIR = "export"  # `carid export RUN` writes RUN/export

ModelKind = Literal["checkpoint", "bundle", "ensemble", "pipeline"]


class ModelPathError(CaridError, ValueError):
    """A path that names no model; the message names the path and what was expected."""


def is_run_dir(path: Path | str) -> bool:
    """A training run folder: config.yaml beside a checkpoints/ folder or a metrics.csv."""
    path = Path(path)
    return (
        path.is_dir()
        and (path / CONFIG_FILE).is_file()
        and ((path / CHECKPOINT_DIR).is_dir() or (path / METRICS_FILE).is_file())
    )


def is_bundle_dir(path: Path | str) -> bool:
    """An exported model bundle: a folder with model.json (and the model.onnx it names)."""
    path = Path(path)
    return path.is_dir() and (path / METADATA_FILE).is_file()


def is_ensemble_dir(path: Path | str) -> bool:
    """An ensemble of bundles: a folder with ensemble.json (`carid.artifacts.ensemble`)."""
    path = Path(path)
    return path.is_dir() and (path / ENSEMBLE_FILE).is_file()


@dataclass(frozen=True)
class RunDir:
    """A training run folder and the files in it (see the module docstring)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def split(self) -> Path:
        return self.path / SPLIT_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def best_checkpoint(self) -> Path:
        return self.path / BEST_CHECKPOINT

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST_CHECKPOINT

    @property
    def export(self) -> Path:
        return self.path / EXPORT_DIR

    def has_export(self) -> bool:
        return is_bundle_dir(self.export)

    def split_or_none(self) -> Path | None:
        """split.csv when the run still has it."""
        return self.split if self.split.is_file() else None

    @classmethod
    def of_checkpoint(cls, checkpoint: Path | str) -> RunDir | None:
        """The run a checkpoint belongs to (RUN/checkpoints/*.ckpt), when it is still there."""
        parent = Path(checkpoint).resolve().parent
        if parent.name == CHECKPOINT_DIR and is_run_dir(parent.parent):
            return cls(parent.parent)
        return None

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> RunDir | None:
        """The run a bundle was exported from, when it is still there: the bundle is RUN/export, or
        its source checkpoint is RUN/checkpoints/*.ckpt."""
        if bundle.path.name == EXPORT_DIR and is_run_dir(bundle.path.parent):
            return cls(bundle.path.parent.resolve())
        checkpoint = bundle.metadata.source_checkpoint
        return cls.of_checkpoint(checkpoint) if checkpoint else None


def run_task(path: Path | str) -> str:
    """The `task` a run folder's config.yaml names: "classify" (also when it names none or cannot be
    read: the commands then say what is wrong with the run) or "detect"."""
    try:
        tree = read_yaml(Path(path) / CONFIG_FILE)
    except (ValueError, OSError):  # ConfigError is a ValueError
        return "classify"
    task = tree.get("task") if isinstance(tree, dict) else None
    return task if isinstance(task, str) and task else "classify"


def run_split_csv(run_dirs: Sequence[Path | None]) -> Path | None:
    """The split.csv of the first run folder that still has one (None when none has)."""
    for run_dir in run_dirs:
        if run_dir is not None and (Path(run_dir) / SPLIT_FILE).is_file():
            return Path(run_dir) / SPLIT_FILE
    return None


@dataclass(frozen=True)
class ModelLocation:
    """A model path resolved: its kind, the file or folder to load, and the run folder it belongs to
    (None for a bundle, an ensemble or a checkpoint outside a run)."""

    kind: ModelKind
    path: Path
    run_dir: Path | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
            "note": self.note,
        }


def locate(path: Path | str, prefer: Literal["checkpoint", "bundle"] = "checkpoint") -> ModelLocation:
    """What kind of model `path` names (see the module docstring).

    prefer: for a run folder, "checkpoint" gives its best.ckpt (else last.ckpt, with a note);
    "bundle" gives its export (RUN/export, run_dir set) when there is one, else the checkpoint.
    Raises ModelPathError naming the path and what was expected.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelPathError(f"{path}: no such file or folder (expected a run folder, a .ckpt or a bundle)")
    if path.is_file() and path.name in (ENSEMBLE_FILE, METADATA_FILE, MODEL_FILE):
        if path.name == ENSEMBLE_FILE and is_ensemble_dir(path.parent):
            return ModelLocation("ensemble", path.parent.resolve(), None)
        if path.name != ENSEMBLE_FILE and is_bundle_dir(path.parent):
            return ModelLocation("bundle", path.parent.resolve(), None)
    if path.is_file() and path.name == PIPELINE_FILE and is_pipeline_dir(path.parent):
        return ModelLocation("pipeline", path.parent.resolve(), None)
    if is_pipeline_dir(path):
        return ModelLocation("pipeline", path.resolve(), None)
    if is_ensemble_dir(path):
        return ModelLocation("ensemble", path.resolve(), None)
    if is_bundle_dir(path):
        return ModelLocation("bundle", path.resolve(), None)
    if path.is_dir():
        run = RunDir(path.resolve())
        if prefer == "bundle" and run.has_export():
            return ModelLocation("bundle", run.export, run.path)
        if run.best_checkpoint.is_file():
            return ModelLocation("checkpoint", run.best_checkpoint, run.path)
        if run.last_checkpoint.is_file():
            return ModelLocation(
                "checkpoint",
                run.last_checkpoint,
                run.path,
                note=f"{path} has no {BEST_CHECKPOINT}; evaluating {LAST_CHECKPOINT} (the latest epoch)",
            )
        raise ModelPathError(
            f"{path}: not a run folder (no {BEST_CHECKPOINT}) and not a model bundle (no {METADATA_FILE})"
        )
    if path.suffix == ".ckpt":
        run = RunDir.of_checkpoint(path)
        return ModelLocation("checkpoint", path.resolve(), None if run is None else run.path)
    raise ModelPathError(
        f"{path}: not a model: expected a run folder, a checkpoint (.ckpt) or a bundle folder "
        f"(with {METADATA_FILE} + {MODEL_FILE})"
    )


def bundle_run_dir(bundle: Bundle) -> Path | None:
    """The folder of the run a bundle was exported from, when it is still there (`RunDir.of_bundle`)."""
    run = RunDir.of_bundle(bundle)
    return None if run is None else run.path
