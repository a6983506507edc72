"""Run folder names: automatic numbering, resuming, and a named run that already exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from carid.config import ConfigError, apply_overrides
from carid.training.run_setup import resolve_run_dir


def test_run_names(tiny_config, tmp_path: Path) -> None:
    config = tiny_config()
    first = resolve_run_dir(config, resume=False, default_name="recipe")
    assert first == (tmp_path / "runs" / "recipe").resolve()
    (first / "checkpoints").mkdir(parents=True)
    (first / "checkpoints" / "last.ckpt").write_bytes(b"x")
    second = resolve_run_dir(config, resume=False, default_name="recipe")
    assert second.name == "recipe-2"
    (second / "checkpoints").mkdir(parents=True)
    assert resolve_run_dir(config, resume=True, default_name="recipe") == second
    assert resolve_run_dir(config, resume=False).name == "carid_vgg-class-32px"

    named = apply_overrides(config, ["name=recipe"])
    with pytest.raises(ConfigError, match="already holds a run"):
        resolve_run_dir(named, resume=False)
    assert resolve_run_dir(named, resume=True) == first
