"""The collector's progress bar: URLs done, collected and failed counts, elapsed time and ETA."""

from __future__ import annotations

from typing import Any

from carid.data.collect.manifest import ManifestRecord


class ProgressBar:
    """A rich progress bar (URLs done, collected/failed counts, elapsed, ETA), or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.collected = 0
        self.failed = 0
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]collect"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[green]{task.fields[collected]} ok[/] [red]{task.fields[failed]} failed[/]"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("collect", total=self.total, collected=0, failed=0)
        return self

    def advance(self, record: ManifestRecord) -> None:
        if record.succeeded:
            self.collected += 1
        else:
            self.failed += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, collected=self.collected, failed=self.failed)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()
