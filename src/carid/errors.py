"""One family for every error a user can fix: `CaridError`.

Each module keeps its own subclass (`ConfigError`, `BundleError`, `DatasetError`, ...) so callers
can catch precisely, and every subclass also derives from the built-in it replaced (`ValueError`,
`RuntimeError`) so existing `except ValueError` code keeps working. The command line catches
`CaridError` in one place and prints the message, then the hint when there is one.
"""

from __future__ import annotations


class CaridError(Exception):
    """An error the user can fix: a message naming the file or field and the problem.

    hint: an optional next step ("run `carid export RUN` first"), printed on its own line by the
    command line; `str(error)` is the message alone.
    """

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
