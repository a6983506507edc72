"""Setting up the folder of a training run: its name, its checkpoint file names, and how DDP workers
find it. (The layout a finished run folder is read by is `carid.artifacts.run_dir`.)

`{config.run_dir}/{name}/` is named `config.name`, else the name given by the caller (the CLI passes
the config file's stem), else "{backbone}-{label level}-{size}px" (a detector:
"{backbone}-{architecture}-{width}x{height}"); an automatic name gets "-2", "-3", ... when a run of
that name exists. Resuming continues the run of that name (the newest
numbered one for automatic names). Lightning's DDP launcher re-runs the command for the other ranks;
those find the run directory through the `CARID_TRAIN_RUN_DIR` environment variable (`RUN_DIR_ENV`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from carid.artifacts.run_dir import BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT
from carid.config import Config, ConfigError

RUN_DIR_ENV = "CARID_TRAIN_RUN_DIR"
BEST = BEST_CHECKPOINT.stem  # Lightning names checkpoint files by stem
LAST = LAST_CHECKPOINT.stem


def default_run_name(config: Config) -> str:
    if config.task == "detect":
        width, height = config.detect.image_size
        return f"{config.detect.backbone}-{config.detect.architecture}-{width}x{height}"
    return f"{config.model.backbone}-{config.data.label_level}-{config.model.image_size}px"


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    if not cleaned:
        raise ConfigError(f"name: {name!r} is not usable as a folder name")
    return cleaned


def _holds_run(folder: Path) -> bool:
    return (folder / CHECKPOINT_DIR).is_dir() and any((folder / CHECKPOINT_DIR).glob("*.ckpt"))


def resolve_run_dir(config: Config, resume: bool, default_name: str | None = None) -> Path:
    """The run directory (absolute; not created here). See the module docstring for the naming rules."""
    root = Path(config.run_dir).expanduser().resolve()
    if config.name:
        folder = root / _safe_name(config.name)
        if not resume and _holds_run(folder):
            raise ConfigError(
                f"{folder} already holds a run; pass --resume to continue it "
                "or choose another name (--set name=...)"
            )
        return folder
    base = _safe_name(default_name or default_run_name(config))
    numbered = re.compile(re.escape(base) + r"(?:-(\d+))?")
    existing: list[tuple[int, Path]] = []
    if root.is_dir():
        for folder in root.iterdir():
            match = numbered.fullmatch(folder.name)
            if match and folder.is_dir():
                existing.append((int(match.group(1) or 1), folder))
    if resume and existing:
        return max(existing)[1]
    number = 1
    while True:
        folder = root / (base if number == 1 else f"{base}-{number}")
        if not _holds_run(folder) and not (folder / "summary.json").exists():
            return folder
        number += 1


def is_ddp_worker() -> bool:
    """True in the processes Lightning's DDP launcher starts for ranks other than 0."""
    ranks = (os.environ.get("LOCAL_RANK", "0"), os.environ.get("NODE_RANK", "0"))
    return bool(os.environ.get(RUN_DIR_ENV)) and any(rank not in ("", "0") for rank in ranks)
