"""The typer apps of the `carid` command and what every verb module shares.

Holds the root app and the `data` group, the two consoles, the option types more than one verb
group uses (`out_option` gives `--out` the help text of each command), the one error handler (a
`CaridError` raised by any command prints "error: MESSAGE", then "hint: HINT" when there is one, and
exits 2), `say` (print a line as it is), `shown` (a name or message from outside, made safe to
put in a rich markup string) and `given` / `overrides_with`, which keep only the options the user
gave. The commands themselves live in the verb modules next to this one and are
registered, in help order, by `carid.cli`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from carid import __version__
from carid.data.text import console_text, terminal_text
from carid.errors import CaridError

console = Console()
err_console = Console(stderr=True)


def shown(text: object) -> str:
    """A name, label, path or message from outside as text inside rich markup: markup escaped,
    control characters (ESC, newline, ...) and a file name's non-UTF-8 bytes shown as \\x1b, \\n,
    \\xff (`carid.data.text.console_text`)."""
    return console_text(text)


def print_error(message: str, hint: str | None = None) -> None:
    """Print "error: MESSAGE" (and "hint: HINT" on its own line) to stderr, markup-safe; newlines
    are kept, other control characters shown escaped."""
    err_console.print(f"[bold red]error:[/] {console_text(message, True)}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[bold]hint:[/] {console_text(hint, True)}", highlight=False, soft_wrap=True)


class CaridGroup(TyperGroup):
    """The root command group: the one place a `CaridError` from any command becomes exit code 2.

    Pillow's warnings about odd files ("Tag data larger than file", "truncated EXIF", ...) are not
    shown: a damaged file is reported in its row or problem, and one hostile TIFF can raise
    thousands of them."""

    def invoke(self, ctx: click.Context) -> Any:
        warnings.filterwarnings("ignore", module="PIL")
        try:
            return super().invoke(ctx)
        except CaridError as exc:
            print_error(str(exc), exc.hint)
            raise typer.Exit(2) from None


app = typer.Typer(
    name="carid",
    help="Identify cars in photos: check data, train, evaluate, export, predict and serve.",
    cls=CaridGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Read, check, split and explore datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        console.print(f"carid {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """carid: identify cars in photos."""


FormatOption = Annotated[
    str | None,
    typer.Option("--format", "-f", help="Force a dataset format (see `carid data formats`)."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set check.min_side=64 (repeatable)."),
]
TargetPrecisionOption = Annotated[
    float | None,
    typer.Option("--target-precision", help="Precision the 'unknown' threshold must reach (default 0.95)."),
]
MinCoverageOption = Annotated[
    float | None,
    typer.Option(
        "--min-coverage",
        min=0.0,
        max=1.0,
        help="Share of photos the 'unknown' threshold must keep answering when the precision target "
        "would answer fewer (default 0: precision only).",
    ),
]
TtaOption = Annotated[
    str | None,
    typer.Option(
        "--tta",
        help="Test-time augmentation: none, or hflip (also score the mirror image and average; "
        "twice the inference time).",
    ),
]


def out_option(help: str, **settings: Any) -> Any:
    """The `--out` / `-o` option, with the help text of the command that takes it."""
    return typer.Option("--out", "-o", help=help, **settings)


OutOption = Annotated[Path | None, out_option("Output folder.")]


def say(line: str) -> None:
    """Print one line as it is: no rich markup, no highlighting (paths and labels may hold brackets);
    control characters other than newlines shown escaped (labels may hold ESC)."""
    console.print(terminal_text(line, multiline=True), markup=False, highlight=False, soft_wrap=True)


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave, as keyword arguments: those left at None (not given) are dropped."""
    return {key: value for key, value in options.items() if value is not None}


def overrides_with(overrides: list[str] | None, settings: dict[str, Any]) -> list[str]:
    """The `--set` overrides, then KEY=VALUE for every setting the user gave (None: not given).

    Booleans are written as YAML's true / false.
    """
    extra = list(overrides or [])
    for key, value in settings.items():
        if value is not None:
            extra.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return extra
