"""Which hardware a training run uses: precision, the DDP strategy, and whether it is distributed.

`train.accelerator/devices/strategy` go to the Trainer as they are, except that DDP on CPU gets the
gloo backend (`DDPStrategy(process_group_backend="gloo")`) so that `strategy: ddp, accelerator: cpu,
devices: 2` works by config alone. precision "auto" is "bf16-mixed" (or "16-mixed") when CUDA is
used, else 32-bit.
"""

from __future__ import annotations

from typing import Any

import torch

from carid.config import Config


def uses_cuda(accelerator: str) -> bool:
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def resolve_precision(precision: str, accelerator: str) -> str:
    """ "auto" -> bf16-mixed / 16-mixed on CUDA, 32-true otherwise; anything else as given."""
    if precision != "auto":
        return precision
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_strategy(strategy: str, accelerator: str) -> Any:
    """The Trainer's strategy: DDP variants on CPU get the gloo backend; the rest pass through."""
    if not strategy.startswith("ddp") or uses_cuda(accelerator):
        return strategy
    from lightning.pytorch.strategies import DDPStrategy

    options: dict[str, Any] = {"process_group_backend": "gloo"}
    if "find_unused_parameters_true" in strategy:
        options["find_unused_parameters"] = True
    if strategy.startswith("ddp_spawn"):
        options["start_method"] = "spawn"
    elif strategy.startswith("ddp_fork") or strategy.startswith("ddp_notebook"):
        options["start_method"] = "fork"
    return DDPStrategy(**options)


def is_distributed(config: Config) -> bool:
    devices = config.train.devices
    many = (
        devices == -1
        or (isinstance(devices, int) and devices > 1)
        or (isinstance(devices, str) and devices not in ("1", "auto"))
        or config.train.num_nodes > 1
    )
    return config.train.strategy.startswith("ddp") or (many and config.train.strategy == "auto")
