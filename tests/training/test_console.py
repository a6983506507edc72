"""What a training run prints: plain progress lines off a terminal, the model line, Lightning's notices."""

from __future__ import annotations

import logging

import pytest
from torch import nn

from carid.training.console import RANK_ZERO_LOGGER, duration, model_line, quiet_lightning, tracked


def test_progress_off_a_terminal_is_plain_lines_every_tenth_of_the_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert list(tracked(range(20), total=20, description="train features", terminal=False)) == list(range(20))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "train features: 20 batches"
    assert [line.split(" ")[2] for line in lines[1:]] == [f"{n}/20" for n in range(2, 21, 2)]
    assert lines[-1].startswith("train features: 20/20 (100%), ") and lines[-1].endswith(" left")
    assert "━" not in "".join(lines)


def test_durations_read_like_a_clock() -> None:
    assert [duration(s) for s in (4.24, 65.0, 3725.0)] == ["4.2s", "1:05", "1:02:05"]


def test_the_model_line_counts_parameters_and_trainable_ones() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 2))
            self.network[0].requires_grad_(False)

    assert model_line(Wrapper()) == "model: Sequential, 67 parameters (12 trainable), 0.0 MB"


def test_lightning_tips_are_dropped_and_its_other_notices_kept(caplog: pytest.LogCaptureFixture) -> None:
    quiet_lightning()
    quiet_lightning()  # idempotent: one filter
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    assert len(logger.filters) == len({type(f) for f in logger.filters})
    propagate, logger.propagate = logger.propagate, True
    try:
        with caplog.at_level(logging.INFO, logger=RANK_ZERO_LOGGER):
            logger.info("💡 Tip: For seamless cloud logging, try installing litlogger")
            logger.info("TPU available: False, using: 0 TPU cores")
            logger.info("GPU available: False, used: False")
    finally:
        logger.propagate = propagate
    assert [record.getMessage() for record in caplog.records] == ["GPU available: False, used: False"]
