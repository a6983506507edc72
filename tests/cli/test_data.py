"""`carid data ...` as a user meets it: clear one-line errors, real outputs."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carid.cli import app
from tests.conftest import shared_dataset, write_image
from tests.data.bad_entries import UNDECODABLE_SHOWN, deny_listing, fifo, symlink_loop, undecodable_file

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


# --- bad entries and hostile names (issue 23) ---------------------------------------------------


def _problems_by_kind(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for problem in report["problems"]:
        found.setdefault(problem["kind"], []).append(problem)
    return found


@pytest.mark.timeout(120)
def test_check_reports_each_bad_entry_by_name_and_checks_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_folder_dataset(tmp_path / "cars")
    symlink_loop(data / "train" / "suv")
    write_image(data / "train" / "sedan" / "locked" / "x.jpg")
    deny_listing(monkeypatch, data / "train" / "sedan" / "locked")
    fifo(data / "train" / "suv" / "x.jpg")
    odd = undecodable_file(data / "train" / "suv", (data / "train" / "suv" / "0.jpg").read_bytes())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "check", str(data), "--json", "report.json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    kinds = _problems_by_kind(report)
    assert sorted(p["source"] for p in kinds["symlink_loop"]) == ["train/suv/loop", "train/suv/up"]
    assert [p["source"] for p in kinds["unreadable_folder"]] == ["train/sedan/locked"]
    assert [p["source"] for p in kinds["not_a_regular_file"]] == ["train/suv/x.jpg"]
    assert report["summary"]["samples"] == 26, "12 + 12 photos, broken.jpg and the oddly named copy"
    named = [p for p in kinds["undecodable_name"] if p["path"]]
    assert (
        len(named) == 1 and UNDECODABLE_SHOWN in named[0]["path"] and UNDECODABLE_SHOWN in named[0]["message"]
    )
    shown = [image["path"] for image in report["images"] if UNDECODABLE_SHOWN in image["path"]]
    assert shown == [str(odd.parent / UNDECODABLE_SHOWN)]
    assert "\udcff" not in (tmp_path / "report.json").read_text(encoding="utf-8")
    for name in ("symlink_loop", "unreadable_folder", "not_a_regular_file", "undecodable_name"):
        assert name in result.output


def test_report_and_split_complete_with_an_undecodable_file_name(tmp_path: Path, monkeypatch) -> None:
    data = make_folder_dataset(tmp_path / "cars")
    odd = undecodable_file(data / "train" / "suv", (data / "train" / "suv" / "0.jpg").read_bytes())
    monkeypatch.chdir(tmp_path)
    report = runner.invoke(app, ["data", "report", str(data), "--out", "rep", "--workers", "1"])
    assert report.exit_code == 0, report.output
    assert UNDECODABLE_SHOWN in (tmp_path / "rep" / "report.html").read_text(encoding="utf-8")
    split = runner.invoke(app, ["data", "split", str(data), "--out", "split.csv"])
    assert split.exit_code == 0, split.output
    from carid.data.split import load_split

    table = load_split(tmp_path / "split.csv")
    assert odd in [sample.path for sample in table], "the split names the very file, bytes and all"


def test_markup_in_class_names_and_file_names_is_shown_literally(tmp_path: Path, monkeypatch) -> None:
    data = make_folder_dataset(tmp_path / "cars")
    for index in range(2):  # a folder name cannot hold "/", so the tag is left open
        write_image(data / "train" / "[bold red]BIG" / f"[link=http://x]{index}.jpg", seed=index)
    write_image(data / "train" / "esc\x1b[31mred\nline" / "0.jpg", seed=7)
    monkeypatch.chdir(tmp_path)
    console = importlib.import_module("carid.cli.app").console
    monkeypatch.setattr(console, "_width", 300)  # the width is fixed when the module is imported
    result = runner.invoke(app, ["data", "check", str(data)])
    assert result.exit_code == 0, result.output
    assert "class '[bold red]BIG'" in result.output
    assert "\x1b[31m" not in result.output and "esc\\x1b[31mred\\nline" in result.output
    # a label may hold "/" (a folder name cannot): the whole tag, from a box CSV's label column
    write_image(tmp_path / "frames" / "images" / "a.jpg")
    write_image(tmp_path / "frames" / "images" / "b.jpg", seed=3)
    (tmp_path / "frames" / "boxes.csv").write_text(
        "image_id,xmin,ymin,xmax,ymax,label\n"
        "a.jpg,1,2,30,40,[bold red]BIG[/bold red]\n"
        "b.jpg,1,2,30,40,sedan\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["data", "check", str(tmp_path / "frames")])
    assert result.exit_code == 0, result.output
    assert "class '[bold red]BIG[/bold red]'" in result.output


def test_a_box_csv_missing_a_column_says_which(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "frames" / "images" / "a.jpg")
    (tmp_path / "frames" / "boxes.csv").write_text("image_id,xmin,ymin,xmax\na.jpg,1,2,3\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(tmp_path / "frames")])
    assert result.exit_code == 2, result.output
    assert "boxes.csv lacks ymax" in result.output


def swapped_outdoor_dataset(root: Path, count: int) -> Path:
    """`count` outdoor-like photos (sky above, ground below) saved with red and blue swapped."""
    from carid.images import swap_red_blue
    from tests.data.test_colour_order import outdoor_like

    for i in range(count):
        path = root / "train" / ("sedan" if i % 2 else "suv") / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        swap_red_blue(outdoor_like(i)).save(path, quality=95)
    return root


def test_check_flags_swapped_colours_and_fix_colours_repairs_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = swapped_outdoor_dataset(tmp_path / "bgr", 24)
    one = ["--workers", "1"]
    result = runner.invoke(app, ["data", "check", str(data), "--json", "report.json", "--strict", *one])
    assert result.exit_code == 1, result.output
    assert "colour order: swapped" in result.output and "colour_order" in result.output
    problems = json.loads(Path("report.json").read_text())["problems"]
    warning = [p for p in problems if p["kind"] == "colour_order"]
    assert len(warning) == 1 and warning[0]["severity"] == "warning"
    assert "data.swap_rb" in warning[0]["message"] and "24 are redder at the top" in warning[0]["message"]
    for options in (["--no-colour"], ["--set", "data.swap_rb=true"]):
        quiet = runner.invoke(app, ["data", "check", str(data), "--strict", *one, *options])
        assert quiet.exit_code == 0, quiet.output
    no_reference = runner.invoke(app, ["data", "check", str(data), "--colour-reference", str(data), *one])
    assert no_reference.exit_code == 2 and "no boxed photo there" in no_reference.output
    fixed = runner.invoke(app, ["data", "fix-colours", str(data), "--out", "rgb"])
    assert fixed.exit_code == 0, fixed.output
    assert "24 images corrected" in fixed.output
    again = runner.invoke(app, ["data", "check", "rgb", "--strict", *one])
    assert again.exit_code == 0 and "colour order: ok" in again.output, again.output
    refused = runner.invoke(app, ["data", "fix-colours", str(data), "--out", "rgb"])
    assert refused.exit_code == 2 and "rgb: the output folder exists" in refused.output


def test_data_report_shows_the_colour_warning(tmp_path: Path) -> None:
    data = swapped_outdoor_dataset(tmp_path / "bgr", 12)
    report = runner.invoke(
        app, ["data", "report", str(data), "--out", str(tmp_path / "rep"), "--workers", "1"]
    )
    assert report.exit_code == 0, report.output
    html = (tmp_path / "rep" / "report.html").read_text()
    summary = html[html.index("What is wrong with this data") : html.index("<h2>Dataset</h2>")]
    assert "red and blue look swapped" in summary and "fix-colours" in summary
