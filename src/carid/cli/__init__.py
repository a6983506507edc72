"""The `carid` command: a thin typer layer over the library.

Every command parses options, calls one library function and prints its result; defaults live in
`carid.config`, never here. Heavy imports (torch, scipy, matplotlib) happen inside the commands so
that `carid --help` is instant and the slim (ONNX Runtime only) install can run `predict`/`serve`.
Errors the user can fix (`carid.errors.CaridError`) print one clear line and exit 2 (`carid.cli.app`).

The verbs live in one module per group (`data`, `train`, `bundles`, `predict`, `evaluate`, `run`);
this module registers the top-level ones in the order `carid --help` lists them (the `data` verbs
register themselves on `data_app`, in file order) and holds `main`, the entry point.
"""

from __future__ import annotations

import sys

from carid.cli import bundles, data, evaluate, predict, run, settings, train  # noqa: F401 (data: registers its verbs)
from carid.cli.app import app, err_console

for _name, _command in (
    ("train", train.train),
    ("export", bundles.export),
    ("enroll", predict.enroll),
    ("predict", predict.predict),
    ("serve", predict.serve),
    ("evaluate", evaluate.evaluate),
    ("compare", evaluate.compare),
    ("sweep", train.sweep),
    ("ensemble", bundles.ensemble),
    ("pipeline", bundles.pipeline),
    ("calibrate", bundles.calibrate),
    ("explain", evaluate.explain),
    ("run", run.run),
):
    app.command(_name)(_command)
app.add_typer(settings.config_app, name="config")


def main() -> None:
    """The `carid` console script: run the app; Ctrl-C prints "interrupted" and exits 130."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]
