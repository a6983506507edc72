"""`carid train` and `carid sweep`: train one model from a recipe, or every combination of a grid.

The work happens in `carid.training.fit` and `carid.evaluation.sweep`, imported inside the commands
so that `carid --help` and the slim install never load torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carid.cli.app import SetOption, console, out_option, say
from carid.errors import CaridError


def train(
    config_path: Annotated[
        Path, typer.Argument(help="A training recipe, e.g. configs/car-models-5-transfer.yaml.")
    ],
    overrides: SetOption = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", "-d", help="Dataset folder or annotation file (sets data.path).", show_default=False
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run's last checkpoint after an interrupt.")
    ] = False,
) -> None:
    """Train a model from a config; writes a run folder (config, split, checkpoints, metrics, curves)."""
    # The config and the dataset path are checked before the training libraries load, so that a
    # misspelt key or a missing dataset is reported at once.
    from dataclasses import replace

    from carid.config import load_config, resolve_data_path

    config = load_config(config_path, overrides)
    if data is not None:
        config = replace(config, data=replace(config.data, path=str(data)))
    if not config.data.split_csv and not resume:
        resolve_data_path(config.data.path)  # raises ConfigError naming the dataset and how to get it

    from carid.training.fit import train as fit

    result = fit(config, resume=resume, default_name=config_path.stem, progress=True)
    say(f"run: {result.run_dir}")
    say(f"best checkpoint: {result.best_checkpoint}")
    for key, value in sorted(result.metrics.items()):
        say(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")


def sweep(
    sweep_file: Annotated[
        Path | None,
        typer.Argument(help="A sweep YAML: base, sweep: {key: [values]}, optional name / metric / set."),
    ] = None,
    base: Annotated[
        Path | None, typer.Option("--base", "-c", help="Base config (replaces the file's 'base').")
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid", "-g", help="key=v1,v2 to sweep (repeatable), e.g. --grid model.image_size=160,224."
        ),
    ] = None,
    overrides: SetOption = None,
    out: Annotated[Path | None, out_option("Sweep folder (default: runs/sweeps/NAME).")] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", "-m", help="What the comparison ranks by.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Prefix of the run names (default: the file's, else 'sweep').")
    ] = None,
    no_resume: Annotated[
        bool, typer.Option("--no-resume", help="Refuse to continue a sweep already in the folder.")
    ] = False,
) -> None:
    """Train every combination of a grid, one after another (resumable), then compare the runs."""
    from carid.evaluation.sweep import SweepSpec, load_sweep_file, parse_grid, run_sweep

    spec = load_sweep_file(sweep_file) if sweep_file is not None else SweepSpec(base=None, grid={})
    grid_values = {**spec.grid, **parse_grid(grid or [])}
    if not grid_values:
        raise CaridError(
            "nothing to sweep: give a sweep file or --grid KEY=V1,V2 (e.g. train.optimizer=adamw,sgd)"
        )
    prefix = name or spec.name
    result = run_sweep(
        base or spec.base,
        grid_values,
        out or Path("runs") / "sweeps" / prefix,
        resume=not no_resume,
        overrides=[*spec.overrides, *(overrides or [])],
        prefix=prefix,
        metric=metric or spec.metric,
        progress=True,
        say=say,
    )
    for variant in result.variants:
        detail = f" ({variant.error})" if variant.error else ""
        say(f"  {variant.status:8} {variant.name}{detail}")
    if result.comparison is not None:
        console.print(result.comparison.rich_table(width=console.width))
        say(f"comparison: {result.comparison.paths['html']}")
    say(f"sweep state: {result.state_path}")
    if result.failed:
        raise typer.Exit(1)
