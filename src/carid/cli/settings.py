"""`carid config show [KEY]`: every setting with its type, default and meaning.

The list comes from the config dataclasses themselves (`carid.config_help.describe`: types and
defaults from the fields, meanings from the "key: meaning" lines of their docstrings), so it cannot
drift from what a config file accepts. Nothing heavy is imported: the command answers at once.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Annotated

import typer

config_app = typer.Typer(
    help="Settings: every key of a config file with its type, default and meaning.", no_args_is_help=True
)


def matching(keys: list[str], sections: list[str], wanted: str) -> list[str]:
    """The keys `wanted` selects: all for "", the key itself, every key of a section ("train"), else
    every key starting with it ("train.cache"). Empty when nothing matches."""
    if not wanted:
        return keys
    if wanted in keys:
        return [wanted]
    if wanted in sections:
        return [key for key in keys if key.startswith(wanted + ".")]
    return [key for key in keys if key.startswith(wanted)]


@config_app.command("show")
def show(
    key: Annotated[
        str,
        typer.Argument(
            help="A key (train.lr), a section (train) or the start of keys (train.cache); "
            "default: every key.",
            show_default=False,
        ),
    ] = "",
) -> None:
    """Print every setting (or those KEY selects): key, type, default, and what it means."""
    from carid.config import Config, ConfigError
    from carid.config_help import closest, describe, section_summary, sections

    described = describe(Config)
    by_key = {item.key: item for item in described}
    section_classes = sections(Config)
    chosen = matching(list(by_key), list(section_classes), key.strip())
    if not chosen:
        meant = closest(key, [*by_key, *section_classes])
        raise ConfigError(
            f"{key}: no such setting" + (f" (did you mean {meant}?)" if meant else ""),
            hint="`carid config show` lists them all",
        )
    width = min(100, max(60, shutil.get_terminal_size((100, 24)).columns))
    current = None
    for name in sorted(chosen, key=lambda name: "." in name):  # top-level keys first, then by section
        section = name.rsplit(".", 1)[0] if "." in name else ""
        if section != current and len(chosen) > 1:
            summary = section_summary(section_classes[section]) if section else "Top-level keys."
            typer.echo(f"{'' if current is None else chr(10)}[{section or 'top level'}] {summary}")
            current = section
        item = by_key[name]
        typer.echo(f"{item.key}: {item.type} = {item.default}")  # plain text: no markup, no rewrapping
        if item.help:
            typer.echo(textwrap.fill(item.help, width=width, initial_indent="    ", subsequent_indent="    "))
