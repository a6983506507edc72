"""The hostile corpus laid out on disk for the commands that read folders (`carid predict`,
`carid data check`), with the entries no upload can carry: a FIFO named like a photo, a file name
that is not UTF-8, a link loop, names holding rich markup and terminal control characters.

    lay_out(folder) -> Layout: every case of `tests.hostile.corpus` written to `folder`, plus
        some fuzzed files and the bad entries; `Layout` says what each file is
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from carid.images import is_image_file
from tests.data.bad_entries import UNDECODABLE_SHOWN, fifo, undecodable_file
from tests.hostile.corpus import HostileCase, hostile_cases, mutations, write_cases

FUZZED = 45  # mutated files added to the corpus (every format five times)
# File names a terminal or rich would obey if they were printed as they are.
HOSTILE_NAMES = ("[bold red]BIG.jpg", "esc\x1b[31mred.jpg", "new\nline.jpg", "bell\x07\u202egpj.jpg")


@dataclass
class Layout:
    """What `lay_out` wrote. cases: each corpus file and its case; good: files that are valid
    photos (under a hostile name); pipe: the FIFO; loop: the link to itself; undecodable: the file
    whose name is not UTF-8 (a valid photo), shown as `shown_undecodable` in reports."""

    folder: Path
    cases: dict[Path, HostileCase] = field(default_factory=dict)
    good: list[Path] = field(default_factory=list)
    pipe: Path | None = None
    loop: Path | None = None
    undecodable: Path | None = None

    @property
    def shown_undecodable(self) -> str:
        assert self.undecodable is not None
        return str(self.undecodable.parent / UNDECODABLE_SHOWN)

    def image_named(self) -> list[Path]:
        """The corpus files with an image suffix (what a folder search finds), sorted."""
        return sorted(path for path in self.cases if is_image_file(path))

    def other_named(self) -> list[Path]:
        """The corpus files without an image suffix (.pdf, .svg, .exe, ...), sorted."""
        return sorted(path for path in self.cases if not is_image_file(path))


def lay_out(folder: Path) -> Layout:
    layout = Layout(folder)
    cases = [*hostile_cases(), *mutations(FUZZED)]
    for path, case in zip(write_cases(folder, cases), cases, strict=True):
        layout.cases[path] = case
    photo = next(path for path, case in layout.cases.items() if case.name == "content_type_garbage")
    for name in HOSTILE_NAMES:
        target = folder / name
        target.write_bytes(photo.read_bytes())
        layout.good.append(target)
    layout.undecodable = undecodable_file(folder, photo.read_bytes())
    layout.pipe = fifo(folder / "pipe.jpg")
    layout.loop = folder / "loop.jpg"
    os.symlink(layout.loop, layout.loop)
    return layout


DEADLINE_S = 600  # a few seconds of work; the machine may be busy with a training run


def run_carid_cleanly(arguments: list[str], cwd: Path) -> str:
    """Run `carid ARGUMENTS` in a subprocess with a deadline, as a user would, and check that it
    exits 0 with no traceback, no flood of Pillow warnings and no control character it was given
    printed raw; returns its stdout."""
    command = [sys.executable, "-m", "carid", *arguments]
    env = {**os.environ, "COLUMNS": "300", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(command, capture_output=True, timeout=DEADLINE_S, env=env, cwd=cwd)
    stdout = done.stdout.decode("utf-8")
    stderr = done.stderr.decode("utf-8")
    assert done.returncode == 0, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert "Warning" not in stderr, "no flood of Pillow warnings about odd files"
    assert "\x1b" not in stdout and "\x07" not in stdout, "names are shown, never obeyed"
    return stdout
