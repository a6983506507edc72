"""Detect every car, then identify each one: `PipelinePredictor`, the predictor of a pipeline folder.

    photo --decode (once, reduced to PHOTO_MIN_SIDE when much larger)
          --Detector (carid.runtime.detection: ONNX Runtime + NumPy letterbox, threshold, NMS)
          --> boxes in photo pixels, each with a detection score
          --crop each box by the pipeline's CropRule (margin, square) from the decoded photo
          --identifier (any Predictor: a bundle with its enrolled classes and calibration, or an
            ensemble) --> one Prediction per car: top-k, make / body type / year, "unknown"
          --> the photo's Prediction: `cars` = every car, largest box first; its own fields repeat
              the largest car's answer (what a one-answer client reads)

A photo with no car above the detector's threshold is answered with no label, an empty `cars` and
a reason; a car whose box is smaller than the crop rule's `min_side` is listed with its box but
named "unknown" with the reason. `Predictor.load(PIPELINE_DIR)` returns a `PipelinePredictor` (this
module registers its loader with `register_loader("pipeline", ...)`), so `carid predict`, `carid
serve` and the web page answer with one entry per car. Torch-free: the slim install runs it.

The predictor takes the identifier's description (class names, taxonomy, preprocessing, versions),
so what reads a predictor's metadata (the API's /model, the page) describes what names the cars.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from carid.artifacts.pipeline import Pipeline
from carid.images import PILLOW_ERRORS, ImageError, to_rgb
from carid.preprocess import load_image
from carid.runtime.backends import PredictorError
from carid.runtime.detection import Detection, Detector
from carid.runtime.inputs import ImageInput, _ms_since, shape_problem
from carid.runtime.predictor import Predictor, register_loader
from carid.runtime.results import UNKNOWN_LABEL, Box, Prediction, Timing

# Photos are decoded at reduced size (JPEG draft) while their shorter side stays at least this many
# pixels: the detector sees at most 640 px, and a car a quarter of such a photo wide still gives the
# identifier (192-260 px inputs) more pixels than it needs.
PHOTO_MIN_SIDE = 1080


@dataclass(frozen=True)
class PipelineImage:
    """One decoded photo, or why it could not be used."""

    name: str
    image: Image.Image | None = field(default=None, repr=False)
    original_size: tuple[int, int] | None = None
    decode_ms: float = 0.0
    error: str | None = None

    @property
    def scale(self) -> tuple[float, float]:
        """Decoded pixels per original pixel (x, y)."""
        assert self.image is not None and self.original_size is not None
        return self.image.width / self.original_size[0], self.image.height / self.original_size[1]


def decode_photo(image: ImageInput, name: str) -> PipelineImage:
    """Decode one input for the pipeline; never raises for a bad image (the error names it)."""
    started = time.perf_counter()
    try:
        if isinstance(image, Image.Image):
            rgb = to_rgb(image)
            return PipelineImage(name, rgb, rgb.size, _ms_since(started))
        if isinstance(image, str | Path | bytes | bytearray | memoryview):
            source = Path(image) if isinstance(image, str | Path) else bytes(image)
            decoded = load_image(source, name=name, min_side=PHOTO_MIN_SIDE)
            return PipelineImage(name, decoded.image, decoded.original_size, _ms_since(started))
        return PipelineImage(
            name,
            error=f"{name}: unsupported input {type(image).__name__} (give a path, bytes or a PIL image)",
        )
    except ImageError as exc:
        return PipelineImage(name, error=str(exc), decode_ms=_ms_since(started))
    except PILLOW_ERRORS as exc:
        return PipelineImage(
            name, error=f"{name}: cannot use this image ({exc})", decode_ms=_ms_since(started)
        )


def largest_first(detections: Sequence[Detection]) -> list[Detection]:
    """Detections ordered by box area, largest first (ties: higher score first)."""

    def key(detection: Detection) -> tuple[float, float]:
        x1, y1, x2, y2 = detection.box
        return (-(x2 - x1) * (y2 - y1), -detection.score)

    return sorted(detections, key=key)


class PipelinePredictor(Predictor):
    """A pipeline folder ready to predict: its detector and its identifier (see module docstring)."""

    def __init__(self, pipeline: Pipeline, detector: Detector, identifier: Predictor) -> None:
        # Described by the identifier (class names, taxonomy, preprocessing): it names the cars.
        # Predictor.__init__ is not called: every field it would set is the identifier's own.
        self.pipeline = pipeline
        self.detector = detector
        self.identifier = identifier
        self.source = pipeline.path
        self.backend = identifier.backend
        self.metadata = identifier.metadata
        self.spec = identifier.spec
        self.taxonomy = identifier.taxonomy
        self.trained_classes = identifier.trained_classes
        self.enrolment = identifier.enrolment
        # None: the detector's operating threshold; evaluation lowers it to rank boxes for AP.
        self.score_threshold: float | None = None

    @classmethod
    def load(
        cls,
        path: Path | str,
        backend: str = "auto",
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        device: str = "cpu",
        tta: str = "none",
    ) -> PipelinePredictor:
        """Open a pipeline folder: the detector on ONNX Runtime, the identifier as `Predictor.load`
        opens it (backend, TTA and threads apply to the identifier)."""
        pipeline = Pipeline.load(path)
        if backend == "torch":
            raise PredictorError(
                f"{pipeline.path}: a pipeline runs on ONNX Runtime; its detector has no torch backend here"
            )
        detector = Detector.load(pipeline.detector, threads=threads)
        identifier = Predictor.load(
            pipeline.identifier, backend, providers=providers, threads=threads, device=device, tta=tta
        )
        return cls(pipeline, detector, identifier)

    # --- predicting (Predictor.predict / predict_batches call these two) ----------------------------

    def _prepare(self, images: Sequence[ImageInput], names: Sequence[str]) -> list[PipelineImage]:  # type: ignore[override]
        return [decode_photo(image, name) for image, name in zip(images, names, strict=True)]

    def _predict_prepared(self, prepared: Sequence[PipelineImage], top_k: int) -> list[Prediction]:  # type: ignore[override]
        return [self._answer(item, top_k) for item in prepared]

    def _answer(self, item: PipelineImage, top_k: int) -> Prediction:
        if item.error is not None or item.image is None or item.original_size is None:
            return Prediction(source=item.name, error=item.error, timing=Timing(decode_ms=item.decode_ms))
        original = item.original_size
        problem = shape_problem(*original)
        if problem is not None:
            return Prediction(
                source=item.name,
                image_size=original,
                reason=problem,
                cars=(),
                timing=Timing(decode_ms=item.decode_ms),
            )
        started = time.perf_counter()
        scale_x, scale_y = item.scale
        found = self.detector.detect(np.asarray(item.image), self.score_threshold)
        in_photo = [
            replace(d, box=(d.box[0] / scale_x, d.box[1] / scale_y, d.box[2] / scale_x, d.box[3] / scale_y))
            for d in found
        ]
        kept = largest_first(in_photo)[: self.pipeline.max_cars]
        rule = self.pipeline.crop
        crops: list[Image.Image] = []
        nameable: list[int] = []
        for index, detection in enumerate(kept):
            x1, y1, x2, y2 = detection.box
            if min(x2 - x1, y2 - y1) < rule.min_side:
                continue
            region = rule.region(
                (x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y), item.image.width, item.image.height
            )
            crops.append(item.image.crop(region))
            nameable.append(index)
        detection_ms = _ms_since(started)
        identified_at = time.perf_counter()
        names = [f"{item.name} car {index + 1}" for index in nameable]
        identities = self.identifier.predict(crops, top_k=top_k, names=names) if crops else []
        inference_ms = _ms_since(identified_at)
        by_index = dict(zip(nameable, identities, strict=True))
        cars = tuple(
            self._car(item.name, original, detection, by_index.get(index), rule.min_side)
            for index, detection in enumerate(kept)
        )
        timing = Timing(decode_ms=item.decode_ms, detection_ms=detection_ms, inference_ms=inference_ms)
        if not cars:
            return Prediction(
                source=item.name,
                image_size=original,
                reason=(
                    "no car found: the detector scored no box above its threshold "
                    f"{self.detector.metadata.score_threshold:.2f}"
                ),
                cars=(),
                timing=timing,
            )
        return replace(cars[0], source=item.name, cars=cars, timing=timing)

    def _car(
        self,
        source: str,
        original: tuple[int, int],
        detection: Detection,
        identity: Prediction | None,
        min_side: int,
    ) -> Prediction:
        """One car's answer: its identity (or "unknown" when too small to name) with the detected box."""
        box = Box(*(float(value) for value in detection.box))
        if identity is None:
            width, height = box.x2 - box.x1, box.y2 - box.y1
            return Prediction(
                source=source,
                label=UNKNOWN_LABEL,
                unknown=True,
                box=box,
                image_size=original,
                detection_score=detection.score,
                reason=(
                    f"the car is {width:.0f}x{height:.0f} px in the photo; under {min_side} px a side "
                    "it is too small to name"
                ),
            )
        if not identity.ok:
            return replace(
                identity, source=source, box=box, image_size=original, detection_score=detection.score
            )
        return replace(
            identity, source=source, box=box, image_size=original, detection_score=detection.score, cars=None
        )

    # --- description --------------------------------------------------------------------------------

    def warmup(self, batch_size: int = 1) -> float:
        started = time.perf_counter()
        width, height = self.detector.metadata.input_size
        self.detector.detect(np.zeros((height, width, 3), dtype=np.uint8))
        self.identifier.warmup(batch_size)
        return _ms_since(started)

    def embed(self, images: Any, batch_size: int = 16) -> np.ndarray:
        raise PredictorError(
            f"{self.source}: enrol classes in the pipeline's identifier ({self.pipeline.identifier}), "
            "not in the pipeline"
        )

    @property
    def tta(self) -> str:
        return self.identifier.tta

    def info(self) -> dict[str, Any]:
        """The identifier's description, plus the pipeline's detector and crop rule."""
        return {
            **self.identifier.info(),
            "source": str(self.source),
            "kind": "pipeline",
            "detector": {
                "source": str(self.pipeline.detector),
                "input_size": list(self.detector.metadata.input_size),
                "score_threshold": self.detector.metadata.score_threshold,
            },
            "crop": self.pipeline.crop.to_dict(),
            "max_cars": self.pipeline.max_cars,
        }

    def __repr__(self) -> str:
        return f"PipelinePredictor(source={str(self.source)!r}, identifier={self.identifier!r})"


@dataclass(frozen=True)
class IdentifiedDetection(Detection):
    """A detection with the identifier's top-1 class for its crop (None for a car too small to name)."""

    label: str | None = None


class PipelineDetector:
    """A pipeline seen as a detector whose detections carry identities: what detection evaluation
    needs (`detect_batch`, `name`, `metadata`) to score a pipeline's boxes and the names of the
    cars it matched."""

    def __init__(self, predictor: PipelinePredictor) -> None:
        self.predictor = predictor
        self.metadata = predictor.detector.metadata
        self.name = predictor.pipeline.path.name

    def detect_batch(
        self, images: Sequence[np.ndarray], score_threshold: float | None = None, batch_size: int = 8
    ) -> list[list[IdentifiedDetection]]:
        self.predictor.score_threshold = score_threshold
        try:
            answers = self.predictor.predict(
                [Image.fromarray(image) for image in images], batch_size=batch_size
            )
        finally:
            self.predictor.score_threshold = None
        found = []
        for answer in answers:
            if not answer.ok:
                raise PredictorError(answer.error or "the pipeline could not use a photo")
            found.append(
                [
                    IdentifiedDetection(
                        tuple(car.box.to_list()),  # type: ignore[arg-type]
                        float(car.detection_score or 0.0),
                        None if car.top1 is None else car.top1.label,
                    )
                    for car in answer.all_cars
                    if car.box is not None
                ]
            )
        return found


register_loader("pipeline", PipelinePredictor.load)
