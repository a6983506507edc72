"""Finding the cars in a photo with a detector bundle: `Detector` -> a list of `Detection`s.

    photo, H x W x 3 uint8 RGB
      --letterbox (`carid.preprocess`, the geometry the detector trained with)--> float32 [B, 3, h, w]
      --model.onnx on ONNX Runtime--> scores [B, A] in [0, 1], boxes [B, A, 4] xyxy network pixels
      --`postprocess` (NumPy)--> per photo: scores above the threshold, boxes clipped to the network
        input, class-agnostic NMS, the best `max_detections`, boxes under `min_box_side` network
        pixels dropped, boxes back in photo pixels clipped to the photo --> [Detection], best first

The order of the steps is that of `carid.models.detector.DetectorNet.detect` (torchvision's
`postprocess_detections`: threshold, clip to the input, NMS, keep the best N; then small boxes
dropped), so the bundle answers what the PyTorch detector answers; the export checks it
(`carid.export_detector`). `Detector.from_checkpoint` runs the same post-processing on the PyTorch
network's `forward_export` (torch imported only then).

NMS is written by hand here (`nms`: greedy by score, a box overlapping a kept one by an IoU above
the threshold is dropped, as `torchvision.ops.nms` does) only because this module must run in the
slim install, which has NumPy and ONNX Runtime but neither torch nor torchvision.

Torch-free: the slim install imports and runs it.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from carid import boxes as box_math
from carid.artifacts.bundle import BundleError
from carid.artifacts.detector import (
    BOXES,
    SCORES,
    DetectorBundle,
    DetectorBundleError,
    DetectorMetadata,
    is_detector_dir,
)
from carid.artifacts.run_dir import ModelLocation, run_task
from carid.errors import CaridError
from carid.preprocess import Geometry, PreprocessSpec, preprocess


class DetectionError(CaridError, ValueError):
    """An input or setting the detector cannot use; the message names the input and the problem."""


@dataclass(frozen=True)
class Detection:
    """One car found: box xyxy in the ORIGINAL photo's pixels (`carid.boxes` conventions), score in
    [0, 1] (the network's probability that the box holds a car)."""

    box: tuple[float, float, float, float]
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(value, 2) for value in self.box], "score": round(self.score, 6)}


class DetectorBackend(Protocol):
    """Runs the detector graph: float32 [B, 3, H, W] -> {"scores": [B, A], "boxes": [B, A, 4]}."""

    name: str

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


# --- post-processing ---------------------------------------------------------------------------------


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, best score first (see the module docstring for why this
    is not torchvision's). A box is dropped when its IoU with a kept, better-scored box is above
    `iou_threshold`; equal scores keep the earlier box."""
    boxes = box_math.as_boxes(boxes)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    kept: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        kept.append(best)
        if rest.size:
            overlap = box_math.iou(boxes[best : best + 1], boxes[rest])[0]
            rest = rest[overlap <= iou_threshold]
        order = rest
    return np.asarray(kept, dtype=np.int64)


@dataclass(frozen=True)
class PostProcess:
    """The post-processing settings of a detector (model.json; `score_threshold` may be overridden).
    min_box_side is in network-input pixels, as `detect.min_box_side`."""

    score_threshold: float
    nms_iou: float
    max_detections: int
    min_box_side: float = 0.0

    @classmethod
    def of(cls, metadata: DetectorMetadata, score_threshold: float | None = None) -> PostProcess:
        threshold = metadata.score_threshold if score_threshold is None else check_threshold(score_threshold)
        return cls(threshold, metadata.nms_iou, metadata.max_detections, metadata.min_box_side)


def check_threshold(value: object) -> float:
    """A score threshold as a float in [0, 1]; DetectionError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise DetectionError(f"score_threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def network_detections(
    scores: np.ndarray, boxes: np.ndarray, network_size: tuple[int, int], settings: PostProcess
) -> tuple[np.ndarray, np.ndarray]:
    """One photo's graph outputs -> (boxes [N, 4] network pixels, scores [N]), best first, as the
    PyTorch detector's `detect` gives them: scores above the threshold, boxes clipped to the network
    input (width, height), NMS, the best max_detections, then those under min_box_side dropped.

    torchvision also keeps at most 1000 candidates per pyramid level before NMS; above an operating
    threshold no level has that many, and the export's parity check would show it if one did.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(scores) != len(boxes):
        raise DetectionError(f"the detector gave {len(scores)} scores but {len(boxes)} boxes")
    keep = np.isfinite(scores) & np.isfinite(boxes).all(axis=1) & (scores > settings.score_threshold)
    scores, boxes = scores[keep], box_math.clip(boxes[keep], *network_size)
    kept = nms(boxes, scores, settings.nms_iou)[: settings.max_detections]
    boxes, scores = boxes[kept], scores[kept]
    large = ~box_math.is_degenerate(boxes, min_size=settings.min_box_side)
    return boxes[large], scores[large]


def to_photo(boxes: np.ndarray, scores: np.ndarray, geometry: Geometry) -> list[Detection]:
    """Network-pixel boxes (best first) -> `Detection`s in photo pixels: mapped back through the
    letterbox and clipped to the photo; a box left with no area (it lay in the letterbox border) is
    dropped."""
    if not len(boxes):
        return []
    network = np.array([geometry.network_width, geometry.network_height] * 2, dtype=np.float64)
    photo = box_math.clip(
        geometry.boxes_to_original(box_math.as_boxes(boxes) / network),
        geometry.original_width,
        geometry.original_height,
    )
    keep = box_math.area(photo) > 0
    return [
        Detection(box=tuple(float(v) for v in box), score=float(score))  # type: ignore[arg-type]
        for box, score in zip(photo[keep], np.asarray(scores)[keep], strict=True)
    ]


def postprocess(
    scores: np.ndarray, boxes: np.ndarray, geometry: Geometry, settings: PostProcess
) -> list[Detection]:
    """One photo's graph outputs (scores [A], boxes [A, 4] network pixels) -> its `Detection`s."""
    size = (geometry.network_width, geometry.network_height)
    return to_photo(*network_detections(scores, boxes, size, settings), geometry)


# --- input ---------------------------------------------------------------------------------------------


def check_image(image: object, name: str = "image") -> np.ndarray:
    """The photo as an H x W x 3 uint8 RGB array; DetectionError naming `name` and the problem."""
    if not isinstance(image, np.ndarray):
        raise DetectionError(
            f"{name}: expected an H x W x 3 uint8 RGB NumPy array, got {type(image).__name__}"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise DetectionError(
            f"{name}: expected an H x W x 3 RGB array, got shape {tuple(image.shape)} "
            "(convert grey, RGBA or other images to RGB first)"
        )
    if image.dtype != np.uint8:
        raise DetectionError(f"{name}: expected uint8 pixels (0..255), got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise DetectionError(f"{name}: the image is empty ({image.shape[1]} x {image.shape[0]} pixels)")
    return image


def letterbox(image: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Geometry]:
    """An H x W x 3 uint8 RGB photo -> (network input float32 [3, h, w], its Geometry)."""
    return preprocess(Image.fromarray(np.ascontiguousarray(image), "RGB"), spec)


# --- the detector --------------------------------------------------------------------------------------


class Detector:
    """A detector bundle ready to find cars: `Detector.load(folder).detect(photo)`."""

    def __init__(
        self, metadata: DetectorMetadata, backend: DetectorBackend, path: Path | None = None
    ) -> None:
        self.metadata = metadata
        self.backend = backend
        self.path = path
        self.spec = metadata.preprocess_spec()

    @classmethod
    def load(cls, bundle_dir: Path | str, threads: int | None = None) -> Detector:
        """Open a detector bundle on ONNX Runtime. threads: intra-op threads (None: ONNX Runtime's
        default). Raises DetectorBundleError naming the file and the problem."""
        from carid.runtime.backends import OnnxBackend

        bundle = DetectorBundle.load(bundle_dir)
        metadata = bundle.metadata
        try:
            backend = OnnxBackend(bundle.model_path, metadata.input_name, threads=threads)
        except BundleError as exc:
            raise DetectorBundleError(str(exc)) from None
        if set(backend.output_names) != {SCORES, BOXES}:
            raise DetectorBundleError(
                f"{bundle.model_path}: the graph's outputs are {list(backend.output_names)}, "
                f"expected {[SCORES, BOXES]}"
            )
        shape = backend.input_shape
        width, height = metadata.input_size
        if len(shape) != 4 or any(
            isinstance(shape[axis], int) and shape[axis] != size for axis, size in ((2, height), (3, width))
        ):
            raise DetectorBundleError(
                f"{bundle.model_path}: the graph takes inputs of shape {list(shape)}, but model.json "
                f"'preprocess' says [batch, 3, {height}, {width}]"
            )
        return cls(metadata, backend, bundle.path)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Path | str, device: str = "cpu", threads: int | None = None
    ) -> Detector:
        """The PyTorch detector of a `task: detect` checkpoint, answering through the same letterbox
        and post-processing as a bundle (needs torch; `carid.models.detector.load_detector`)."""
        backend = TorchDetectorBackend.from_checkpoint(checkpoint, device=device, threads=threads)
        return cls(backend.metadata, backend, Path(checkpoint))

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "detector"

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> list[Detection]:
        """The cars in one H x W x 3 uint8 RGB photo, best score first ([] when there is none).

        score_threshold: None uses the bundle's operating threshold. Raises DetectionError for an
        input that is not such an array (the message says what is wrong with it).
        """
        return self.detect_batch([image], score_threshold)[0]

    def detect_batch(
        self, images: Sequence[np.ndarray], score_threshold: float | None = None, batch_size: int = 8
    ) -> list[list[Detection]]:
        """`detect` for several photos, run `batch_size` at a time; one list per photo, in order."""
        settings = PostProcess.of(self.metadata, score_threshold)
        checked = [check_image(image, f"image {index}") for index, image in enumerate(images)]
        results: list[list[Detection]] = []
        for start in range(0, len(checked), max(1, batch_size)):
            prepared = [letterbox(image, self.spec) for image in checked[start : start + max(1, batch_size)]]
            outputs = self.run(np.stack([array for array, _ in prepared]))
            for row, (_, geometry) in enumerate(prepared):
                results.append(postprocess(outputs[SCORES][row], outputs[BOXES][row], geometry, settings))
        return results

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The graph on a preprocessed batch float32 [B, 3, h, w]: {"scores": [B, A], "boxes": [B, A, 4]}."""
        outputs = self.backend.run(batch)
        scores, boxes = outputs[SCORES], outputs[BOXES]
        if scores.ndim != 2 or boxes.shape != (*scores.shape, 4):
            raise DetectionError(
                f"{self.name}: the graph gave scores of shape {list(scores.shape)} and boxes of shape "
                f"{list(boxes.shape)}, expected [B, A] and [B, A, 4]"
            )
        return {SCORES: scores, BOXES: boxes}


class TorchDetectorBackend:
    """A `carid.models.detector.DetectorNet` on PyTorch (eval mode, no gradients): its
    `forward_export`, named as in the ONNX export. `metadata`: what a bundle of it would say about
    the post-processing (no versions, parity or creation time)."""

    name = "torch"

    def __init__(self, network: Any, device: str = "cpu", source_checkpoint: str | None = None) -> None:
        from carid.runtime.backends import _import_torch

        self.torch = _import_torch()
        self.device = self.torch.device(device)
        self.network = network.to(self.device).eval()
        self.metadata = detector_metadata_of(network, source_checkpoint)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Path | str, device: str = "cpu", threads: int | None = None
    ) -> TorchDetectorBackend:
        from carid.runtime.backends import _import_torch

        torch = _import_torch()
        if threads:
            torch.set_num_threads(int(threads))
        from carid.models.detector import load_detector

        try:
            network = load_detector(checkpoint)
        except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as exc:
            raise DetectionError(f"{checkpoint}: cannot load the detector checkpoint ({exc})") from None
        return cls(network, device=device, source_checkpoint=str(Path(checkpoint).resolve()))

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            scores, boxes = self.network.forward_export(images)
        return {SCORES: scores.float().cpu().numpy(), BOXES: boxes.float().cpu().numpy()}


def detector_metadata_of(network: Any, source_checkpoint: str | None = None) -> DetectorMetadata:
    """The post-processing facts of a `DetectorNet` (its `config`, a DetectConfig, and its
    `preprocess_spec`) as bundle metadata; the exporter adds versions, parity and the rest."""
    config = network.config
    model_config = json.loads(json.dumps(dataclasses.asdict(config)))
    return DetectorMetadata(
        preprocess=network.preprocess_spec.to_dict(),
        score_threshold=float(config.score_threshold),
        nms_iou=float(config.nms_iou),
        max_detections=int(config.max_detections),
        min_box_side=float(config.min_box_side),
        model_config=model_config,
        source_checkpoint=source_checkpoint,
    )


def is_detector_model(location: ModelLocation) -> bool:
    """Whether a located model (`carid.artifacts.run_dir.locate`) is a car detector: a bundle whose
    model.json says "carid.detector", or a checkpoint of a run whose config says `task: detect`
    (a checkpoint outside a run: its own metadata, read with torch). Never raises."""
    if location.kind == "bundle":
        return is_detector_dir(location.path)
    if location.kind != "checkpoint":
        return False
    if location.run_dir is not None:
        return run_task(location.run_dir) == "detect"
    try:
        from carid.artifacts.checkpoint import load_checkpoint_metadata

        metadata = load_checkpoint_metadata(location.path)
    except Exception:  # no torch, not a checkpoint, unreadable: not a detector this can load
        return False
    return metadata.extra.get("task") == "detect"
