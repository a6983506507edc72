"""carid.data.text: outside names shown so that they break neither a file nor a terminal."""

from __future__ import annotations

import json

from rich.console import Console

from carid.data.text import console_text, file_text, has_undecodable, safe_for_files, terminal_text


def test_undecodable_bytes_are_shown_as_hex() -> None:
    name = b"bad\xff\xfe.jpg".decode("utf-8", "surrogateescape")
    assert has_undecodable(name) and not has_undecodable("café 車")
    assert file_text(name) == "bad\\xff\\xfe.jpg"
    assert file_text("café 車\n") == "café 車\n", "valid text and control characters stay in files"
    assert file_text("\ud800") == "\\ud800"
    data = safe_for_files({"a": [name, 1, None], name: ("x",)})
    assert json.dumps(data, ensure_ascii=False).encode("utf-8")
    assert data == {"a": ["bad\\xff\\xfe.jpg", 1, None], "bad\\xff\\xfe.jpg": ["x"]}


def test_control_characters_are_shown_not_obeyed() -> None:
    assert terminal_text("a\x1b[31mb\nc\td\x07\x7f\x85\u202e") == "a\\x1b[31mb\\nc\\td\\x07\\x7f\\x85\\u202e"
    assert terminal_text("two\nlines\x1b", multiline=True) == "two\nlines\\x1b"
    assert terminal_text("plain [bold] café") == "plain [bold] café"


def test_console_text_prints_literally() -> None:
    console = Console(record=True, width=200, color_system="truecolor", force_terminal=True)
    hostile = "[bold red]BIG[/bold red] \x1b[2J [link=http://x]y[/link] trailing\\"
    console.print(f"[green]{console_text(hostile)}[/]")
    text = console.export_text()
    assert "[bold red]BIG[/bold red] \\x1b[2J [link=http://x]y[/link] trailing\\" in text
