"""The REST API and web page of `carid serve`: FastAPI over one `Predictor` loaded at startup.

    create_app(model_path, settings) -> FastAPI     loads the model named by the server's own
                                                     startup arguments (never by a request)
    build_app(predictor, settings) -> FastAPI        the same over an already built Predictor
    (`carid.serve.server.run_server` runs it under uvicorn; `carid.serve.settings` holds the
    settings; `carid.serve.security` the guards in front of the endpoints)

Endpoints:

    POST /predict   multipart/form-data, field `file` (the photo); query `top_k` (default 5),
                    `explain=true` (a Grad-CAM overlay, PNG base64, when a single model runs on
                    the torch backend) -> `Prediction.to_dict()`: the largest car's answer plus
                    `cars`, every car in the photo, largest box first (one entry for a model
                    without a detector; none, with a `reason`, when a pipeline finds no car)
                    (+ "explanation" when asked)
    GET  /model     what the model is: kind ("model", "ensemble" or "pipeline": detector +
                    identifier, with the detector's settings and the crop rule), classes, taxonomy
                    levels, input size, box, backend, versions, calibration, whether explanations
                    are available, upload limits
    GET  /health    status, model loaded, uptime, inferences running / waiting, requests in
                    progress (never needs the API key; /predict and /model do when one is set)
    GET  /docs      OpenAPI (Swagger UI); GET /openapi.json
    GET  /          the web page (static/index.html, app.js, style.css; no build step, no CDN)

Every error is JSON {"error": {"code": "...", "message": "..."}} with a 4xx status for bad input
(see `carid.serve.limits` and docs/serve.md): whatever Pillow raises while reading an upload is
the upload's 4xx (`limits.decode_failure`). Unexpected failures are logged with their traceback
and answered with a generic 500 that leaks nothing and says `Connection: close` (the server drops
the connection after it, and the client must not send its next request on it).

Inference runs in the thread pool (`run_in_threadpool`), at most `inference_slots` at a time
(default 1: ONNX Runtime already uses every core for one image, so the server never asks for more
CPU than there is; docs/serve.md has the measurements); up to `max_waiting` requests queue behind
them, beyond that the answer is 503.
The answers' shapes (for /docs) are the pydantic models of `carid.serve.schemas`.
Like `carid.runtime.predictor`, this module imports without torch; the Grad-CAM explainer
(`carid.explain`) is imported only when the torch backend is loaded. Its overlay is captioned here
from the answer (label and calibrated probability) rather than by `carid.explain`, whose caption
gives the network's raw softmax: the page must not show two different percentages for one answer.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from carid import __version__
from carid.runtime.pipeline import PipelinePredictor
from carid.runtime.predictor import Predictor
from carid.runtime.results import ROLL_UP_LEVELS, Prediction
from carid.serve.limits import (
    ApiError,
    BodyLimitMiddleware,
    UploadError,
    check_upload,
    decode_failure,
    read_limited,
    upload_name,
)
from carid.serve.schemas import ErrorAnswer, ModelAnswer, PredictAnswer
from carid.serve.security import (
    API_KEY_HEADER,
    ApiKeyGuard,
    BodyTimeout,
    ConcurrencyLimit,
    PageHeaders,
    RequestCount,
    TrustedHosts,
)
from carid.serve.settings import ServeSettings, api_key_for

log = logging.getLogger("carid.serve")

STATIC_DIR = Path(__file__).parent / "static"
UPLOAD_FIELD = "file"
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "file_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "busy",
}
_INTERNAL_MESSAGE = "the server failed to handle this request; the error is logged on the server"
CLOSE = {"Connection": "close"}


# --- explanations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explainer:
    """Grad-CAM for uploads when one model runs on PyTorch and `carid.explain` imports; else the reason.

    run: (photo bytes, class index to explain, caption) -> (overlay PIL image with `caption` printed
    under it, `GradCamResult.to_dict()`).
    """

    run: Callable[[bytes, int | None, str], tuple[Any, dict[str, Any]]] | None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.run is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "method": "gradcam" if self.available else None,
            "reason": self.reason,
        }

    def explain(self, data: bytes, prediction: Prediction) -> dict[str, Any]:
        """The explanation entry of a /predict answer: the overlay as PNG base64, or why there is none."""
        if self.run is None:
            return {"available": False, "reason": self.reason}
        from carid.explain import png_bytes

        target = prediction.top1.index if prediction.top1 is not None else None
        caption = gradcam_caption(prediction)
        try:
            overlay, details = self.run(data, target, caption)
        except ValueError as exc:  # ExplainError, ImageError: the photo or the network cannot be explained
            return {"available": False, "reason": str(exc)}
        png = png_bytes(overlay)
        return {
            "available": True,
            "method": "gradcam",
            "media_type": "image/png",
            "png_base64": base64.b64encode(png).decode("ascii"),
            "width": overlay.width,
            "height": overlay.height,
            "target_label": details.get("target_label"),
            "probability": None if prediction.probability is None else round(prediction.probability, 6),
            "caption": caption,
            "details": details,
        }


def percent(probability: float) -> str:
    """A probability as the web page writes it (app.js `percent`): one decimal, e.g. "31.0%"."""
    return f"{probability * 100:.1f}%"


def gradcam_caption(prediction: Prediction) -> str:
    """The overlay's caption: the class explained (the top class) and the ANSWER's probability (after
    temperature scaling and TTA, what the page shows), never the network's raw softmax."""
    top1 = prediction.top1
    if top1 is None:
        return "Grad-CAM"
    probability = prediction.probability if prediction.probability is not None else top1.probability
    if prediction.unknown:
        return f"Grad-CAM for {top1.label}, the best guess ({percent(probability)}; answer: not sure)"
    return f"Grad-CAM for {top1.label} ({percent(probability)})"


def explainer_for(predictor: Predictor, enabled: bool = True) -> Explainer:
    """Grad-CAM when possible: `enabled`, one model (not a pipeline) on the torch backend, and
    `carid.explain` importable."""
    if not enabled:
        return Explainer(None, "explanations are switched off on this server")
    if isinstance(predictor, PipelinePredictor):
        return Explainer(
            None,
            "Grad-CAM is not available for a detect-then-identify pipeline: it explains one network's "
            "answer on a whole photo, and this server finds each car with a detector first",
        )
    network = getattr(predictor.backend, "network", None)
    if predictor.backend_name != "torch" or network is None:
        return Explainer(
            None,
            "Grad-CAM needs the PyTorch backend: start the server with --backend torch "
            "(needs the train extra and the bundle's source checkpoint)",
        )
    try:
        from carid.explain import compute_gradcam, prepare_photo, render_heatmap_overlay, resolve_model
    except ImportError as exc:
        return Explainer(None, f"Grad-CAM is not installed here ({exc}); pip install 'carid[train]'")
    metadata = predictor.metadata

    def run(data: bytes, target: int | None, caption: str) -> tuple[Any, dict[str, Any]]:
        # `carid.explain.gradcam_overlay` without its caption (see the module docstring)
        model = resolve_model(network, metadata)
        photo = prepare_photo(data, model.spec)
        result = compute_gradcam(model, photo, target=target)
        overlay = render_heatmap_overlay(
            photo.image, result.heatmap, caption=caption, box=result.box, original_size=photo.original_size
        )
        return overlay, result.to_dict()

    return Explainer(run)


# --- concurrency -------------------------------------------------------------------------------------


class InferenceGate:
    """At most `slots` inferences at once; at most `max_waiting` requests wait for a slot (503 beyond).

    The semaphore is made on the event loop that first uses it (asyncio primitives belong to one
    loop, and a test client may start a new loop per session).
    """

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.running = 0
        self.waiting = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._loop is not loop:
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.slots)
        return self._semaphore

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        semaphore = self._current()
        if semaphore.locked() and self.waiting >= self.max_waiting:
            raise ApiError(
                503,
                "busy",
                f"the server is busy ({self.running} running, {self.waiting} waiting); retry shortly",
            )
        self.waiting += 1
        try:
            await semaphore.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            semaphore.release()

    def to_dict(self) -> dict[str, int]:
        return {"slots": self.slots, "running": self.running, "waiting": self.waiting}


# --- the app -----------------------------------------------------------------------------------------


PRIVATE_KEYS = frozenset({"source", "source_checkpoint", "path", "model_path"})


def without_paths(value: Any) -> Any:
    """A copy of a JSON-like value without the keys that hold file paths on the server."""
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items() if key not in PRIVATE_KEYS}
    if isinstance(value, list | tuple):
        return [without_paths(item) for item in value]
    return value


def model_description(predictor: Predictor, settings: ServeSettings, explainer: Explainer) -> dict[str, Any]:
    """What GET /model answers (`schemas.ModelAnswer`): `Predictor.info()` without server-side paths,
    what kind of model it is, plus serving facts."""
    info = without_paths(predictor.info())
    levels = (
        ["class", *ROLL_UP_LEVELS] if predictor.taxonomy is not None else [predictor.metadata.label_level]
    )
    kind = info.get("kind") or ("ensemble" if "ensemble" in info else "model")
    return {
        **info,
        "kind": kind,
        "pipeline": kind == "pipeline",
        "taxonomy_levels": levels,
        "input_size": {"height": predictor.spec.height, "width": predictor.spec.width},
        "versions": dict(predictor.metadata.versions),
        "explain": explainer.to_dict(),
        "limits": settings.limits().to_dict(),
        "default_top_k": settings.top_k,
        "max_top_k": settings.max_top_k,
        "server_version": __version__,
    }


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """{"error": {"code": code, "message": message}} with `status`."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def decode_error(name: str, message: str | None) -> UploadError:
    """The 422 for a photo whose header was fine but whose pixels could not be decoded."""
    text = message or f"{name}: cannot decode the image"
    code = "truncated_image" if "truncated" in text.lower() else "unreadable_image"
    return UploadError(422, code, text)


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    for error in errors:
        location = tuple(error.get("loc", ()))
        if location[:1] == ("body",):
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            if error.get("type") == "missing":
                found = (
                    f" (the request's Content-Type is {content_type or 'not set'})"
                    if content_type != "multipart/form-data"
                    else " (the form has no file field of that name)"
                )
                message = (
                    f"expected the photo in a multipart/form-data file field named '{UPLOAD_FIELD}'{found}; "
                    f"e.g. curl -F {UPLOAD_FIELD}=@car.jpg http://HOST:PORT/predict"
                )
                return error_response(422, "missing_file", message)
            message = f"the form field '{UPLOAD_FIELD}' must be a file upload (a part with a filename)"
            return error_response(422, "invalid_file_field", message)
    first = errors[0] if errors else {}
    location = tuple(first.get("loc", ()))
    where = location[0] if location else "request"
    name = ".".join(str(part) for part in location[1:]) or str(where)
    return error_response(
        422, "invalid_parameter", f"{where} parameter '{name}': {first.get('msg', 'invalid')}"
    )


def build_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app over an already loaded predictor (tests pass stub predictors here).

    The guards of `carid.serve.security` come first, outermost first: response headers, allowed
    hosts (when `settings.allowed_hosts` names some; `run_server` decides them for the address it
    listens on), the API key (when one is set: `settings.api_key_for`), the concurrency limit, the
    body timeout, the body-size cap. Raises ServeError for an API key setting that cannot be used.
    """
    settings = settings or ServeSettings()
    limits = settings.limits()
    api_key = api_key_for(settings)
    gate = InferenceGate(settings.inference_slots, settings.max_waiting)
    requests = RequestCount(settings.concurrency_limit)
    explainer = explainer_for(predictor, settings.explain)
    description = model_description(predictor, settings, explainer)
    started = time.monotonic()

    app = FastAPI(
        title="carid",
        version=__version__,
        summary="Identify the cars in a photo: make, model, year or body type, and where each car is.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, file_limit_bytes=limits.max_upload_bytes)
    app.add_middleware(BodyTimeout, seconds=settings.body_timeout)
    app.add_middleware(ConcurrencyLimit, count=requests)
    if api_key is not None:
        app.add_middleware(ApiKeyGuard, api_key=api_key)
    if settings.allowed_hosts is not None and "*" not in settings.allowed_hosts:
        app.add_middleware(TrustedHosts, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(PageHeaders)
    # The key is checked by ApiKeyGuard; the scheme only describes it in /docs (and its Authorize button).
    key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="The server's API key.")
    secured = [Security(key_scheme)] if api_key is not None else []

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else CLOSE if exc.status >= 500 else None
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, form_problem(exc) or str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(request, exc)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", _INTERNAL_MESSAGE, CLOSE)

    @app.post(
        "/predict",
        dependencies=secured,
        responses={
            200: {
                "model": PredictAnswer,
                "description": "`Prediction.to_dict()`: the largest car's label, probability, unknown, "
                "reason, top_k, make, body_type, year, box (original pixels, xyxy), detection_score, "
                "image_size, timing; `cars`: every car, largest box first, with the same fields; "
                "plus `explanation` when asked",
            },
            400: {"model": ErrorAnswer, "description": "empty file, several files, bad form or Host"},
            401: {"model": ErrorAnswer, "description": "no or a wrong X-API-Key (servers with a key)"},
            408: {"model": ErrorAnswer, "description": "the upload did not arrive in time"},
            413: {"model": ErrorAnswer, "description": "file too large or too many pixels"},
            415: {"model": ErrorAnswer, "description": "not a JPEG, PNG, WebP, GIF, BMP or TIFF image"},
            422: {"model": ErrorAnswer, "description": "no field 'file', bad parameter, corrupt image"},
            503: {"model": ErrorAnswer, "description": "too many requests at once or waiting; retry"},
        },
    )
    async def predict(
        request: Request,
        file: UploadFile = File(
            description="The photo (JPEG, PNG, WebP, GIF, BMP or TIFF); its type is read from its bytes."
        ),
        top_k: int = Query(settings.top_k, ge=1, le=settings.max_top_k, description="Classes to list."),
        explain: bool = Query(False, description="Add a Grad-CAM overlay (PNG, base64); torch backend only."),
    ) -> JSONResponse:
        """Identify every car in one photo (largest first); a model without a detector answers the
        photo as one car."""
        await one_file_only(request)
        name = upload_name(file.filename)
        data = await read_limited(file, limits.max_upload_bytes, name)
        await run_in_threadpool(check_upload, data, name, limits)
        explanation: dict[str, Any] | None = None
        async with gate.slot():
            try:
                (prediction,) = await run_in_threadpool(
                    predictor.predict, [data], top_k=top_k, batch_size=1, names=[name]
                )
                if explain and prediction.ok:
                    explanation = await run_in_threadpool(explainer.explain, data, prediction)
            except Exception as exc:
                refusal = decode_failure(name, exc, in_pillow_only=True)
                if refusal is not None:  # Pillow gave up on the bytes: the upload's fault
                    raise refusal from None
                log.error("predicting %s failed", name, exc_info=exc)  # the model's: log it, say nothing more
                raise ApiError(500, "internal_error", _INTERNAL_MESSAGE) from None
        if not prediction.ok:
            raise decode_error(name, prediction.error)
        body = prediction.to_dict()
        if explain:
            body["explanation"] = explanation
        return JSONResponse(body)

    @app.get("/model", dependencies=secured, responses={200: {"model": ModelAnswer}})
    async def model() -> JSONResponse:
        """What the model is: its kind (one model, an ensemble, or a pipeline that finds every car
        with a detector, with the detector's settings and crop rule), classes, taxonomy levels,
        input size, box head, backend, versions, calibration, whether Grad-CAM explanations are
        available, and the upload limits."""
        return JSONResponse(description)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: status, whether the model is loaded, uptime, requests in progress and the
        inference queue. Needs no API key."""
        return {
            "status": "ok",
            "model_loaded": True,
            "backend": predictor.backend_name,
            "uptime_s": round(time.monotonic() - started, 3),
            "inference": gate.to_dict(),
            "requests": requests.to_dict(),
            "version": __version__,
        }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def form_problem(exc: BaseException) -> str | None:
    """What the multipart parser could not read, when it raised `exc` (Starlette says only "Invalid
    multipart data."; the parser's own exception, e.g. "Maximum header size exceeded", says why)."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause).__module__.startswith(("python_multipart", "multipart")):
            return (
                f"the multipart/form-data body cannot be read ({cause}); a part's header, its file "
                "name included, may be at most 4 KB"
                if "header" in str(cause).lower()
                else f"the multipart/form-data body cannot be read ({cause})"
            )
        cause = cause.__cause__ or cause.__context__
    return None


async def one_file_only(request: Request) -> None:
    """Refuse (400 `too_many_files`) a form with more than one file part: which one would count is
    not the client's guess to make (the form is already parsed; this reads FastAPI's copy)."""
    form = await request.form()
    parts = [key for key, value in form.multi_items() if isinstance(value, StarletteUploadFile)]
    if len(parts) > 1:
        raise UploadError(
            400,
            "too_many_files",
            f"the form has {len(parts)} file parts ({', '.join(repr(key) for key in parts)}); "
            f"send exactly one photo, in the field '{UPLOAD_FIELD}'",
        )


def create_app(model_path: Path | str, settings: ServeSettings | None = None) -> FastAPI:
    """Load the model at `model_path` (a bundle, run folder or .ckpt) and build the app around it.

    The path comes from the server's startup arguments only; no request can name another model.
    Raises BundleError / PredictorError naming the path and the problem.
    """
    settings = settings or ServeSettings()
    predictor = Predictor.load(
        model_path, backend=settings.backend, threads=settings.threads, tta=settings.tta
    )
    if settings.warmup:
        log.info("warm-up: %.0f ms", predictor.warmup())
    log.info("serving %s", predictor)
    return build_app(predictor, settings)
