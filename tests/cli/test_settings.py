"""`carid config show`: every key with its type, default and the help of its docstring line, fast."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from carid.cli import app
from carid.config import Config, TrainConfig
from carid.config_help import describe, field_help

runner = CliRunner()


def test_show_lists_every_key_with_type_default_and_help() -> None:
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    for item in describe(Config):
        assert f"{item.key}: {item.type} = {item.default}\n" in result.output, item.key
    assert "[train] How to fit" in result.output
    # the help text is the docstring's "lr: ..." line, wrapped
    assert "    " + field_help(TrainConfig)["lr"] in result.output


def test_show_one_key_and_one_section() -> None:
    result = runner.invoke(app, ["config", "show", "train.lr"])
    assert result.exit_code == 0, result.output
    assert result.output == f"train.lr: float = 0.001\n    {field_help(TrainConfig)['lr']}\n"
    section = runner.invoke(app, ["config", "show", "train"])
    assert section.exit_code == 0
    lines = [line for line in section.output.splitlines() if line and not line.startswith((" ", "["))]
    assert lines and all(line.startswith("train.") for line in lines)
    assert len(lines) == len([item for item in describe(Config) if item.key.startswith("train.")])
    wrapped = textwrap.fill(field_help(TrainConfig)["freeze"], width=100)
    assert wrapped.split()[:4] == section.output.split("train.freeze: str | int = none\n")[1].split()[:4]


def test_show_an_unknown_key_says_which_was_meant() -> None:
    result = runner.invoke(app, ["config", "show", "train.lrr"])
    assert result.exit_code == 2
    assert "train.lrr: no such setting (did you mean train.lr?)" in result.output


def test_show_does_not_load_torch() -> None:
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom carid.cli import app\n"
        "result = CliRunner().invoke(app, ['config', 'show'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
