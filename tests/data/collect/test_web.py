"""The collector's pure helpers: URL screening, image signatures, Retry-After and host interleaving."""

from __future__ import annotations

import pytest

from carid.data.collect import Candidate, parse_retry_after, sniff_image_format, url_problem
from tests.data.collect.local_site import image_bytes


@pytest.mark.parametrize(
    ("url", "fine"),
    [
        ("http://example.com/a.jpg", True),
        ("https://example.com/a.jpg?x=1", True),
        ("file:///etc/passwd", False),
        ("data:image/png;base64,AAAA", False),
        ("ftp://example.com/a.jpg", False),
        ("//example.com/a.jpg", False),
        ("http://", False),
        ("not a url", False),
        ("javascript:alert(1)", False),
    ],
)
def test_url_problem(url: str, fine: bool) -> None:
    assert (url_problem(url) is None) is fine


def test_sniff_image_format_reads_signatures_not_names() -> None:
    assert sniff_image_format(image_bytes("JPEG")) == "JPEG"
    assert sniff_image_format(image_bytes("PNG")) == "PNG"
    assert sniff_image_format(image_bytes("GIF")) == "GIF"
    assert sniff_image_format(image_bytes("WEBP")) == "WEBP"
    assert sniff_image_format(image_bytes("BMP")) == "BMP"
    assert sniff_image_format(image_bytes("TIFF")) == "TIFF"
    assert sniff_image_format(b"<!DOCTYPE html><html>") is None
    assert sniff_image_format(b"") is None


def test_parse_retry_after() -> None:
    from datetime import UTC, datetime

    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_interleave_by_host_takes_hosts_in_turn() -> None:
    from carid.data.collect.web import interleave_by_host

    urls = ["http://a/1", "http://a/2", "http://a/3", "http://b/1", "http://c/1", "http://c/2", "nonsense"]
    ordered = [c.url for c in interleave_by_host([Candidate(url, "x") for url in urls])]
    assert ordered == [
        "http://a/1",
        "http://b/1",
        "http://c/1",
        "nonsense",
        "http://a/2",
        "http://c/2",
        "http://a/3",
    ]
