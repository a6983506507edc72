"""What a training run prints: terminal or plain lines, the model's one-line summary, the progress of
long passes, and Lightning's notices that are left out.

A run's output is read in two places: a terminal (Rich: live bars, a styled table) and a file, a
pipe or a CI log (`nohup carid train ... > train.log`), where a live bar prints nothing until it
ends and a wrapped line splits paths. `is_terminal` decides which; everything else here prints one
plain, flushed line per event when it is not a terminal.

`quiet_lightning` drops Lightning's advertising tips (litlogger, litmodels) and notices that say
nothing about a carid run ("TPU available: False", "Loading `train_dataloader` to estimate ...") with
a `logging.Filter` on Lightning's rank-zero logger, so its other messages (GPU use, "`Trainer.fit`
stopped") still show. `model_line` replaces Lightning's model summary table, whose "FLOPs" column
and "Total FLOPs: 0" line are only measured on a GPU-less run as zeros.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from torch import nn

T = TypeVar("T")

RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
# starts of Lightning's rank-zero messages that say nothing about a carid run
DROPPED_NOTICES = ("💡 Tip:", "TPU available:", "HPU available:", "Loading `train_dataloader` to estimate")
# a plain progress line at most every this many seconds (and at every 10 % of the way)
PLAIN_PROGRESS_SECONDS = 30.0


def is_terminal() -> bool:
    """True when standard output is an interactive terminal (as Rich decides, so FORCE_COLOR and
    TTY_INTERACTIVE are honoured), False for a file, a pipe or a CI log."""
    from rich.console import Console

    return Console().is_terminal


def say(line: str) -> None:
    """Print one line to standard output at once (flushed: a `nohup` log shows it immediately)."""
    print(line, flush=True)


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(DROPPED_NOTICES)


def quiet_lightning() -> None:
    """Drop Lightning's tips and idle-hardware notices (idempotent)."""
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(existing, _DropNotices) for existing in logger.filters):
        logger.addFilter(_DropNotices())


def model_line(module: nn.Module) -> str:
    """ "model: CarNet, 3,328,677 parameters (1,234,567 trainable), 13.3 MB": the network the run
    trains (`module.network` when the LightningModule wraps one)."""
    network = getattr(module, "network", module)
    parameters = list(network.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    megabytes = sum(p.numel() * p.element_size() for p in parameters) / 1e6
    return (
        f"model: {type(network).__name__}, {total:,} parameters ({trainable:,} trainable), {megabytes:.1f} MB"
    )


def duration(seconds: float) -> str:
    """ "4.2s" under a minute, "3:07" under an hour, "1:02:07" beyond."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def tracked(items: Iterable[T], total: int, description: str, terminal: bool | None = None) -> Iterator[T]:
    """Iterate `items` showing progress: a transient Rich bar on a terminal; otherwise a plain line
    at every 10 % of `total` (and at most every 30 s in between), then one when done, each with the
    elapsed time and the time left."""
    if terminal if terminal is not None else is_terminal():
        from rich.progress import track

        yield from track(items, description=description, total=total, transient=True)
        return
    started = last = time.perf_counter()
    step = max(1, total // 10)
    done = 0
    say(f"{description}: {total} batch{'' if total == 1 else 'es'}")
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if done == total or done % step == 0 or now - last >= PLAIN_PROGRESS_SECONDS:
            last = now
            elapsed = now - started
            left = elapsed / done * max(0, total - done)
            share = done / total if total else 1.0
            say(
                f"{description}: {done}/{total} ({share:.0%}), {duration(elapsed)} elapsed, "
                f"{duration(left)} left"
            )
    if done != total:
        say(f"{description}: {done} batches, {duration(time.perf_counter() - started)}")
