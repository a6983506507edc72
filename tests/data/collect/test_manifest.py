"""Manifest records, reading a torn manifest, safe folder names and the summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from carid.data.collect import (
    MANIFEST_NAME,
    PENDING,
    CollectError,
    CollectSummary,
    ManifestRecord,
    Outcome,
    read_manifest,
    safe_folder_name,
    url_file_stem,
)
from carid.data.collect.manifest import FolderNames, ManifestWriter, count_outcomes
from carid.data.samples import Problem


def make_record(url: str, outcome: Outcome = Outcome.OK, label: str = "sedan", **fields) -> ManifestRecord:
    return ManifestRecord(url=url, label=label, folder=safe_folder_name(label), outcome=outcome, **fields)


def test_record_round_trip() -> None:
    record = make_record(
        "http://a/1.jpg",
        path="sedan/abc.jpg",
        sha256="ff",
        size_bytes=10,
        width=3,
        height=4,
        redirects=("http://a/2.jpg",),
        extra={"licence": "cc0"},
    )
    assert ManifestRecord.from_dict(record.to_dict()) == record
    with pytest.raises(ValueError, match="unknown outcome"):
        ManifestRecord.from_dict({**record.to_dict(), "outcome": "fine"})
    with pytest.raises(ValueError, match="'url'"):
        ManifestRecord.from_dict({"label": "a", "folder": "a", "outcome": "ok"})


def test_writer_appends_and_reader_keeps_the_last_line_per_url(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    with ManifestWriter(path) as writer:
        writer.write(make_record("http://a/1.jpg", Outcome.TIMEOUT))
        writer.write(make_record("http://a/2.jpg"))
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"url": "http://a/3.jpg", "lab')  # a torn line, as after a power cut
    with ManifestWriter(path) as writer:  # ends the torn line before appending
        writer.write(make_record("http://a/1.jpg"))
    state = read_manifest(path)
    assert state.latest["http://a/1.jpg"].outcome is Outcome.OK
    assert set(state.latest) == {"http://a/1.jpg", "http://a/2.jpg"}
    assert [p.kind for p in state.problems] == ["bad_manifest_line"]
    assert state.problems[0].source.endswith("line 3")
    assert read_manifest(tmp_path / "absent.jsonl").latest == {}


def test_writer_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")
    with ManifestWriter(tmp_path / MANIFEST_NAME), pytest.raises(CollectError, match="locked"):
        ManifestWriter(tmp_path / MANIFEST_NAME)
    ManifestWriter(tmp_path / MANIFEST_NAME).close()  # released on close


@pytest.mark.parametrize(
    "label",
    [
        "../../etc",
        "a/b",
        "..",
        ".",
        "",
        " ",
        "/abs",
        "C:\\x\\y",
        "CON",
        "nul.txt",
        "x\x00y",
        "a" * 300,
        "é" * 300,
    ],
)
def test_safe_folder_name_is_one_harmless_component(label: str) -> None:
    name = safe_folder_name(label)
    assert name == safe_folder_name(label)  # stable
    assert name not in ("", ".", "..") and not name.startswith((".", " "))
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert len(name.encode("utf-8")) <= 120
    assert Path(name).name == name
    assert name.split(".")[0].upper() not in {"CON", "NUL"}


def test_safe_folder_name_keeps_clean_labels_and_separates_lookalikes() -> None:
    assert safe_folder_name("BMW M3 Coupe 2012") == "BMW M3 Coupe 2012"
    assert safe_folder_name("Citroën C4") == "Citroën C4"
    assert safe_folder_name("a_b") == "a_b"
    assert safe_folder_name("a/b").startswith("a_b-") and safe_folder_name("a/b") != safe_folder_name("a\\b")


def test_folder_names_avoid_case_only_clashes_and_keep_earlier_choices() -> None:
    folders = FolderNames({"Audi": "Audi"})
    assert folders.folder("Audi") == "Audi"
    assert folders.folder("audi").startswith("audi-")
    assert folders.folder("BMW") == "BMW"
    assert folders.folder("bmw") != "bmw" and folders.folder("bmw") == folders.folder("bmw")


def test_url_file_stem_is_stable_hex() -> None:
    stem = url_file_stem("http://a/../../etc/passwd")
    assert stem == url_file_stem("http://a/../../etc/passwd") and len(stem) == 20
    assert set(stem) <= set("0123456789abcdef")
    assert stem != url_file_stem("http://a/other")


def test_summary_counts_and_exit_codes() -> None:
    latest = {
        "u1": make_record("u1"),
        "u2": make_record("u2", Outcome.DUPLICATE),
        "u3": make_record("u3", Outcome.NOT_AN_IMAGE, label="suv"),
        "u4": make_record("u4", label="old label"),  # relabelled in the input since: pending
    }
    pairs = [("u1", "sedan"), ("u2", "sedan"), ("u3", "suv"), ("u4", "coupe"), ("u5", "coupe")]
    counts, labels = count_outcomes(pairs, latest)
    assert counts == {"ok": 1, "duplicate": 1, "not_an_image": 1, PENDING: 2}
    assert labels == {"sedan": {"ok": 1, "duplicate": 1}, "suv": {"not_an_image": 1}, "coupe": {PENDING: 2}}
    summary = CollectSummary(
        out_dir="out",
        manifest="out/manifest.jsonl",
        total=5,
        fetched=3,
        skipped=0,
        counts=counts,
        this_run={"ok": 1},
        labels=labels,
        folders={"sedan": "sedan", "suv": "suv", "coupe": "coupe"},
        problems=(Problem("repeated_url", "again", "urls.csv line 3"),),
    )
    assert summary.collected == 2 and summary.failed == 1
    assert summary.exit_code() == 0 and summary.exit_code(strict=True) == 1
    data = summary.to_dict()
    assert data["collected"] == 2 and data["problems"][0]["kind"] == "repeated_url"
    nothing = CollectSummary(
        "o", "m", 1, 1, 0, {"timeout": 1}, {"timeout": 1}, {"a": {"timeout": 1}}, {"a": "a"}
    )
    assert nothing.exit_code() == 1
    console = Console(record=True, width=120)
    summary.print_summary(console)
    text = console.export_text()
    assert "2 of 5 URLs collected, 1 failed, 2 pending" in text and "repeated_url" in text
