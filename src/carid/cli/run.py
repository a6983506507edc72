"""`carid run`: the main job end to end (check, train, evaluate, export, predict) via `carid.pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carid.cli.app import FormatOption, OutOption, SetOption, console, overrides_with, say, shown


def run(
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Dataset (default: the shared one).")
    ] = None,
    fmt: FormatOption = None,
    out: OutOption = None,
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Training recipe (default: the packaged quickstart, a short CPU run)."
        ),
    ] = None,
    overrides: SetOption = None,
) -> None:
    """The main job, end to end: check → train (short CPU schedule) → evaluate → export → predict."""
    from carid.config import resolve_data_path
    from carid.pipeline import quickstart_config, run_main_job

    config = quickstart_config(config_path, overrides_with(overrides, {"data.format": fmt or None}))
    data_path = resolve_data_path(data if data is not None else config.data.path)
    out_dir = out or Path("outputs") / "run" / data_path.resolve().name
    console.rule(f"carid run: {shown(data_path)}")
    result = run_main_job(data_path, out_dir, config, say=say)  # lines quote labels and paths: no markup
    console.rule("done")
    for name, path in result.paths.items():
        say(f"{name}: {path}")
    timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.seconds.items())
    say(f"time: {timing}")
