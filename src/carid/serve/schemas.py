"""The shapes of the API's answers, as pydantic models: what /docs and /openapi.json show.

    PredictAnswer   POST /predict: `Prediction.to_dict()` (the photo's answer, which repeats the
                    largest car's) + `cars` (every car, largest box first, each a `CarAnswer`)
                    + `explanation` (only when asked with explain=true)
    ModelAnswer     GET /model: the main fields of the model description (more may follow)
    ErrorAnswer     every 4xx / 5xx body: {"error": {"code", "message"}}

The endpoints build their bodies from `carid.runtime.results` (`Prediction.to_dict()`) and answer
them as they are; these models describe them (and tests/serve/test_api.py validates real answers
against them, with extra keys forbidden, so a field added to a prediction without its description
here fails a test).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassScoreAnswer(_Strict):
    """One of the top-k classes."""

    index: int = Field(description="the class's index in the model's class_names")
    label: str = Field(description="the class name, e.g. 'BMW M3 Coupe 2012'")
    probability: float = Field(description="after temperature scaling, in [0, 1]")
    make: str | None = Field(description="from the model's taxonomy; None when the name says no make")
    model: str | None = None
    body_type: str | None = None
    year: int | None = None


class LevelAnswer(_Strict):
    """The most likely make, body type or year: the summed probability of the classes that share it."""

    value: str
    probability: float


class BoxAnswer(_Strict):
    """A car's box in the original photo: absolute xyxy pixels (EXIF orientation applied)."""

    x1: float
    y1: float
    x2: float
    y2: float


class TimingAnswer(_Strict):
    """Milliseconds spent on the photo on the server."""

    decode_ms: float
    preprocess_ms: float
    detection_ms: float = Field(description="the detector's share (a pipeline model), else 0")
    inference_ms: float
    total_ms: float


class CarAnswer(_Strict):
    """One car: who it is and where it is."""

    source: str = Field(description="the uploaded file's name")
    ok: bool = Field(description="false only when the photo could not be used (then `error` says why)")
    error: str | None = None
    label: str | None = Field(
        description="the class named, 'unknown' when the model is not sure enough (see `reason`), or "
        "None when there is no answer (no car found: see `reason`)"
    )
    probability: float | None = Field(description="the top class's probability, in [0, 1]")
    unknown: bool = Field(description="true when the label is 'unknown'; top_k still lists the classes")
    top_k: list[ClassScoreAnswer] = Field(description="the most likely classes, best first")
    make: LevelAnswer | None = None
    body_type: LevelAnswer | None = None
    year: LevelAnswer | None = None
    box: BoxAnswer | None = Field(description="where the car is; None for a model without a box")
    image_size: list[int] | None = Field(description="[width, height] of the photo")
    timing: TimingAnswer
    reason: str | None = Field(
        description="why the label is 'unknown', or why there is no answer at all; None otherwise"
    )
    detection_score: float | None = Field(
        description="how sure the detector is that the box holds a car (pipeline models), else None"
    )


class ExplanationAnswer(_Strict):
    """The Grad-CAM part of an answer asked with explain=true: the overlay, or why there is none."""

    available: bool
    reason: str | None = Field(None, description="why there is no overlay (when `available` is false)")
    method: str | None = Field(None, description="'gradcam'")
    media_type: str | None = Field(None, description="'image/png'")
    png_base64: str | None = Field(None, description="the overlay: the photo with the heat map and box")
    width: int | None = None
    height: int | None = None
    target_label: str | None = Field(None, description="the class whose decision is shown")
    probability: float | None = Field(None, description="the answer's probability, as the caption gives it")
    caption: str | None = Field(None, description="the line printed under the overlay")
    details: dict[str, Any] | None = Field(None, description="Grad-CAM's own record (layer, geometry…)")


class PredictAnswer(CarAnswer):
    """The answer for one photo. Its own fields are the largest car's answer (what a client that
    reads one answer per photo needs); `cars` lists every car found, largest box first. A model
    without a detector answers the photo as one car (one entry); a photo with no car has
    label None, a `reason` and `cars` empty."""

    cars: list[CarAnswer] = Field(description="every car in the photo, largest box first")
    explanation: ExplanationAnswer | None = Field(
        None, description="present only when asked with explain=true"
    )


class ModelAnswer(BaseModel):
    """What GET /model answers (the main fields; the model's own description adds more)."""

    model_config = ConfigDict(extra="allow")

    kind: str = Field(
        description="'model' (one network), 'ensemble', or 'pipeline' (a detector finds every car, "
        "an identifier names each)"
    )
    pipeline: bool = Field(description="true when every car of a photo is found and named")
    backend: str
    num_classes: int
    class_names: list[str]
    with_box: bool = Field(description="whether the identifying network itself predicts a box")
    taxonomy_levels: list[str]
    input_size: dict[str, int]
    detector: dict[str, Any] | None = Field(
        None, description="pipelines: the detector's input size and score threshold"
    )
    crop: dict[str, Any] | None = Field(None, description="pipelines: how each car is cut out")
    max_cars: int | None = Field(None, description="pipelines: at most this many cars are named")
    explain: dict[str, Any] = Field(description="whether Grad-CAM is available, and if not, why")
    limits: dict[str, Any]
    default_top_k: int
    max_top_k: int
    server_version: str


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. 'too_many_pixels'")
    message: str = Field(description="what is wrong, naming the uploaded file")


class ErrorAnswer(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail
