"""How `carid serve` runs: `ServeSettings` (the one place for its defaults; the CLI only overrides)
and the two settings that depend on where the server runs:

    allowed_hosts_for(settings) -> tuple[str, ...] | None   the Host names the server answers to
        (given, else the localhost names when it listens on a loopback address, else any)
    api_key_for(settings, environ) -> str | None             the API key requests must carry
        (from the variable named by `api_key_env`, else from CARID_API_KEY when that is set)

The key itself is never a setting: it comes from the environment only, so it is not on the
command line (`ps`), in `ServeSettings.to_dict()` or in any answer.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from carid.errors import CaridError
from carid.runtime.backends import BACKENDS
from carid.runtime.tta import TTA_MODES
from carid.serve.limits import DEFAULT_MAX_PIXELS, MEGABYTE, UploadLimits

ENV_API_KEY = "CARID_API_KEY"
MIN_API_KEY_LENGTH = 16
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_HOST_PATTERN = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9_.:\[\]-]+)$")


class ServeError(CaridError, ValueError):
    """A server that cannot start as asked (bad setting, port in use); the message says what to change."""


@dataclass(frozen=True)
class ServeSettings:
    """How `carid serve` runs. The one place for its defaults; the CLI only overrides.

    host, port: where to listen (127.0.0.1: this machine only).
    workers: server processes, each with its own copy of the model.
    backend: "auto", "onnx" or "torch" (`Predictor.load`); threads: inference threads (None: the
        runtime's default, every core).
    tta: "none" or "hflip" (each upload and its mirror image are scored and averaged, at twice
        the inference time; `carid.runtime.tta`).
    max_upload_mb: largest photo accepted, in MiB; max_pixels: largest width x height accepted.
    top_k: classes listed when a request does not say; max_top_k: the most a request may ask.
    inference_slots: inferences run at once per process; max_waiting: requests that may queue
        behind them before the server answers 503.
    explain: offer Grad-CAM overlays (only possible on the torch backend).
    warmup: run one blank batch at startup so the first request is not slow.
    header_timeout: seconds a client has to send a request's headers (from its first byte, or
        from the connection's start); then the connection is closed (slow-loris clients).
    body_timeout: seconds a client has to send a request's body once its headers are in; then
        the answer is 408 and the connection is closed.
    keep_alive_timeout: seconds an idle keep-alive connection stays open between requests.
    concurrency_limit: requests handled at once per process, uploads still arriving included
        (GET /health not counted); beyond it the answer is 503 at once.
    api_key_env: the environment variable holding the API key every request but GET /health and
        the web page's files must send in `X-API-Key`; None: CARID_API_KEY when it is set, else
        no key.
    allowed_hosts: the Host header values answered ("example.org", "*.example.org", "*": any);
        others get 400. None: the localhost names when listening on a loopback address, else any
        (`allowed_hosts_for`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    backend: str = "auto"
    threads: int | None = None
    tta: str = "none"
    max_upload_mb: float = 10.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    top_k: int = 5
    max_top_k: int = 100
    inference_slots: int = 1
    max_waiting: int = 64
    explain: bool = True
    warmup: bool = True
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    concurrency_limit: int = 100
    api_key_env: str | None = None
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.allowed_hosts is not None and not isinstance(self.allowed_hosts, tuple):
            object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))  # from JSON: a list
        problems = []
        if not self.host:
            problems.append("host must not be empty")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        for name in ("workers", "max_pixels", "top_k", "max_top_k", "inference_slots", "concurrency_limit"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_waiting < 0:
            problems.append(f"max_waiting must be >= 0, got {self.max_waiting}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
        for name in ("max_upload_mb", "header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.tta not in TTA_MODES:
            problems.append(f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")
        if self.top_k > self.max_top_k:
            problems.append(f"top_k ({self.top_k}) must not exceed max_top_k ({self.max_top_k})")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            problems.append(f"api_key_env must name an environment variable, got {self.api_key_env!r}")
        bad_hosts = [name for name in self.allowed_hosts or () if not _HOST_PATTERN.match(name)]
        if self.allowed_hosts is not None and (bad_hosts or not self.allowed_hosts):
            problems.append(
                "allowed_hosts must be host names such as example.org, *.example.org or *, "
                f"got {list(self.allowed_hosts)!r}"
            )
        if problems:
            raise ServeError("serve settings: " + "; ".join(problems))

    @property
    def max_upload_bytes(self) -> int:
        return round(self.max_upload_mb * MEGABYTE)

    def limits(self) -> UploadLimits:
        return UploadLimits(max_upload_bytes=self.max_upload_bytes, max_pixels=self.max_pixels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeSettings:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ServeError(f"serve settings: unknown key(s) {', '.join(unknown)}")
        return cls(**data)


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(settings: ServeSettings) -> tuple[str, ...] | None:
    """The Host names to answer: `settings.allowed_hosts`, else the localhost names when the server
    listens on a loopback address (a web page elsewhere cannot reach it through DNS rebinding),
    else None (any: the server cannot know its public names; set --allowed-hosts)."""
    if settings.allowed_hosts is not None:
        return None if "*" in settings.allowed_hosts else settings.allowed_hosts
    if is_loopback(settings.host):
        return tuple(dict.fromkeys((*LOCAL_HOSTS, settings.host.strip("[]"))))
    return None


def api_key_for(settings: ServeSettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key requests must send, or None. Raises ServeError when `api_key_env` names a variable
    that is unset or empty, or when the key is shorter than MIN_API_KEY_LENGTH characters."""
    environ = os.environ if environ is None else environ
    variable = settings.api_key_env or ENV_API_KEY
    key = environ.get(variable, "")
    if not key:
        if settings.api_key_env is not None:
            raise ServeError(f"--api-key-env {variable}: the environment variable {variable} is not set")
        return None
    if len(key) < MIN_API_KEY_LENGTH:
        raise ServeError(
            f"the API key in {variable} is {len(key)} characters; use at least {MIN_API_KEY_LENGTH}, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key
