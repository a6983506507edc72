"""The `carid` command as a user meets it: help for every verb, one-line errors, the entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carid.cli import app
from tests.conftest import write_image

runner = CliRunner()


def _commands(typer_app) -> list[list[str]]:
    import typer.main

    group = typer.main.get_command(typer_app)
    paths: list[list[str]] = []

    def walk(command, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(group, [])
    return paths


@pytest.mark.parametrize("command", _commands(app), ids=lambda c: " ".join(c) or "carid")
def test_every_verb_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_an_unknown_tta_mode_is_a_one_line_error(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "car.png", size=(40, 30))
    for command in (
        ["predict", str(tmp_path), str(photo), "--tta", "mirror"],
        ["evaluate", str(tmp_path), "--tta", "mirror"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, command
        assert "'mirror' is not one of none, hflip" in result.output, command
        assert "Traceback" not in result.output


def test_no_data_anywhere_says_how_to_get_stanford_cars(tmp_path: Path) -> None:
    env = {**os.environ, "CARID_DATA": ""}
    script = (
        "import carid.config as c; c.shared_datasets_dir = lambda: None; "
        "from carid.cli import main; import sys; sys.argv = ['carid', 'data', 'check']; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Stanford Cars" in result.stderr and "--data" in result.stderr


def test_a_carid_error_prints_message_and_hint_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    import carid.config
    from carid.errors import CaridError

    def broken(*args, **kwargs):
        raise CaridError("bad [value] in the config", hint="see `carid data formats`")

    monkeypatch.setattr(carid.config, "load_config", broken)
    result = runner.invoke(app, ["data", "taxonomy", "anything"])
    assert result.exit_code == 2
    assert "error: bad [value] in the config\nhint: see `carid data formats`" in result.output
    assert "Traceback" not in result.output
