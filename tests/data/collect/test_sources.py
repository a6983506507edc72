"""The ImageSource plugin interface: built-in csv and list sources, the registry, entry-point plugins."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from carid.data.collect import (
    ENTRY_POINT_GROUP,
    MANIFEST_NAME,
    Candidate,
    ImageSource,
    Outcome,
    SourceError,
    available_sources,
    collect,
    get_source,
    read_manifest,
    register_source,
    search_all,
    unregister_source,
)
from carid.data.collect.sources import CsvSource, ListSource, detect_source

# --- csv ------------------------------------------------------------------------------------


def test_csv_source_reads_label_url_and_keeps_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(
        "\n URL ,Label,page\nhttp://a/1.jpg,sedan,p1\n\nhttp://a/2.jpg, suv ,p2,surplus\n", encoding="utf-8"
    )
    found = list(CsvSource().search(str(path), 0))
    assert [(c.url, c.label) for c in found] == [("http://a/1.jpg", "sedan"), ("http://a/2.jpg", "suv")]
    assert found[0].meta == {"page": "p1"} and found[1].meta == {"page": "p2", "extra_cells": ["surplus"]}
    assert found[0].origin == f"{path} line 3" and found[1].origin == f"{path} line 5"


def test_csv_source_needs_a_header(tmp_path: Path) -> None:
    path = tmp_path / "noheader.csv"
    path.write_text("sedan,http://a/1.jpg\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"noheader.csv line 1: .*no label or url column"):
        list(CsvSource().search(str(path), 0))
    (tmp_path / "empty.csv").write_text("\n\n", encoding="utf-8")
    with pytest.raises(SourceError, match="empty file"):
        list(CsvSource().search(str(tmp_path / "empty.csv"), 0))
    with pytest.raises(SourceError, match="no such CSV file"):
        list(CsvSource().search(str(tmp_path / "absent.csv"), 0))
    (tmp_path / "twice.csv").write_text("label,url,Label\n", encoding="utf-8")
    with pytest.raises(SourceError, match="repeated column"):
        list(CsvSource().search(str(tmp_path / "twice.csv"), 0))


def test_csv_source_limit_is_per_label(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    rows = [f"{'a' if i % 3 else 'b'},http://x/{i}.jpg" for i in range(9)]
    path.write_text("label,url\n" + "\n".join(rows) + "\n", encoding="utf-8")
    found = list(CsvSource().search(str(path), 2))
    assert [c.label for c in found].count("a") == 2 and [c.label for c in found].count("b") == 2


def test_csv_source_reports_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("label,url\nCitro\xebn,http://x/1.jpg\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8"):
        list(CsvSource().search(str(path), 0))


# --- list -----------------------------------------------------------------------------------


def test_list_source_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "sedan.txt").write_text("# sedans\nhttp://a/1.jpg\n\n  http://a/2.jpg  \nhttp://a/3.jpg\n")
    (folder / "suv.txt").write_text("http://b/1.jpg\n")
    (folder / "notes.md").write_text("ignored")
    single = list(ListSource().search(str(folder / "sedan.txt"), 0))
    assert [c.url for c in single] == ["http://a/1.jpg", "http://a/2.jpg", "http://a/3.jpg"]
    assert {c.label for c in single} == {"sedan"} and single[1].origin.endswith("sedan.txt line 4")
    everything = list(ListSource().search(str(folder), 2))
    assert [(c.label, c.url) for c in everything] == [
        ("sedan", "http://a/1.jpg"),
        ("sedan", "http://a/2.jpg"),
        ("suv", "http://b/1.jpg"),
    ]
    with pytest.raises(SourceError, match="no such file or folder"):
        list(ListSource().search(str(tmp_path / "absent"), 0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"no \.txt URL lists"):
        list(ListSource().search(str(tmp_path / "empty"), 0))


def test_detect_source(tmp_path: Path) -> None:
    assert detect_source("urls.CSV") == "csv"
    assert detect_source("sedan.txt") == "list"
    assert detect_source(str(tmp_path)) == "list"
    with pytest.raises(SourceError, match="pass --source"):
        detect_source("audi a4 avant")


# --- registry ---------------------------------------------------------------------------------


class EchoSource:
    """Proposes `limit` made-up URLs for the query, labelled with the query."""

    name = "echo"

    def __init__(self, host: str = "example.invalid") -> None:
        self.host = host

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        for rank in range(limit or 3):
            yield Candidate(f"data:,{self.host}/{query}/{rank}", query, {"rank": rank})


@pytest.fixture
def echo_registered() -> Iterator[None]:
    register_source("echo", EchoSource)
    try:
        yield
    finally:
        unregister_source("echo")


def test_register_and_get_source(echo_registered: None) -> None:
    assert (
        available_sources()["echo"] == "Proposes `limit` made-up URLs for the query, labelled with the query."
    )
    source = get_source("echo", host="h")
    assert isinstance(source, ImageSource) and source.host == "h"
    with pytest.raises(ValueError, match="registered twice"):
        register_source("echo", EchoSource)
    with pytest.raises(SourceError, match="cannot build it"):
        get_source("echo", colour="red")


def test_unknown_source_names_the_known_ones() -> None:
    with pytest.raises(SourceError, match=r"unknown image source 'nope'; known: .*csv.*list"):
        get_source("nope")


def test_a_factory_must_give_an_image_source() -> None:
    register_source("broken", lambda: object(), description="gives junk")
    try:
        with pytest.raises(SourceError, match="lacks `name` or `search"):
            get_source("broken")
    finally:
        unregister_source("broken")


def test_search_all_records_failures_and_goes_on(echo_registered: None) -> None:
    class Flaky:
        name = "flaky"

        def search(self, query: str, limit: int) -> Iterator[Candidate]:
            if query == "bad":
                yield Candidate("http://x/1.jpg", query)
                raise ConnectionError("quota exceeded")
            yield Candidate("http://x/2.jpg", query)
            yield "not a candidate"  # type: ignore[misc]

    candidates, problems = search_all(Flaky(), ["bad", "good"], 5)
    assert [c.url for c in candidates] == ["http://x/1.jpg", "http://x/2.jpg"]
    assert candidates[1].origin == "flaky query 'good' result 1"
    assert [p.kind for p in problems] == ["source_error", "source_error"]
    assert "quota exceeded" in problems[0].message and "not a carid Candidate" in problems[1].message


def test_registered_source_through_collect(echo_registered: None, tmp_path: Path) -> None:
    summary = collect(["audi a4"], tmp_path / "out", source="echo", per_query=2, progress=False)
    records = read_manifest(tmp_path / "out" / MANIFEST_NAME).latest
    assert summary.total == 2 and summary.counts == {Outcome.BAD_URL: 2}  # data: URLs are refused
    assert {r.label for r in records.values()} == {"audi a4"}
    assert sorted(r.extra["rank"] for r in records.values()) == [0, 1]


# --- entry-point plugins ------------------------------------------------------------------------


def install_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, value: str, body: str
) -> None:
    """Put a plugin module and a dist-info declaring it under `carid.sources` on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{module}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{value}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(site))


def test_entry_point_plugin_is_discovered_and_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(
        tmp_path,
        monkeypatch,
        "carid_fake_search",
        "fake-search = carid_fake_search:FakeSearch",
        """
        from carid.data.collect import Candidate

        class FakeSearch:
            name = "fake-search"

            def __init__(self, prefix="data:,"):
                self.prefix = prefix

            def search(self, query, limit):
                for rank in range(limit):
                    yield Candidate(self.prefix + query + str(rank), query, {"rank": rank})
        """,
    )
    assert available_sources()["fake-search"].startswith("plugin carid_fake_search:FakeSearch")
    source = get_source("fake-search", prefix="data:,x")
    assert [c.url for c in source.search("q", 2)] == ["data:,xq0", "data:,xq1"]
    summary = collect(["bmw m3"], tmp_path / "out", source="fake-search", per_query=3, progress=False)
    assert summary.total == 3 and summary.labels == {"bmw m3": {Outcome.BAD_URL: 3}}


def test_entry_point_plugin_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(
        tmp_path,
        monkeypatch,
        "carid_broken_plugin",
        "broken = carid_broken_plugin:Nope",
        "import not_installed\n",
    )
    assert "broken" in available_sources()  # listing does not import it
    with pytest.raises(SourceError, match=r"'broken' .* failed to load: ModuleNotFoundError"):
        get_source("broken")
