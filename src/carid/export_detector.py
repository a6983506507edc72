"""`carid export` for a car detector: a `task: detect` run or checkpoint -> a detector bundle
(model.onnx + model.json with format "carid.detector", `carid.artifacts.detector`), parity-checked.

    RUN/checkpoints/best.ckpt --load_detector--> DetectorNet
        --torch.onnx.export of `forward_export` (dynamo exporter, fixed input size)--> model.onnx
            outputs: scores [B, A] in [0, 1], boxes [B, A, 4] xyxy network-input pixels
        --parity check on real photos--> model.json (score threshold, NMS IoU, ... from the
          detector's config; versions, source checkpoint and its SHA-256, parity)

The graph takes one photo at a time (`EXPORT_BATCH`): `forward_export` builds its anchors as one
tensor per image, which the exporter fixes to the example batch; ONNX Runtime backends run a batch
one photo after the other (`carid.runtime.backends.OnnxBackend`).

The parity check runs on letterboxed photos prepared as the predictor prepares them
(`carid.runtime.inputs.prepare_image`): the run's validation and test photos from its split.csv, or
a folder given with `parity_data` (`carid.export.parity_candidates`). Per photo it compares

1. the graph: ONNX Runtime vs PyTorch `forward_export` on the same input, every location: scores
   within `SCORE_TOLERANCE`, boxes (clipped to the input) within `BOX_TOLERANCE_PX` network pixels;
2. the final detections, in photo pixels: the bundle's NumPy post-processing of the ONNX outputs
   (`carid.runtime.detection.postprocess`) vs torchvision's post-processing of the same PyTorch
   model (`DetectorNet.detect`). Each detection must have a partner with a box IoU of at least
   `MIN_MATCHED_IOU` and a score within `SCORE_TOLERANCE`; one without a partner is accepted only
   when its score is within `SCORE_TOLERANCE` of the threshold (it may fall either side of it).

The figures go to model.json's "parity"; a failure raises `DetectorParityError` naming the worst
photo, and nothing is written. As for classifiers (`carid.export`), the bundle is built in a staging
folder beside the destination and swapped into place in one step.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from carid.artifacts.bundle import INPUT_NAME, MODEL_FILE
from carid.artifacts.detector import (
    BOXES,
    SCORES,
    DetectorBundle,
    DetectorMetadata,
    write_detector_metadata,
)
from carid.artifacts.run_dir import ModelPathError, locate
from carid.boxes import clip, iou
from carid.export import (
    _QUIET_WARNINGS,
    BOX_TOLERANCE_PX,
    DEFAULT_PARITY_IMAGES,
    PARITY_BATCH,
    PROBABILITY_TOLERANCE,
    ExportError,
    ParityError,
    _move_into_place,
    _onnx_opset,
    _versions,
    default_bundle_dir,
    parity_candidates,
    resolve_checkpoint,
    with_input_size,
)
from carid.files import make_staging_folder, remove_stale_temporaries
from carid.preprocess import PreprocessSpec
from carid.runtime.backends import OnnxBackend, file_sha256
from carid.runtime.detection import (
    Detection,
    PostProcess,
    TorchDetectorBackend,
    is_detector_model,
    postprocess,
    to_photo,
)
from carid.runtime.inputs import PreparedImage, prepare_image

log = logging.getLogger(__name__)

EXPORT_BATCH = 1
SCORE_TOLERANCE = PROBABILITY_TOLERANCE
MIN_MATCHED_IOU = 0.99
PAIR_IOU = 0.5  # two detections closer than this are not the same car, whatever their scores


class DetectorParityError(ParityError):
    """PyTorch and the bundle disagree on the parity photos; `report` (a DetectorParityReport) has
    the details. A ParityError, so `carid export` exits 1 for it as for a classifier."""


# --- the parity check ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorParityImage:
    """One parity photo. score_diff / box_diff_px: the graph's largest differences (box in network
    pixels). matched: detections paired between PyTorch and the bundle; unmatched: those without a
    partner that are not borderline; min_matched_iou / max_detection_score_diff: over the pairs."""

    source: str
    score_diff: float
    box_diff_px: float
    detections_torch: int
    detections_onnx: int
    matched: int
    unmatched: int
    min_matched_iou: float | None
    max_detection_score_diff: float | None
    passed: bool

    def severity(self) -> float:
        """How far over its tolerances the photo is (> 1 fails; infinite for an unmatched detection)."""
        if self.unmatched:
            return float("inf")
        pair_iou = self.min_matched_iou if self.min_matched_iou is not None else 1.0
        return max(
            self.score_diff / SCORE_TOLERANCE,
            self.box_diff_px / BOX_TOLERANCE_PX,
            (self.max_detection_score_diff or 0.0) / SCORE_TOLERANCE,
            (1.0 - pair_iou) / (1.0 - MIN_MATCHED_IOU),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "score_diff": self.score_diff,
            "box_diff_px": self.box_diff_px,
            "detections_torch": self.detections_torch,
            "detections_onnx": self.detections_onnx,
            "matched": self.matched,
            "unmatched": self.unmatched,
            "min_matched_iou": self.min_matched_iou,
            "max_detection_score_diff": self.max_detection_score_diff,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class DetectorParityReport:
    """The bundle vs PyTorch on real photos (see the module docstring). data: where the photos came
    from; unreadable: candidates that could not be read (skipped); score_threshold: of the check."""

    images: tuple[DetectorParityImage, ...]
    data: str
    score_threshold: float
    unreadable: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.images) and all(image.passed for image in self.images)

    @property
    def failed(self) -> tuple[DetectorParityImage, ...]:
        return tuple(image for image in self.images if not image.passed)

    @property
    def worst(self) -> DetectorParityImage | None:
        return max(self.images, key=DetectorParityImage.severity) if self.images else None

    def _max(self, name: str) -> float | None:
        values = [getattr(image, name) for image in self.images if getattr(image, name) is not None]
        return max(values) if values else None

    @property
    def min_matched_iou(self) -> float | None:
        values = [image.min_matched_iou for image in self.images if image.min_matched_iou is not None]
        return min(values) if values else None

    def describe(self) -> str:
        """One paragraph: passed (with the largest differences) or failed (naming the worst photo)."""
        worst = self.worst
        if worst is None:
            return f"detector parity check: no readable photos in {self.data}"
        matched = sum(image.matched for image in self.images)
        tolerances = (
            f"tolerances: score {SCORE_TOLERANCE:g}, box {BOX_TOLERANCE_PX:g} px, "
            f"matched IoU >= {MIN_MATCHED_IOU:g}"
        )
        if self.passed:
            pair_iou = self.min_matched_iou
            return (
                f"detector parity check passed on {len(self.images)} photos from {self.data}: graph "
                f"score {self._max('score_diff'):.3g}, box {self._max('box_diff_px'):.3g} px; {matched} "
                f"detections above {self.score_threshold:g} matched"
                + ("" if pair_iou is None else f", lowest IoU {pair_iou:.4f}")
                + f" ({tolerances})"
            )
        return (
            f"detector parity check FAILED on {len(self.failed)} of {len(self.images)} photos from "
            f"{self.data}; worst photo {worst.source}: graph score difference {worst.score_diff:.3g}, box "
            f"{worst.box_diff_px:.3g} px; detections PyTorch {worst.detections_torch} vs bundle "
            f"{worst.detections_onnx}, {worst.unmatched} without a partner, lowest matched IoU "
            f"{worst.min_matched_iou if worst.min_matched_iou is not None else 'n/a'} ({tolerances})"
        )

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {
            "passed": self.passed,
            "data": self.data,
            "num_images": len(self.images),
            "num_failed": len(self.failed),
            "score_threshold": self.score_threshold,
            "score_tolerance": SCORE_TOLERANCE,
            "box_tolerance_px": BOX_TOLERANCE_PX,
            "min_matched_iou_tolerance": MIN_MATCHED_IOU,
            "max_score_diff": self._max("score_diff"),
            "max_box_diff_px": self._max("box_diff_px"),
            "detections_torch": sum(image.detections_torch for image in self.images),
            "detections_onnx": sum(image.detections_onnx for image in self.images),
            "detections_matched": sum(image.matched for image in self.images),
            "min_matched_iou": self.min_matched_iou,
            "max_detection_score_diff": self._max("max_detection_score_diff"),
            "worst_image": None if worst is None else worst.source,
            "unreadable": list(self.unreadable),
            "images": [image.to_dict() for image in self.images],
        }


def match_detections(
    reference: Sequence[Detection], candidate: Sequence[Detection], score_threshold: float
) -> tuple[list[tuple[float, float]], int]:
    """Pair two detection lists of one photo (each best first): ([(IoU, |score difference|) per
    pair], detections without a partner that are not borderline). Each reference detection takes
    the unpaired candidate it overlaps most (IoU >= PAIR_IOU)."""
    ref_boxes = np.array([d.box for d in reference], dtype=np.float64).reshape(-1, 4)
    cand_boxes = np.array([d.box for d in candidate], dtype=np.float64).reshape(-1, 4)
    overlaps = iou(ref_boxes, cand_boxes)
    taken = np.zeros(len(candidate), dtype=bool)
    pairs: list[tuple[float, float]] = []
    lonely: list[Detection] = []
    for row, detection in enumerate(reference):
        options = np.where(taken, -1.0, overlaps[row]) if len(candidate) else np.zeros(0)
        best = int(np.argmax(options)) if len(options) else -1
        if best < 0 or options[best] < PAIR_IOU:
            lonely.append(detection)
            continue
        taken[best] = True
        pairs.append((float(options[best]), abs(detection.score - candidate[best].score)))
    lonely += [d for d, used in zip(candidate, taken, strict=True) if not used]
    unmatched = sum(abs(d.score - score_threshold) > SCORE_TOLERANCE for d in lonely)
    return pairs, unmatched


def check_detector_parity(
    torch_backend: TorchDetectorBackend,
    onnx_backend: OnnxBackend,
    candidates: Sequence[Path],
    spec: PreprocessSpec,
    settings: PostProcess,
    count: int = DEFAULT_PARITY_IMAGES,
    data: str = "",
) -> DetectorParityReport:
    """Compare the bundle with PyTorch on the first `count` readable `candidates` (see the module
    docstring); data: where the candidates come from (for messages)."""
    chosen: list[PreparedImage] = []
    unreadable: list[str] = []
    for path in candidates:
        if len(chosen) >= count:
            break
        item = prepare_image(path, spec, str(path))
        if item.error is None:
            chosen.append(item)
        else:
            unreadable.append(item.error)
    images: list[DetectorParityImage] = []
    network_size = (spec.width, spec.height)
    for start in range(0, len(chosen), PARITY_BATCH):
        items = chosen[start : start + PARITY_BATCH]
        batch = np.stack([item.array for item in items])  # type: ignore[misc]
        reference, exported = torch_backend.run(batch), onnx_backend.run(batch)
        with torch.inference_mode():
            detected = torch_backend.network.detect(
                torch.from_numpy(batch), score_threshold=settings.score_threshold
            )
        for row, item in enumerate(items):
            geometry = item.geometry
            assert geometry is not None
            score_diff = _max_diff(reference[SCORES][row], exported[SCORES][row])
            box_diff = _max_diff(
                clip(reference[BOXES][row], *network_size), clip(exported[BOXES][row], *network_size)
            )
            torch_detections = to_photo(
                detected[row]["boxes"].double().numpy(), detected[row]["scores"].double().numpy(), geometry
            )
            onnx_detections = postprocess(exported[SCORES][row], exported[BOXES][row], geometry, settings)
            pairs, unmatched = match_detections(torch_detections, onnx_detections, settings.score_threshold)
            min_iou = min((pair[0] for pair in pairs), default=None)
            score_delta = max((pair[1] for pair in pairs), default=None)
            passed = (
                score_diff <= SCORE_TOLERANCE
                and box_diff <= BOX_TOLERANCE_PX
                and unmatched == 0
                and (min_iou is None or min_iou >= MIN_MATCHED_IOU)
                and (score_delta is None or score_delta <= SCORE_TOLERANCE)
            )
            images.append(
                DetectorParityImage(
                    item.name,
                    score_diff,
                    box_diff,
                    len(torch_detections),
                    len(onnx_detections),
                    len(pairs),
                    unmatched,
                    min_iou,
                    score_delta,
                    passed,
                )
            )
    return DetectorParityReport(tuple(images), data, settings.score_threshold, tuple(unreadable))


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| (infinite when either has a non-finite value where the other does not agree)."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    value = float(diff.max()) if diff.size else 0.0
    return value if np.isfinite(value) else float("inf")


# --- the ONNX graph ----------------------------------------------------------------------------------


class ExportedDetector(nn.Module):
    """The graph that is exported: images -> (scores, boxes) of `DetectorNet.forward_export`."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network.forward_export(images)  # type: ignore[operator]


def export_detector_onnx(
    network: nn.Module, path: Path, spec: PreprocessSpec, opset: int | None = None, optimize: bool = True
) -> None:
    """Write the detector's `forward_export` as ONNX: input "images" float32 [1, 3, H, W], outputs
    "scores" and "boxes". opset: None = the exporter's default; optimize: onnxscript's optimizer."""
    module = ExportedDetector(network).eval()
    example = torch.zeros(EXPORT_BATCH, 3, spec.height, spec.width)
    with warnings.catch_warnings():
        for message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[SCORES, BOXES],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            optimize=optimize,
            verbose=False,
        )


# --- the export ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorExportResult:
    """The written detector bundle, its parity report (None when skipped) and the export's duration."""

    bundle: DetectorBundle
    parity: DetectorParityReport | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle.path),
            "model": self.bundle.metadata.summary(),
            "parity": None if self.parity is None else self.parity.to_dict(),
            "seconds": round(self.seconds, 2),
        }


def is_detector_source(source: Path | str) -> bool:
    """Whether `carid export SOURCE` means a detector: a run folder whose config says `task: detect`
    or a checkpoint of one (`carid.runtime.detection.is_detector_model`). False for anything else,
    including paths that name no model (the classifier export then says what is wrong)."""
    try:
        return is_detector_model(locate(source))
    except (ModelPathError, OSError):
        return False


def _with_operating_choices(
    metadata: DetectorMetadata, input_size: tuple[int, int] | None, score_threshold: float | None
) -> DetectorMetadata:
    """The metadata with the export's own input size and operating threshold, when given."""
    if score_threshold is not None:
        if not 0.0 < score_threshold < 1.0:
            raise ExportError(f"--score-threshold must be between 0 and 1, got {score_threshold}")
        metadata = replace(metadata, score_threshold=float(score_threshold))
    return with_input_size(metadata, input_size, multiple=32)


def export_detector_bundle(
    source: Path | str,
    out: Path | str | None = None,
    parity_images: int = DEFAULT_PARITY_IMAGES,
    parity_data: Path | str | None = None,
    opset: int | None = None,
    overwrite: bool = False,
    optimize: bool = True,
    say: Callable[[str], None] | None = None,
    input_size: tuple[int, int] | None = None,
    score_threshold: float | None = None,
) -> DetectorExportResult:
    """Export a detector run folder or checkpoint to a detector bundle; see the module docstring.

    out: the bundle folder (default RUN/export, as `carid.export.default_bundle_dir`).
    parity_images: photos for the parity check (0 skips it, recorded in model.json); parity_data:
    a folder of photos for it instead of the run's split. overwrite: replace an existing bundle.
    say: called with a line of progress at each step. input_size: (width, height) of the exported
    network input instead of the training size (the network is fully convolutional: a smaller input is
    faster and sees cars smaller; both multiples of 32). score_threshold: the operating threshold
    stored in the bundle instead of the training config's. Raises ExportError for unusable inputs and
    DetectorParityError when the check fails.
    """
    started = time.perf_counter()
    tell = say or log.info
    checkpoint, run_dir = resolve_checkpoint(source)
    out_dir = Path(out) if out is not None else default_bundle_dir(checkpoint, run_dir)
    for leftover in remove_stale_temporaries(out_dir.parent, targets=(out_dir.name,)):
        tell(leftover.describe())
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --force to replace it, or --out elsewhere")
    if parity_images < 0:
        raise ExportError(f"--parity-images must be >= 0, got {parity_images}")
    folder = None if parity_data is None else Path(parity_data)
    candidates, data = ([], "") if parity_images == 0 else parity_candidates(run_dir, folder, parity_images)

    tell(f"loading detector {checkpoint}")
    try:
        torch_backend = TorchDetectorBackend.from_checkpoint(checkpoint)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    base = replace(torch_backend.metadata, source_checkpoint=str(checkpoint.resolve()))
    base = _with_operating_choices(base, input_size, score_threshold)
    spec = base.preprocess_spec()
    settings = PostProcess.of(base)
    sha256 = file_sha256(checkpoint)

    staging = make_staging_folder(out_dir)
    try:
        tell(f"exporting the detector to ONNX ({spec.width}x{spec.height} input, one photo per run)")
        model_path = staging / MODEL_FILE
        try:
            export_detector_onnx(torch_backend.network, model_path, spec, opset=opset, optimize=optimize)
        except Exception as exc:  # the exporter raises many types; all mean the same to the user
            raise ExportError(f"{checkpoint}: ONNX export failed: {exc}") from exc
        onnx_backend = OnnxBackend(model_path, INPUT_NAME, providers=["CPUExecutionProvider"])
        report = None
        if parity_images > 0:
            tell(f"parity check: PyTorch vs the bundle on up to {parity_images} photos from {data}")
            report = check_detector_parity(
                torch_backend, onnx_backend, candidates, spec, settings, parity_images, data
            )
            if not report.images:
                first = report.unreadable[0] if report.unreadable else "no candidates"
                raise ExportError(
                    f"parity check: none of the photos from {data} could be read ({first}); "
                    "pass --parity-data FOLDER"
                )
            if not report.passed:
                raise DetectorParityError(
                    report.describe() + f". The bundle was not written to {out_dir}.",
                    report,  # type: ignore[arg-type]
                )
            tell(report.describe())
        else:
            tell("parity check skipped (--parity-images 0)")
        metadata = replace(
            base,
            dynamic_batch=False,
            opset=_onnx_opset(model_path),
            versions=_versions(),
            source_sha256=sha256,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            parity=report.to_dict() if report is not None else {"skipped": True, "passed": None},
            extra={**base.extra, **({"run_name": run_dir.name} if run_dir is not None else {})},
        )
        write_detector_metadata(staging, metadata)
        DetectorBundle.load(staging)  # what readers will see: validate before moving into place
        _move_into_place(staging, out_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    bundle = DetectorBundle.load(out_dir)
    return DetectorExportResult(bundle=bundle, parity=report, seconds=time.perf_counter() - started)
