"""What a prediction answers: `Prediction` per photo, with its top-k `ClassScore`s, the rolled-up
`LevelScore`s (make, body type, year), the `Box` in photo pixels and the `Timing`.

One answer per car: `Prediction.all_cars` lists every car in the photo, largest first, each a
`Prediction` of its own (its box, its `detection_score`, its identity). A pipeline bundle (detector
+ identifier, `carid.runtime.pipeline`) fills `cars` with what the detector found; the photo's own
fields then repeat the largest car's answer, so a client that reads one answer per photo still gets
one. A single-model bundle answers the photo as one car: `cars` stays None and `all_cars` is the
prediction itself.

Frozen dataclasses whose `to_dict()` is what the CLI, the REST API and the web page show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UNKNOWN_LABEL = "unknown"


ROLL_UP_LEVELS: tuple[str, ...] = ("make", "body_type", "year")


def below_threshold(probability: float, threshold: float) -> str:
    """The reason of an "unknown" answer whose top class is not probable enough."""
    return f"the top class's probability {probability:.3f} is under the unknown threshold {threshold:.3f}"


@dataclass(frozen=True)
class ClassScore:
    """One of the top-k classes: its index and name, probability and the parts of its name.

    make / model / body_type / year: from the bundle's taxonomy; None when the model has none or
    its class names are no car names ("red", "Abyssinian"); for a make-, body-type- or year-level
    model the class itself fills its own field.
    """

    index: int
    label: str
    probability: float
    make: str | None = None
    model: str | None = None
    body_type: str | None = None
    year: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.label,
            "probability": round(self.probability, 6),
            "make": self.make,
            "model": self.model,
            "body_type": self.body_type,
            "year": self.year,
        }


@dataclass(frozen=True)
class LevelScore:
    """The most likely value at a taxonomy level (make, body type or year) and its probability,
    the sum of the probabilities of the classes with that value (`carid.taxonomy.roll_up`)."""

    value: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "probability": round(self.probability, 6)}


@dataclass(frozen=True)
class Box:
    """The car's box in the original photo: absolute xyxy pixels, clipped to the photo."""

    x1: float
    y1: float
    x2: float
    y2: float

    def to_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    def to_dict(self) -> dict[str, float]:
        names = ("x1", "y1", "x2", "y2")
        return {name: round(value, 2) for name, value in zip(names, self.to_list(), strict=True)}


@dataclass(frozen=True)
class Timing:
    """Milliseconds spent on one image. inference_ms is the batch's run time divided by its size;
    with a detector, detection_ms is the detector's share (cropping included) and inference_ms the
    identifier's, over all the photo's cars."""

    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    detection_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.preprocess_ms + self.inference_ms + self.detection_ms

    def to_dict(self) -> dict[str, float]:
        return {
            "decode_ms": round(self.decode_ms, 3),
            "preprocess_ms": round(self.preprocess_ms, 3),
            "detection_ms": round(self.detection_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image, or why it could not say anything (`error`).

    source: the path as given, or a name for bytes / PIL inputs.
    label: the top-1 class, or "unknown" (`unknown` True; `top_k` still lists the classes) when its
        probability is below the bundle's unknown threshold or when the photo's shape is one the
        network input cannot show faithfully (`carid.runtime.inputs.shape_problem`: a sliver, a
        thumbnail). None when `error` is set.
    probability: the top-1 class probability (after temperature scaling).
    make / body_type / year: the most likely value at each taxonomy level with its rolled-up
        probability (None when the model's classes do not say it). Given also when the label is
        "unknown": the make can be clear when the exact model is not.
    box: the car in the original photo's pixels (None without a box head).
    image_size: (width, height) of the photo after EXIF orientation.
    reason: why the label is "unknown", in a sentence for people (None when a class is named); for a
        photo in which the detector found no car, why there is no answer (the label is then None).
    detection_score: how sure the detector is that this box holds a car (None without a detector).
    cars: every car the detector found, largest box first (None: the photo is one car, see
        `all_cars`; an empty tuple: the detector found none).
    """

    source: str
    label: str | None = None
    probability: float | None = None
    unknown: bool = False
    top_k: tuple[ClassScore, ...] = ()
    make: LevelScore | None = None
    body_type: LevelScore | None = None
    year: LevelScore | None = None
    box: Box | None = None
    image_size: tuple[int, int] | None = None
    timing: Timing = field(default_factory=Timing)
    error: str | None = None
    reason: str | None = None
    detection_score: float | None = None
    cars: tuple[Prediction, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def all_cars(self) -> tuple[Prediction, ...]:
        """Every car in the photo, largest first: the detector's, or the photo itself as one car."""
        if self.cars is not None:
            return self.cars
        return (self,) if self.ok else ()

    @property
    def top1(self) -> ClassScore | None:
        """The most likely class (also when the label is "unknown")."""
        return self.top_k[0] if self.top_k else None

    def to_dict(self) -> dict[str, Any]:
        answer = self._answer_dict()
        answer["cars"] = [car._answer_dict() for car in self.all_cars]
        return answer

    def _answer_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "error": self.error,
            "label": self.label,
            "probability": None if self.probability is None else round(self.probability, 6),
            "unknown": self.unknown,
            "top_k": [score.to_dict() for score in self.top_k],
            "make": None if self.make is None else self.make.to_dict(),
            "body_type": None if self.body_type is None else self.body_type.to_dict(),
            "year": None if self.year is None else self.year.to_dict(),
            "box": None if self.box is None else self.box.to_dict(),
            "image_size": None if self.image_size is None else list(self.image_size),
            "timing": self.timing.to_dict(),
            "reason": self.reason,
            "detection_score": None if self.detection_score is None else round(self.detection_score, 6),
        }
