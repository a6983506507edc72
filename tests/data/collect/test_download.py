"""Downloading against a local HTTP server on loopback that serves every kind of good and bad answer."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from PIL import Image

from carid.data.collect import (
    MANIFEST_NAME,
    PENDING,
    SUMMARY_NAME,
    Candidate,
    CollectConfig,
    ManifestRecord,
    Outcome,
    collect,
    collect_images,
    read_manifest,
)
from tests.data.collect.local_site import (
    Handler,
    Server,
    Site,
    free_port,
    image_bytes,
    redirect,
    send,
)

# --- the local site ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback requests must not be sent to a proxy configured in the environment."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def site() -> Iterator[Site]:
    server = Server(("127.0.0.1", 0), Handler)
    state = Site(base=f"http://127.0.0.1:{server.server_address[1]}")
    server.site = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def fast_config(**changes: object) -> CollectConfig:
    settings: dict[str, object] = {
        "workers": 8,
        "per_host": 8,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "total_timeout": 3.0,
        "retries": 1,
        "backoff_base": 0.05,
        "backoff_max": 0.1,
        "max_retry_after": 5.0,
        "max_redirects": 3,
        "max_bytes": 200_000,
        "min_side": 16,
        "fsync": False,
    }
    settings.update(changes)
    return CollectConfig(**settings)  # type: ignore[arg-type]


def stored_files(out: Path) -> set[str]:
    """Relative POSIX paths of every file in the label folders (manifest and summary excluded)."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.parent != out}


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()]


# --- the big run: every kind of answer, each outcome asserted ------------------------------------


def test_every_kind_of_answer_gets_a_truthful_record(site: Site, tmp_path: Path) -> None:
    good_jpeg = image_bytes("JPEG", seed=1)
    good_png = image_bytes("PNG", (70, 50), seed=2)
    png_named_jpg = image_bytes("PNG", seed=3)
    flaky = image_bytes("JPEG", seed=4)
    limited = image_bytes("JPEG", seed=5)
    target = image_bytes("JPEG", seed=6)
    truncated = image_bytes("JPEG", (200, 150), seed=7)
    duplicate = image_bytes("JPEG", seed=8)
    icon = io.BytesIO()
    Image.new("RGB", (48, 48), (10, 20, 30)).save(icon, format="ICO", sizes=[(48, 48)])

    def drip(handler: BaseHTTPRequestHandler, hit: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        for byte in good_jpeg:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.02)

    def stream_big(handler: BaseHTTPRequestHandler, hit: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        handler.wfile.write(good_jpeg[:16])
        for _ in range(40):
            handler.wfile.write(b"\0" * 10_000)

    site.routes.update(
        {
            "/good.jpg": lambda h, hit: send(h, good_jpeg),
            "/good.png": lambda h, hit: send(h, good_png, "image/png"),
            "/png-named.jpg": lambda h, hit: send(h, png_named_jpg, "image/jpeg"),
            "/forbidden.jpg": lambda h, hit: send(h, b"no", "text/plain", status=403),
            "/flaky.jpg": lambda h, hit: (
                send(h, b"oops", "text/plain", status=500) if hit == 1 else send(h, flaky)
            ),
            "/limited.jpg": lambda h, hit: (
                send(h, b"slow down", "text/plain", status=429, headers={"Retry-After": "1"})
                if hit == 1
                else send(h, limited)
            ),
            "/down.jpg": lambda h, hit: send(h, b"down", "text/plain", status=503),
            "/slow.jpg": lambda h, hit: (time.sleep(5.0), send(h, good_jpeg)),
            "/drip.jpg": drip,
            "/redirect.jpg": redirect("/target.jpg"),
            "/target.jpg": lambda h, hit: send(h, target),
            "/loop-a.jpg": redirect("/loop-b.jpg", 301),
            "/loop-b.jpg": redirect("/loop-a.jpg", 307),
            "/hop/": lambda h, hit: send(
                h,
                b"",
                "text/plain",
                status=302,
                headers={"Location": f"/hop/{int(h.path.split('/')[-1]) + 1}"},
            ),
            "/to-file.jpg": redirect("file:///etc/passwd"),
            "/page.jpg": lambda h, hit: send(h, b"<!DOCTYPE html><html><body>Not here</body></html>"),
            "/truncated.jpg": lambda h, hit: send(h, truncated[: len(truncated) // 2]),
            "/huge-declared.jpg": lambda h, hit: send(h, good_jpeg[:16] + b"\0" * 250_000),
            "/huge-stream.jpg": stream_big,
            "/dup-a.jpg": lambda h, hit: send(h, duplicate),
            "/dup-b.jpg": lambda h, hit: send(h, duplicate),
            "/tiny.png": lambda h, hit: send(h, image_bytes("PNG", (8, 8), seed=9), "image/png"),
            "/icon.ico": lambda h, hit: send(h, icon.getvalue(), "image/x-icon"),
        }
    )
    expected = {
        "/good.jpg": Outcome.OK,
        "/good.png": Outcome.OK,
        "/png-named.jpg": Outcome.OK,
        "/missing.jpg": Outcome.HTTP_ERROR,
        "/forbidden.jpg": Outcome.HTTP_ERROR,
        "/flaky.jpg": Outcome.OK,
        "/limited.jpg": Outcome.OK,
        "/down.jpg": Outcome.HTTP_ERROR,
        "/slow.jpg": Outcome.TIMEOUT,
        "/drip.jpg": Outcome.TIMEOUT,
        "/redirect.jpg": Outcome.OK,
        "/loop-a.jpg": Outcome.REDIRECT_LOOP,
        "/hop/0": Outcome.TOO_MANY_REDIRECTS,
        "/to-file.jpg": Outcome.BAD_URL,
        "/page.jpg": Outcome.NOT_AN_IMAGE,
        "/truncated.jpg": Outcome.BROKEN_IMAGE,
        "/huge-declared.jpg": Outcome.TOO_LARGE,
        "/huge-stream.jpg": Outcome.TOO_LARGE,
        "/tiny.png": Outcome.TOO_SMALL,
        "/icon.ico": Outcome.UNSUPPORTED_FORMAT,
    }
    refused = f"http://127.0.0.1:{free_port()}/nothing.jpg"
    bad_urls = [
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "ftp://127.0.0.1/x.jpg",
        "http://",
    ]
    candidates = [Candidate(site.url(path), "sedan", {"rank": i}) for i, path in enumerate(expected)]
    candidates += [Candidate(site.url("/dup-a.jpg"), "sedan"), Candidate(site.url("/dup-b.jpg"), "suv")]
    candidates += [Candidate(url, "suv") for url in [refused, *bad_urls]]

    started = time.monotonic()
    summary = collect_images(candidates, tmp_path / "out", fast_config(), progress=False)
    elapsed = time.monotonic() - started
    out = tmp_path / "out"
    records = {record["url"]: record for record in manifest_lines(out)}

    assert len(records) == len(candidates) == summary.total == summary.fetched
    for path, outcome in expected.items():
        assert records[site.url(path)]["outcome"] == outcome, (path, records[site.url(path)])
    for url in bad_urls:
        assert records[url]["outcome"] == Outcome.BAD_URL and records[url]["attempts"] == 0
    assert records[refused]["outcome"] == Outcome.CONNECTION_ERROR
    assert records[refused]["attempts"] == 2

    def record(path: str) -> dict:
        return records[site.url(path)]

    # the good ones: stored once under their label, named by the real format, bytes intact
    for path, body, extension in [
        ("/good.jpg", good_jpeg, ".jpg"),
        ("/good.png", good_png, ".png"),
        ("/png-named.jpg", png_named_jpg, ".png"),
        ("/flaky.jpg", flaky, ".jpg"),
        ("/limited.jpg", limited, ".jpg"),
        ("/redirect.jpg", target, ".jpg"),
    ]:
        entry = record(path)
        assert entry["path"].startswith("sedan/") and entry["path"].endswith(extension)
        assert (out / entry["path"]).read_bytes() == body
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    assert record("/good.png")["width"] == 70 and record("/good.png")["height"] == 50
    assert record("/good.jpg")["extra"] == {"rank": 0}

    # retries: 500 and 429 succeed on the second try; 429 waited for Retry-After; 503 gave up
    assert record("/flaky.jpg")["attempts"] == 2 and site.hits["/flaky.jpg"] == 2
    assert record("/limited.jpg")["attempts"] == 2 and record("/limited.jpg")["seconds"] >= 0.9
    assert record("/down.jpg")["http_status"] == 503 and site.hits["/down.jpg"] == 2
    # no retry on 404/403
    assert record("/missing.jpg")["http_status"] == 404 and site.hits["/missing.jpg"] == 1
    assert record("/forbidden.jpg")["http_status"] == 403 and site.hits["/forbidden.jpg"] == 1
    # timeouts: a silent server and a slow-drip body, both retried once
    assert "read_timeout" in record("/slow.jpg")["message"] and site.hits["/slow.jpg"] == 2
    assert "total_timeout" in record("/drip.jpg")["message"] and site.hits["/drip.jpg"] == 2
    # redirects are reported
    assert record("/redirect.jpg")["redirects"] == [site.url("/target.jpg")]
    assert record("/redirect.jpg")["final_url"] == site.url("/target.jpg")
    assert record("/loop-a.jpg")["redirects"] == [site.url("/loop-b.jpg"), site.url("/loop-a.jpg")]
    assert len(record("/hop/0")["redirects"]) == 4  # max_redirects=3 hops followed, the 4th refused
    assert "file:" in record("/to-file.jpg")["message"] and "/etc/passwd" in record("/to-file.jpg")["message"]
    # content checks
    assert "HTML page" in record("/page.jpg")["message"] and "stopped" in record("/page.jpg")["message"]
    assert "Content-Length" in record("/huge-declared.jpg")["message"]
    assert "no Content-Length" in record("/huge-stream.jpg")["message"]
    assert record("/tiny.png")["width"] == 8
    assert record("/icon.ico")["format"] == "ICO"
    # the exact duplicate is stored once; the second URL points at the first's file
    pair = [record("/dup-a.jpg"), record("/dup-b.jpg")]
    assert sorted(entry["outcome"] for entry in pair) == [Outcome.DUPLICATE, Outcome.OK]
    first, second = sorted(pair, key=lambda entry: entry["outcome"] != Outcome.OK)
    assert second["path"] == first["path"] and second["duplicate_of"] == first["url"]

    # the disk holds exactly the ok files, nothing half-written
    ok_paths = {r["path"] for r in records.values() if r["outcome"] == Outcome.OK}
    assert stored_files(out) == ok_paths
    # the summary agrees with the manifest
    assert summary.counts == dict(Counter(r["outcome"] for r in records.values()))
    assert summary.labels["suv"] == dict(
        Counter(r["outcome"] for r in records.values() if r["label"] == "suv")
    )
    assert json.loads((out / SUMMARY_NAME).read_text())["counts"] == summary.counts
    assert all(agent.startswith("carid/") for agent in site.user_agents)
    assert elapsed < 60  # nothing hangs: every request ends at its deadline (not a speed target)


# --- resume ----------------------------------------------------------------------------------


def image_site(site: Site, count: int, prefix: str = "/img/") -> list[str]:
    """Serve `count` distinct JPEGs at prefix0..; returns their URLs."""
    bodies = {f"{prefix}{i}": image_bytes(seed=100 + i) for i in range(count)}
    site.routes[prefix] = lambda h, hit: send(h, bodies[h.path.split("?")[0]])
    return [site.url(path) for path in bodies]


def write_csv(path: Path, rows: list[tuple[str, str]], extra_header: str = "") -> Path:
    lines = ["label,url" + extra_header] + [f"{label},{url}" for label, url in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_interrupted_run_resumes_with_only_the_remaining_urls(site: Site, tmp_path: Path) -> None:
    urls = image_site(site, 8)
    csv_path = write_csv(
        tmp_path / "urls.csv", [("sedan" if i % 2 else "suv", url) for i, url in enumerate(urls)]
    )
    out = tmp_path / "out"
    seen: list[ManifestRecord] = []

    def stop_after_three(record: ManifestRecord) -> None:
        seen.append(record)
        if len(seen) == 3:
            raise KeyboardInterrupt

    config = fast_config(workers=1, per_host=1)
    first = collect([str(csv_path)], out, config=config, progress=False, on_record=stop_after_three)
    assert first.interrupted and first.exit_code() == 130
    done_first = {r["url"] for r in manifest_lines(out)}
    assert 3 <= len(done_first) < 8
    assert first.counts[Outcome.OK] == len(done_first) and first.counts[PENDING] == 8 - len(done_first)
    assert not list(out.rglob("*.part"))
    assert json.loads((out / SUMMARY_NAME).read_text())["interrupted"] is True
    hits_before = Counter(site.hits)

    second = collect([str(csv_path)], out, config=config, progress=False)
    fetched_again = {site.url(path) for path in site.hits if site.hits[path] > hits_before[path]}
    assert fetched_again == set(urls) - done_first
    assert all(site.hits[p] - hits_before[p] <= 1 for p in site.hits)
    assert second.fetched == 8 - len(done_first) and second.skipped == len(done_first)
    assert second.counts == {Outcome.OK: 8} and not second.interrupted and second.exit_code() == 0
    assert len(stored_files(out)) == 8

    # a third run has nothing to do; a deleted file is fetched again, and only that one
    hits_before = Counter(site.hits)
    third = collect([str(csv_path)], out, config=config, progress=False)
    assert third.fetched == 0 and site.hits == hits_before
    victim = read_manifest(out / MANIFEST_NAME).latest[urls[5]]
    (out / victim.path).unlink()
    fourth = collect([str(csv_path)], out, config=config, progress=False)
    assert fourth.fetched == 1 and site.hits["/img/5"] == hits_before["/img/5"] + 1
    assert (out / victim.path).is_file()


def test_failed_urls_are_retried_only_when_asked(site: Site, tmp_path: Path) -> None:
    urls = image_site(site, 2)
    candidates = [Candidate(urls[0], "a"), Candidate(site.url("/gone.jpg"), "a"), Candidate(urls[1], "b")]
    out = tmp_path / "out"
    collect_images(candidates, out, fast_config(), progress=False)
    assert site.hits["/gone.jpg"] == 1
    again = collect_images(candidates, out, fast_config(), progress=False)
    assert site.hits["/gone.jpg"] == 1 and again.fetched == 0
    assert again.counts == {Outcome.OK: 2, Outcome.HTTP_ERROR: 1}  # the failure is remembered
    retried = collect_images(candidates, out, fast_config(), progress=False, retry_failed=True)
    assert site.hits["/gone.jpg"] == 2 and retried.fetched == 1
    assert retried.exit_code() == 0 and retried.exit_code(strict=True) == 1
    lines = manifest_lines(out)
    assert [line["url"] for line in lines].count(site.url("/gone.jpg")) == 2  # appended, last one wins


def test_max_new_fetches_in_batches(site: Site, tmp_path: Path) -> None:
    urls = image_site(site, 5)
    candidates = [Candidate(url, "car") for url in urls]
    out = tmp_path / "out"
    first = collect_images(candidates, out, fast_config(), progress=False, max_new=2)
    assert first.fetched == 2 and first.counts == {Outcome.OK: 2, PENDING: 3}
    assert first.exit_code(strict=True) == 1
    second = collect_images(candidates, out, fast_config(), progress=False)
    assert second.fetched == 3 and sum(site.hits.values()) == 5


def test_real_sigint_stops_cleanly(site: Site, tmp_path: Path) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT has a custom handler in this process")
    urls = image_site(site, 6)
    out = tmp_path / "out"
    count = 0

    def press_ctrl_c(record: ManifestRecord) -> None:
        nonlocal count
        count += 1
        if count == 2:
            signal.raise_signal(signal.SIGINT)

    summary = collect_images(
        [Candidate(url, "car") for url in urls],
        out,
        fast_config(workers=1, per_host=1),
        progress=False,
        on_record=press_ctrl_c,
    )
    assert summary.interrupted
    assert 2 <= summary.fetched < 6
    assert len(stored_files(out)) == summary.fetched
    assert not list(out.rglob("*.part"))
    assert len(manifest_lines(out)) == summary.fetched


def test_label_change_moves_the_file_without_downloading(site: Site, tmp_path: Path) -> None:
    urls = image_site(site, 1)
    out = tmp_path / "out"
    collect_images([Candidate(urls[0], "sedan")], out, fast_config(), progress=False)
    summary = collect_images([Candidate(urls[0], "coupe")], out, fast_config(), progress=False)
    assert site.hits["/img/0"] == 1 and summary.fetched == 0
    record = read_manifest(out / MANIFEST_NAME).latest[urls[0]]
    assert record.label == "coupe" and record.path.startswith("coupe/") and (out / record.path).is_file()
    assert stored_files(out) == {record.path}
    assert any(problem.kind == "relabelled" for problem in summary.problems)


# --- limits, safety and input handling ---------------------------------------------------------


def test_per_host_and_global_concurrency_limits(site: Site, tmp_path: Path) -> None:
    body = image_bytes(seed=50)

    def busy(handler: BaseHTTPRequestHandler, hit: int) -> None:
        with site.lock:
            site.in_flight += 1
            site.max_in_flight = max(site.max_in_flight, site.in_flight)
        time.sleep(0.15)
        with site.lock:
            site.in_flight -= 1
        send(handler, body)

    site.routes["/busy/"] = busy
    candidates = [Candidate(site.url(f"/busy/{i}"), "car") for i in range(6)]
    collect_images(candidates, tmp_path / "a", fast_config(workers=8, per_host=2), progress=False)
    assert site.max_in_flight == 2
    site.max_in_flight = 0
    collect_images(candidates, tmp_path / "b", fast_config(workers=3, per_host=8), progress=False)
    assert site.max_in_flight == 3


def test_labels_cannot_escape_the_output_folder(site: Site, tmp_path: Path) -> None:
    labels = [
        "../../etc",
        "a/b",
        "a_b",
        "..",
        ".",
        "/abs/path",
        "C:\\windows",
        "CON",
        "x\x00y",
        "Citroën C4",
        "ok",
    ]
    urls = image_site(site, len(labels))
    out = tmp_path / "nested" / "out"
    summary = collect_images(
        [Candidate(url, label) for url, label in zip(urls, labels, strict=True)],
        out,
        fast_config(),
        progress=False,
    )
    assert summary.counts == {Outcome.OK: len(labels)}
    records = read_manifest(out / MANIFEST_NAME).latest
    folders = {records[url].folder for url in urls}
    assert len(folders) == len(labels)  # distinct labels, distinct folders ("a/b" vs "a_b")
    for url, label in zip(urls, labels, strict=True):
        record = records[url]
        assert record.label == label  # the original label is kept
        stored = (out / record.path).resolve()
        assert stored.parent.parent == out.resolve() and stored.is_file()
        assert "/" not in record.folder and "\\" not in record.folder and record.folder not in (".", "..")
    assert records[urls[-1]].folder == "ok" and records[urls[-2]].folder.startswith("Citroën C4")
    assert {p.name for p in tmp_path.rglob("*") if p.is_dir()} >= {"nested", "out"}
    assert not (tmp_path / "etc").exists() and not (tmp_path / "nested" / "etc").exists()


def test_csv_input_blank_lines_duplicates_and_extra_columns(site: Site, tmp_path: Path) -> None:
    urls = image_site(site, 3)
    csv_path = tmp_path / "urls.csv"
    csv_path.write_text(
        "\ufefflabel,url,licence\n"
        f"sedan,{urls[0]},cc-by\n"
        "\n"
        f"sedan,{urls[0]},cc-by\n"
        f"suv,{urls[0]},cc0\n"
        f"suv,{urls[1]},cc0\n"
        ",http://example.invalid/nolabel.jpg,x\n"
        "suv,,x\n"
        f"coupe,{urls[2]}\n",
        encoding="utf-8",
    )
    summary = collect([str(csv_path)], tmp_path / "out", config=fast_config(), progress=False)
    assert summary.total == 3 and summary.counts == {Outcome.OK: 3}
    kinds = Counter(problem.kind for problem in summary.problems)
    assert kinds == {"repeated_url": 1, "conflicting_label": 1, "missing_label": 1, "missing_url": 1}
    conflict = next(p for p in summary.problems if p.kind == "conflicting_label")
    assert "line 5" in conflict.source and "kept 'sedan'" in conflict.message
    records = read_manifest(tmp_path / "out" / MANIFEST_NAME).latest
    assert records[urls[0]].extra == {"licence": "cc-by"} and records[urls[0]].origin.endswith("line 2")
    assert records[urls[2]].extra == {"licence": ""}
    assert site.hits["/img/0"] == 1


def test_second_writer_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    from carid.data.collect import CollectError
    from carid.data.collect.manifest import ManifestWriter

    with ManifestWriter(tmp_path / MANIFEST_NAME), pytest.raises(CollectError, match="another collection"):
        collect_images([Candidate("data:,x", "a")], tmp_path, fast_config(), progress=False)


def test_out_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from carid.data.collect import CollectError

    (tmp_path / "file").write_text("x")
    with pytest.raises(CollectError, match="not a folder"):
        collect_images([], tmp_path / "file", fast_config(), progress=False)


def test_retry_after_date_pauses_the_host(site: Site, tmp_path: Path) -> None:
    body = image_bytes(seed=60)
    site.routes["/date.jpg"] = lambda h, hit: (
        send(h, b"", "text/plain", status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
        if hit == 1
        else send(h, body)
    )
    summary = collect_images([Candidate(site.url("/date.jpg"), "a")], tmp_path, fast_config(), progress=False)
    assert summary.counts == {Outcome.OK: 1} and site.hits["/date.jpg"] == 2  # a past date: retry at once


def test_retry_after_beyond_the_cap_is_not_waited_for(site: Site, tmp_path: Path) -> None:
    site.routes["/later.jpg"] = lambda h, hit: send(
        h, b"", "text/plain", status=429, headers={"Retry-After": "3600"}
    )
    started = time.monotonic()
    collect_images([Candidate(site.url("/later.jpg"), "a")], tmp_path, fast_config(), progress=False)
    record = read_manifest(tmp_path / MANIFEST_NAME).latest[site.url("/later.jpg")]
    assert record.outcome is Outcome.HTTP_ERROR and "exceeds max_retry_after" in record.message
    assert site.hits["/later.jpg"] == 1 and time.monotonic() - started < 3
