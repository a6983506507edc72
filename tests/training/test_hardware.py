"""Hardware settings: precision and the DDP strategy on CPU."""

from __future__ import annotations

import pytest
import torch

from carid.training.hardware import resolve_precision, resolve_strategy


def test_hardware_settings_on_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallbacks")
    assert resolve_precision("auto", "auto") == "32-true"
    assert resolve_precision("16-mixed", "auto") == "16-mixed"
    strategy = resolve_strategy("ddp", "cpu")
    assert type(strategy).__name__ == "DDPStrategy"
    assert strategy._process_group_backend == "gloo"
    assert resolve_strategy("auto", "cpu") == "auto"
