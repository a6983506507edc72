"""`carid data ...` as a user meets it: clear one-line errors, real outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carid.cli import app
from tests.conftest import shared_dataset, write_image

runner = CliRunner()


def make_folder_dataset(root: Path) -> Path:
    for cls in ("sedan", "suv"):
        for i in range(12):
            write_image(root / "train" / cls / f"{i}.jpg", size=(64, 48), seed=hash((cls, i)) % 1000)
    (root / "train" / "suv" / "notes.txt").write_text("not a photo")
    bad = root / "train" / "sedan" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a full jpeg")
    return root


def test_check_reports_bad_files_and_strict_exit(tmp_path: Path, monkeypatch) -> None:
    data = make_folder_dataset(tmp_path / "cars")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "check", str(data), "--json", "report.json"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert len(errors) == 1 and errors[0]["kind"] in ("truncated_image", "unreadable_image")
    assert "broken.jpg" in errors[0]["message"]
    kinds = {p["kind"]: p for p in report["problems"]}
    assert "notes.txt" in f"{kinds['non_image_file']['source']}: {kinds['non_image_file']['message']}"
    strict = runner.invoke(app, ["data", "check", str(data), "--strict"])
    assert strict.exit_code != 0


def test_split_and_report_write_files(tmp_path: Path, monkeypatch) -> None:
    data = make_folder_dataset(tmp_path / "cars")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "split", str(data), "--out", "split.csv", "--seed", "3"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "split.csv").read_text().splitlines()
    assert len(lines) == 1 + 24  # header + the 24 good images; broken.jpg excluded
    again = runner.invoke(app, ["data", "split", str(data), "--out", "split2.csv", "--seed", "3"])
    assert again.exit_code == 0
    assert (tmp_path / "split2.csv").read_text() == (tmp_path / "split.csv").read_text()
    report = runner.invoke(app, ["data", "report", str(data), "--out", "rep"])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "broken.jpg" in html and "sedan" in html


def test_unknown_format_and_missing_path_are_one_line_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such file" in result.output and "Stanford Cars" in result.output
    data = make_folder_dataset(tmp_path / "cars")
    result = runner.invoke(app, ["data", "check", str(data), "--format", "pascal"])
    assert result.exit_code == 2
    assert "unknown format 'pascal'" in result.output
    result = runner.invoke(app, ["data", "check", str(data), "--set", "check.min_sidez=3"])
    assert result.exit_code == 2
    assert "check.min_sidez" in result.output


def test_taxonomy_command(shared_datasets: Path) -> None:
    data = shared_dataset(shared_datasets, "stanford-cars-crops")
    result = runner.invoke(app, ["data", "taxonomy", str(data)])
    assert result.exit_code == 0, result.output
    assert "Hatchback" in result.output and "not parsed" not in result.output


def test_collect_command_lists_sources_and_reports_nothing_collected(tmp_path: Path) -> None:
    listed = runner.invoke(app, ["data", "collect", "--list-sources"])
    assert listed.exit_code == 0 and "csv" in listed.output
    urls = tmp_path / "urls.csv"
    urls.write_text("label,url\nsedan,data:image/png;base64,AAAA\nsuv,file:///etc/passwd\n")
    result = runner.invoke(app, ["data", "collect", str(urls), "--out", str(tmp_path / "photos")])
    assert result.exit_code == 1, result.output  # nothing could be collected
    assert (tmp_path / "photos" / "summary.json").is_file()
    missing = runner.invoke(
        app, ["data", "collect", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "p")]
    )
    assert missing.exit_code == 2


SHARED_DEFECTS = {
    # dataset -> texts its report must contain (the real defects the shared README lists)
    "oxford-pets-sample": ["Abyssinian_34.jpg", "Bengal_105.xml", "multiple_objects"],
    "stanford-cars-devkit": ["07389", "box_exceeds_photo", "missing_file"],
    "stanford-cars-crops": ["07389", "box_exceeds_photo"],
    "car-frames": ["no_box", "100 images of 384 have no box"],
    "car-models-5": ["mini cooper", "outlander"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHARED_DEFECTS))
def test_report_on_every_shared_dataset_names_its_defects(
    shared_datasets: Path, tmp_path: Path, name: str
) -> None:
    data = shared_dataset(shared_datasets, name)
    result = runner.invoke(app, ["data", "report", str(data), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "rep" / "report.html").read_text()
    for text in SHARED_DEFECTS[name]:
        assert text in html, f"{name}: {text!r} missing from the report"
