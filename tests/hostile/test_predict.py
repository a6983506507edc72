"""The hostile corpus through `carid predict`, as a user runs it: a subprocess with a deadline.

Every file gets a row (the corpus files by their folder, the ones without an image suffix named
on the command line); the bad ones an error naming the file and the problem, the valid ones an
answer; the FIFO, the link loop and the file name that is not UTF-8 a row each. The run ends in
time, exits 0 (1 only when every photo failed), prints no traceback and no control character it
was given, and the CSV holds every row.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.hostile.entries import lay_out, run_carid_cleanly

# Refused by the server as a matter of policy (415: it takes photo formats only), but images
# Pillow reads: `carid predict` may answer them.
SERVER_POLICY_ONLY = {"ico_icon", "ppm_image"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from tests.test_export import tiny_bundle_dir

    return tiny_bundle_dir(tmp_path_factory)


@pytest.mark.slow
def test_predict_answers_every_hostile_file_with_a_row(bundle: Path, tmp_path: Path) -> None:
    layout = lay_out(tmp_path / "photos")
    out = tmp_path / "predictions.csv"
    arguments = ["predict", str(bundle), str(layout.folder), *map(str, layout.other_named())]
    stdout = run_carid_cleanly([*arguments, "--out", str(out), "--batch-size", "8"], tmp_path)

    rows = {row["path"]: row for row in csv.DictReader(out.open(encoding="utf-8", newline=""))}
    expected = [
        *layout.cases,
        *layout.good,
        layout.pipe,
        layout.loop,
    ]
    missing = [str(path) for path in expected if str(path) not in rows]
    assert not missing, f"no row for {missing[:5]}"
    assert layout.shown_undecodable in rows
    assert len(rows) == len(expected) + 1, "one row per file, no other"

    wrong = []
    for path, case in layout.cases.items():
        row = rows[str(path)]
        if not case.may_succeed and case.name not in SERVER_POLICY_ONLY:
            if not (row["error"] and path.name in row["error"]):
                wrong.append(f"{case.name}: no error naming the file ({row['error']!r})")
        elif case.statuses == {200} and row["error"]:
            wrong.append(f"{case.name}: a valid photo got {row['error']!r}")
    assert not wrong, "\n".join(wrong)
    for path in layout.good:
        assert not rows[str(path)]["error"], rows[str(path)]
    assert not rows[layout.shown_undecodable]["error"]
    assert "not a regular file (a FIFO" in rows[str(layout.pipe)]["error"]
    assert "symbolic link loop" in rows[str(layout.loop)]["error"]
    assert "[bold red]BIG.jpg" in stdout and "esc\\x1b[31mred.jpg" in stdout
