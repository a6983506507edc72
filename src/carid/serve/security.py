"""What an exposed `carid serve` refuses before a request reaches an endpoint (pure ASGI middleware).

    PageHeaders         nosniff on every answer; the content security policy on the web page
    TrustedHosts        a Host header not in the allowed names -> 400 `invalid_host` (DNS rebinding)
    ApiKeyGuard         no or a wrong `X-API-Key` -> 401 `missing_api_key` / `invalid_api_key`
                        (constant-time compare); GET /health and the web page's files stay open
    ConcurrencyLimit    more than `RequestCount.limit` requests at once (uploads still arriving
                        included) -> 503 `busy` at once, without reading the body
    BodyTimeout         a body not complete `seconds` after the headers -> 408 `body_timeout`

Every refusal is the API's JSON error ({"error": {"code", "message"}}). Refusals sent before the
body is read say `Connection: close`, so that the client stops sending and opens a new connection
for its next request. The header timeout is the connection's business, not the app's: see
`carid.serve.server.GuardedH11Protocol`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException

from carid.serve.limits import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("carid.serve")

API_KEY_HEADER = "X-API-Key"
# Open without a key: the liveness probe and the web page (which asks for the key itself).
OPEN_PATHS = frozenset({"/health", "/", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
UNCOUNTED_PATHS = frozenset({"/health"})
# The page loads nothing from elsewhere; the policy makes sure of it. (/docs is left out: Swagger
# UI loads its script and style from a CDN.)
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


async def send_error(
    send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    """Answer with the API's JSON error and `Connection: close` (sent before the body was read)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")
    extra = [(key.lower().encode("ascii"), value.encode("latin-1")) for key, value in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
                (b"x-content-type-options", b"nosniff"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of request header `name` (lower case)."""
    return [value for key, value in scope.get("headers", []) if key == name]


class PageHeaders:
    """nosniff on every answer; the content policy and no referrer on the web page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        is_page = path == "/" or path.startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if is_page:
                    headers["Content-Security-Policy"] = PAGE_CSP
                    headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def host_name(value: str) -> str:
    """The host part of a Host header value: "Example.org:8000" -> "example.org", "[::1]:80" -> "::1"."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """`host` matches a name of `allowed` exactly or a "*.domain" pattern (the domain and below)."""
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or host == pattern.strip("[]"):
            return True
        if pattern.startswith("*.") and (host == pattern[2:] or host.endswith(pattern[1:])):
            return True
    return False


class TrustedHosts:
    """Refuse (400 `invalid_host`) a request whose Host header is not an allowed name.

    A page on another site can make a browser send requests to a server on this machine by
    pointing its own domain at 127.0.0.1 (DNS rebinding); the browser still sends the attacker's
    domain as Host, which this refuses. Starlette's TrustedHostMiddleware does the same with a
    plain-text answer; this one answers the API's JSON error.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        values = header(scope, b"host")
        host = host_name(values[0].decode("latin-1")) if len(values) == 1 else ""
        if not host_allowed(host, self.allowed_hosts):
            shown = host[:100] or ("several Host headers" if values else "no Host header")
            message = (
                f"this server does not answer to the host name {shown!r}; it answers to "
                f"{', '.join(self.allowed_hosts)} (carid serve --allowed-hosts)"
            )
            await send_error(send, 400, "invalid_host", message)
            return
        await self.app(scope, receive, send)


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKeyGuard:
    """Every request but the open paths must carry the key in `X-API-Key` (401 otherwise).

    The comparison takes the same time whatever the key sent (hmac.compare_digest), so the key
    cannot be guessed a character at a time from answer times.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        given = header(scope, API_KEY_HEADER.lower().encode("ascii"))
        if len(given) != 1 or not hmac.compare_digest(given[0], self.key):
            code = "missing_api_key" if not given else "invalid_api_key"
            problem = "no API key was sent" if not given else "the API key is wrong"
            message = f"{problem}: send the server's key in the {API_KEY_HEADER} header"
            challenge = {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'}
            await send_error(send, 401, code, message, challenge)
            return
        await self.app(scope, receive, send)


@dataclass
class RequestCount:
    """Requests in progress in this process and the most allowed (shared with GET /health)."""

    limit: int
    active: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"active": self.active, "limit": self.limit}


class ConcurrencyLimit:
    """At most `count.limit` requests in this process at once, counted from their headers to their
    answer (a slow upload holds its place while it arrives); beyond that, 503 `busy` at once,
    without reading the body. GET /health is not counted, so a probe can tell busy from dead."""

    def __init__(self, app: ASGIApp, count: RequestCount) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNCOUNTED_PATHS:
            await self.app(scope, receive, send)
            return
        count = self.count
        if count.active >= count.limit:
            message = f"the server is handling {count.active} requests, its limit; retry shortly"
            await send_error(send, 503, "busy", message, {"Retry-After": "1"})
            return
        count.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            count.active -= 1


class BodyTooSlow(HTTPException):
    """Raised from inside the body stream when the body is late; like `limits.BodyTooLarge`, FastAPI
    re-raises it from the form parser and the app's HTTPException handler answers the JSON 408."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            status_code=408,
            detail=f"the request body did not arrive within {seconds:g} s; send it faster, or a smaller file",
            headers={"Connection": "close"},
        )


class BodyTimeout:
    """The whole body must arrive within `seconds` of the headers (a deadline, not an idle timer:
    a client dribbling a byte a second cannot stretch it). Once the body is complete, later
    `receive` calls (waiting for a disconnect) are not timed."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                message: dict[str, Any] = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                log.info("%s %s: no complete body after %g s", scope["method"], scope["path"], self.seconds)
                raise BodyTooSlow(self.seconds) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)
