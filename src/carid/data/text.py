r"""Showing names that come from outside (file names, class names, labels, messages that quote them)
without letting them break a file or a terminal.

A file name on Linux is bytes; Python holds the bytes that are not UTF-8 as "surrogate escapes"
(U+DC80-U+DCFF), which no UTF-8 writer accepts. And a name may hold control characters (ESC,
newline, BEL, ...) that a terminal would obey, or text that rich would take as markup.

    file_text("bad\udcff.jpg")       -> "bad\xff.jpg"       for any text file (CSV, JSON, HTML)
    terminal_text("a\x1b[31mb\n")    -> "a\x1b[31mb\n"      for a terminal: control characters escaped
    console_text("[bold]BIG")        -> "\[bold]BIG"        for rich markup: markup escaped as well
    safe_for_files({...})            -> the same structure, `file_text` applied to every string

(On the left, Python literals; on the right, the characters produced: a backslash, "x", "f", "f".)
Escapes are repr-style (\xNN, \n, \uNNNN) so that the reader sees which byte or character it is.
Files that must name the very file (the split CSV training reads back) keep the bytes instead:
see `carid.data.samples.SampleTable.to_csv`.
"""

from __future__ import annotations

import re
from typing import Any

# Undecodable bytes held as surrogate escapes, and lone surrogates of any other origin.
_SURROGATE = re.compile("[\ud800-\udfff]")
# DEL, the C1 controls and the invisible characters that reorder or break a line (bidirectional
# marks, overrides and isolates, line and paragraph separators); with the C0 controls (ESC, BEL,
# newline, ...) they are what a terminal obeys instead of showing.
_INVISIBLE = "\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[\x00-\x1f{_INVISIBLE}]")
_CONTROL_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{_INVISIBLE}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _control(match: re.Match[str]) -> str:
    character = match.group()
    code = ord(character)
    return _NAMED.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def has_undecodable(text: str) -> bool:
    """True when `text` holds bytes that were not UTF-8 (surrogate escapes)."""
    return _SURROGATE.search(text) is not None


def file_text(text: str) -> str:
    """`text` that any UTF-8 writer accepts: each undecodable byte shown as \\xNN."""
    return _SURROGATE.sub(_surrogate, text)


def terminal_text(text: str, multiline: bool = False) -> str:
    """`file_text`, and control characters shown as \n, \t, \x1b, \u202e ... instead of obeyed.

    multiline: keep newlines (a message of several lines); ESC and the rest are still escaped.
    """
    return (_CONTROL_BUT_NEWLINE if multiline else _CONTROL).sub(_control, file_text(text))


def console_text(text: object, multiline: bool = False) -> str:
    """`terminal_text` of str(text), rich markup escaped: safe inside a rich markup string."""
    from rich.markup import escape

    return escape(terminal_text(str(text), multiline))


def safe_for_files(value: Any) -> Any:
    """A copy of a JSON-like structure (dicts, lists, tuples, strings, numbers) with `file_text`
    applied to every string, keys included."""
    if isinstance(value, str):
        return file_text(value)
    if isinstance(value, dict):
        return {safe_for_files(key): safe_for_files(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [safe_for_files(item) for item in value]
    return value
