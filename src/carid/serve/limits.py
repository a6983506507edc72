"""What an upload to `POST /predict` must be: size, type (sniffed from the bytes) and pixel count.

    check_upload(data, name, limits) -> UploadInfo(format, media_type, width, height, size_bytes)
        raises UploadError(status, code, message) for an empty file (400), a file that is too large
        (413), bytes that are no supported image (415), a header that cannot be read (422) and an
        image with too many pixels (413, a decompression bomb)

The type is decided from the file's first bytes (magic numbers) and then Pillow's reading of the
header, never from the client's Content-Type or file name. The pixel count comes from the header
alone (`carid.images.probe_image(decode=False)`), so a 30000 x 30000 PNG of a few hundred bytes
is refused before a single row is decoded. Full decoding (and so the detection of a truncated file)
happens once, in the predictor; the API maps its decode errors to 422.

    decode_failure(name, exc) -> UploadError | None
        the 4xx for an exception Pillow raised on the upload's bytes (Pillow raises ValueError,
        SyntaxError, struct.error, EOFError, DecompressionBombError, ... for broken files, and
        `carid.images` turns only some of them into ImageError); None for any other exception,
        which is the server's fault (a 500)

`read_limited` reads an upload in chunks and stops as soon as it passes the limit, and
`BodyLimitMiddleware` caps the whole request body while it streams in (the Content-Length header is
checked first, but not trusted: a chunked or lying request is cut off at the limit too). Starlette's
multipart parser caps text fields but not file parts, hence this small middleware.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image
from starlette.exceptions import HTTPException

from carid.errors import CaridError
from carid.images import PILLOW_ERRORS, ImageError, probe_image

MEGABYTE = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 10 * MEGABYTE
DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP: larger than any phone's default photo, ~150 MB decoded as RGB
# Formats whose decoder needs far more memory per pixel than the others: Pillow's WebP decoder holds
# about 15 bytes per pixel (libwebp's canvas, the frame's bytes, the image), 244 MB at 16 MP
# (benchmarks/RESULTS.md, "Decoding a big upload"), so WebP uploads stop at 16 MP.
FORMAT_MAX_PIXELS: dict[str, int] = {"WEBP": 16_000_000}
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and small fields around the file
READ_CHUNK_BYTES = 256 * 1024

# Pillow format name -> media type, for the formats the server accepts.
MEDIA_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # a JPEG with extra frames (some cameras); the first frame is used
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
ACCEPTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"

# Formats Pillow could open but the server does not take (ICO, PSD, PPM, ...) never get past the
# magic-number test below, so the decoders that parse them are never reached from the network.
_MAGIC: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("JPEG", lambda head: head.startswith(b"\xff\xd8\xff")),
    ("PNG", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    ("GIF", lambda head: head[:6] in (b"GIF87a", b"GIF89a")),
    ("WEBP", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
    ("BMP", lambda head: head[:2] == b"BM" and len(head) >= 26),
    ("TIFF", lambda head: head[:4] in (b"II*\x00", b"MM\x00*")),
)

# Common things people upload by mistake, to say what the bytes are instead of only what they are not.
_KNOWN_OTHER: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("a HEIC/HEIF or AVIF photo (convert it to JPEG)", lambda head: head[4:8] == b"ftyp"),
    ("a PDF document", lambda head: head.startswith(b"%PDF")),
    ("a ZIP archive", lambda head: head.startswith(b"PK\x03\x04")),
    (
        "an SVG or HTML document",
        lambda head: head.lstrip()[:5].lower() in (b"<svg ", b"<?xml", b"<!doc", b"<html"),
    ),
)


class ApiError(CaridError):
    """An error answer of the API: HTTP status, a stable machine-readable code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the error response: {"error": {"code": ..., "message": ...}}."""
        return {"error": {"code": self.code, "message": self.message}}


class UploadError(ApiError, ValueError):
    """An upload the server refuses (4xx); the message names the file and the problem."""


@dataclass(frozen=True)
class UploadLimits:
    """max_upload_bytes: largest file accepted; max_pixels: largest width x height accepted (lower
    for the formats of FORMAT_MAX_PIXELS: `pixels_for`)."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be >= 1, got {self.max_upload_bytes}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")

    def pixels_for(self, fmt: str) -> int:
        """The largest width x height accepted for Pillow format `fmt`."""
        return min(self.max_pixels, FORMAT_MAX_PIXELS.get(fmt, self.max_pixels))

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
            "max_pixels_by_type": {MEDIA_TYPES[fmt]: self.pixels_for(fmt) for fmt in FORMAT_MAX_PIXELS},
            "accepted_media_types": sorted(set(MEDIA_TYPES.values())),
        }


@dataclass(frozen=True)
class UploadInfo:
    """An accepted upload: Pillow format, media type, (width, height) from the header, bytes."""

    format: str
    media_type: str
    width: int
    height: int
    size_bytes: int


def describe_size(size_bytes: int) -> str:
    """Bytes as a short human figure: "812 B", "3.4 MB"."""
    if size_bytes < 1024:
        return f"{size_bytes} B"
    if size_bytes < MEGABYTE:
        return f"{size_bytes / 1024:.1f} KB"
    return f"{size_bytes / MEGABYTE:.1f} MB"


def too_large(name: str, limit_bytes: int, size_bytes: int | None = None) -> UploadError:
    found = "" if size_bytes is None else f" ({describe_size(size_bytes)})"
    return UploadError(
        413,
        "file_too_large",
        f"{name}: the file is too large{found}; the limit is {describe_size(limit_bytes)}",
    )


def sniff_format(data: bytes) -> str | None:
    """The accepted image format the first bytes announce (a Pillow format name), else None."""
    head = data[:32]
    return next((fmt for fmt, matches in _MAGIC if matches(head)), None)


def describe_bytes(data: bytes) -> str:
    """What unaccepted bytes look like: "a PDF document", "text", or "binary data"."""
    head = data[:64]
    known = next((what for what, matches in _KNOWN_OTHER if matches(head)), None)
    if known:
        return known
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of an unknown kind"
    return "text"


_IMAGE_ERROR_STATUS = {
    "not_an_image": (422, "unreadable_image"),  # the magic number said image, the header disagrees
    "truncated_image": (422, "truncated_image"),
    "unreadable_image": (422, "unreadable_image"),
    "too_many_pixels": (413, "too_many_pixels"),
}


# What Pillow raises for bytes it cannot parse (besides ImageError, which `carid.images` raises).
DECODE_ERRORS: tuple[type[BaseException], ...] = (*PILLOW_ERRORS, MemoryError, Image.DecompressionBombError)
_MESSAGE_CHARS = 200


def raised_in_pillow(exc: BaseException) -> bool:
    """True when the exception came out of Pillow's code (a frame of the PIL package raised it or
    passed it on): the bytes being decoded caused it, not the model or the server."""
    trace = exc.__traceback__
    while trace is not None:
        if str(trace.tb_frame.f_globals.get("__name__", "")).startswith("PIL."):
            return True
        trace = trace.tb_next
    return False


def decode_failure(name: str, exc: BaseException, in_pillow_only: bool = False) -> UploadError | None:
    """The 4xx for an exception raised while Pillow read the upload called `name`: 413 for a
    decompression bomb or an image too large to hold, 422 otherwise (the message names the file,
    the exception type and Pillow's reason). None when `exc` is not such an exception (with
    `in_pillow_only`: also when it was not raised inside Pillow)."""
    if not isinstance(exc, DECODE_ERRORS) or (in_pillow_only and not raised_in_pillow(exc)):
        return None
    reason = " ".join(str(exc).split())[:_MESSAGE_CHARS] or "no reason given"
    if isinstance(exc, Image.DecompressionBombError | MemoryError):
        return UploadError(413, "too_many_pixels", f"{name}: the image is too large to decode ({reason})")
    code = "truncated_image" if "truncated" in reason.lower() else "unreadable_image"
    return UploadError(422, code, f"{name}: cannot decode the image ({type(exc).__name__}: {reason})")


def check_upload(data: bytes, name: str, limits: UploadLimits) -> UploadInfo:
    """Accept or refuse an uploaded file from its bytes: size, magic number, header, pixel count.

    Decodes no pixel data (Pillow reads the header only). Raises UploadError.
    """
    if not data:
        raise UploadError(400, "empty_file", f"{name}: the file is empty (0 bytes); send the photo's bytes")
    if len(data) > limits.max_upload_bytes:
        raise too_large(name, limits.max_upload_bytes, len(data))
    expected = sniff_format(data)
    if expected is None:
        raise UploadError(
            415,
            "unsupported_media_type",
            f"{name}: not a {ACCEPTED} image (the bytes look like {describe_bytes(data)})",
        )
    try:
        info = probe_image(data, name=name, decode=False)
    except ImageError as exc:
        status, code = _IMAGE_ERROR_STATUS.get(exc.kind, (422, "unreadable_image"))
        if code == "too_many_pixels":
            raise UploadError(
                status, code, f"{name}: the image has too many pixels; the limit is {limits.max_pixels:,}"
            ) from None
        raise UploadError(status, code, f"{name}: {exc.reason}") from None
    except DECODE_ERRORS as exc:  # Pillow's other errors on a broken header (ValueError, SyntaxError, ...)
        failure = decode_failure(name, exc)
        assert failure is not None
        raise failure from None
    if info.format not in MEDIA_TYPES:
        raise UploadError(
            415, "unsupported_media_type", f"{name}: {info.format} images are not accepted; send {ACCEPTED}"
        )
    pixels, limit = info.width * info.height, limits.pixels_for(info.format)
    if pixels > limit:
        which = "" if limit == limits.max_pixels else f" for {info.format} images"
        raise UploadError(
            413,
            "too_many_pixels",
            f"{name}: {info.width}x{info.height} is {pixels:,} pixels; the limit{which} is {limit:,}",
        )
    if info.width < 1 or info.height < 1:
        raise UploadError(422, "unreadable_image", f"{name}: the image is {info.width}x{info.height} pixels")
    return UploadInfo(info.format, MEDIA_TYPES[info.format], info.width, info.height, len(data))


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f]")


def upload_name(filename: str | None, fallback: str = "upload", max_length: int = 100) -> str:
    """A client's file name made safe to show: its last path part, no control characters, shortened.

    The name is only ever displayed (messages, `Prediction.source`); no file is opened by it.
    """
    if not filename:
        return fallback
    base = _UNSAFE_NAME.sub("", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if not base:
        return fallback
    return base if len(base) <= max_length else base[: max_length - 1] + "…"


class AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


async def read_limited(upload: AsyncReadable, limit_bytes: int, name: str) -> bytes:
    """Read an uploaded file in chunks, refusing it (413) as soon as it passes `limit_bytes`."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await upload.read(READ_CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit_bytes:
            raise too_large(name, limit_bytes)
        chunks.append(chunk)


# --- the request body cap -------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def body_too_large(file_limit_bytes: int) -> str:
    return (
        f"the upload is too large; the limit is {describe_size(file_limit_bytes)} for the photo "
        f"(plus {describe_size(MULTIPART_OVERHEAD_BYTES)} for the multipart framing)"
    )


class BodyTooLarge(HTTPException):
    """Raised from inside the body stream; FastAPI re-raises HTTPExceptions met while parsing a form,
    so the app's HTTPException handler turns it into the 413 JSON error (code "file_too_large")."""

    def __init__(self, file_limit_bytes: int) -> None:
        super().__init__(
            status_code=413, detail=body_too_large(file_limit_bytes), headers={"Connection": "close"}
        )


class BodyLimitMiddleware:
    """Cap the request body of the given paths while it is read (pure ASGI).

    file_limit_bytes: the largest photo; the body may be `MULTIPART_OVERHEAD_BYTES` larger. A
    declared Content-Length above that is refused at once, without reading; otherwise the body is
    counted as it arrives and reading stops with 413 at the first byte past the limit.
    """

    def __init__(self, app: ASGIApp, file_limit_bytes: int, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app = app
        self.file_limit_bytes = file_limit_bytes
        self.limit_bytes = file_limit_bytes + MULTIPART_OVERHEAD_BYTES
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit_bytes:
            error = UploadError(413, "file_too_large", body_too_large(self.file_limit_bytes))
            await _send_json(send, error)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit_bytes:
                    raise BodyTooLarge(self.file_limit_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, error: UploadError) -> None:
    body = json.dumps(error.to_dict()).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
