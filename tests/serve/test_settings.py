"""Tests for carid.serve.settings: the protection settings are checked and survive the JSON round trip
that hands them to worker processes (the API key and the allowed hosts: tests/serve/test_security.py)."""

from __future__ import annotations

import json

import pytest

from carid.serve.settings import ServeError, ServeSettings, is_loopback


def test_protection_defaults_are_sane() -> None:
    settings = ServeSettings()
    assert 0 < settings.header_timeout <= 30 and 0 < settings.body_timeout <= 120
    assert 0 < settings.keep_alive_timeout <= settings.header_timeout
    assert settings.concurrency_limit > settings.inference_slots + settings.max_waiting
    assert settings.api_key_env is None and settings.allowed_hosts is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"header_timeout": 0}, "header_timeout must be > 0"),
        ({"body_timeout": -1}, "body_timeout must be > 0"),
        ({"keep_alive_timeout": 0}, "keep_alive_timeout must be > 0"),
        ({"concurrency_limit": 0}, "concurrency_limit must be >= 1"),
        ({"allowed_hosts": ()}, "allowed_hosts must be host names"),
        ({"allowed_hosts": ("ok.example", "bad host/")}, "allowed_hosts must be host names"),
        ({"api_key_env": "1NOPE"}, "api_key_env must name an environment variable"),
    ],
)
def test_bad_protection_settings_are_refused(changes: dict, problem: str) -> None:
    with pytest.raises(ServeError, match=problem):
        ServeSettings(**changes)


def test_settings_survive_the_trip_to_the_workers() -> None:
    hosts = ("a.example", "*.b.example")
    settings = ServeSettings(header_timeout=3.5, concurrency_limit=9, api_key_env="KEY", allowed_hosts=hosts)
    again = ServeSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert again == settings and again.allowed_hosts == hosts


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org"):
        assert not is_loopback(host), host


def test_settings_are_checked() -> None:
    with pytest.raises(ServeError, match=r"port must be in 0\.\.65535"):
        ServeSettings(port=70000)
    with pytest.raises(ServeError, match=r"max_upload_mb must be > 0.*backend must be one of"):
        ServeSettings(max_upload_mb=0, backend="tensorflow")
    with pytest.raises(ServeError, match="tta must be one of none, hflip, got 'vflip'"):
        ServeSettings(tta="vflip")
    with pytest.raises(ServeError, match="unknown key"):
        ServeSettings.from_dict({"model": "/elsewhere"})
    settings = ServeSettings(max_upload_mb=2.5, workers=2)
    assert ServeSettings.from_dict(settings.to_dict()) == settings
    assert settings.limits().max_upload_bytes == int(2.5 * 1024 * 1024)
