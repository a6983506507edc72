"""The hostile corpus as a class-per-folder dataset through `carid data check`, in a subprocess with a
deadline: it completes, exits 0, prints no traceback and no control character it was given, and
the JSON report names each bad file with a problem (an ERROR for what cannot be decoded, the
reason why a file was passed over for the rest), while the valid photos are checked as usual.
"""

from __future__ import annotations

import json
from pathlib import Path

from carid.data.samples import Severity
from tests.conftest import write_image
from tests.hostile.entries import lay_out, run_carid_cleanly


def test_data_check_names_every_hostile_file(tmp_path: Path) -> None:
    root = tmp_path / "cars"
    layout = lay_out(root / "hostile")
    for index in range(6):
        write_image(root / "[green]sedan" / f"{index}.jpg", seed=index)
    report_path = tmp_path / "report.json"
    stdout = run_carid_cleanly(["data", "check", str(root), "--json", str(report_path)], tmp_path)
    assert "class '[green]sedan'" in stdout

    report = json.loads(report_path.read_text(encoding="utf-8"))

    def found(path: Path) -> list[dict]:
        """The problems naming `path`, by its full path or its path in the dataset."""
        names = {str(path), path.relative_to(root).as_posix()}
        return [p for p in report["problems"] if p["path"] in names or p["source"] in names]

    for path, case in layout.cases.items():
        if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"):
            if not case.may_succeed:
                errors = [p for p in found(path) if p["severity"] == Severity.ERROR]
                assert errors and path.name in errors[0]["message"], f"{case.name}: {found(path)}"
        else:
            assert [p["kind"] for p in found(path)] == ["non_image_file"], case.name
    assert [p["kind"] for p in found(layout.pipe)] == ["not_a_regular_file"]
    assert [p["kind"] for p in found(layout.loop)] == ["symlink_loop"]
    shown = [p for p in report["problems"] if p["kind"] == "undecodable_name"]
    assert [p["path"] for p in shown] == [layout.shown_undecodable]
    for path in layout.good:
        assert not [p for p in found(path) if p["severity"] == Severity.ERROR], found(path)
    assert report["summary"]["usable"] >= 6 + len(layout.good)
