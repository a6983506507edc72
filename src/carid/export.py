"""`carid export`: a run or checkpoint -> a model bundle (model.onnx + model.json), parity-checked.

    RUN/checkpoints/best.ckpt --load_for_inference--> CarNet
        --torch.onnx.export (dynamo exporter, dynamic batch)--> model.onnx
            outputs: logits [B, C], box [B, 4] (when the network has a box head), embedding [B, D]
        --parity check on real images: PyTorch vs ONNX Runtime--> model.json (`carid.artifacts.bundle` format)

The "embedding" output (pooled backbone features, the heads' input) is exported so that new classes
can later be enrolled from a bundle alone (`Predictor.embed`).

The parity check runs both backends on the same preprocessed photos (`carid.runtime.predictor.prepare_image`,
the predictor's own path): the run's validation and test images from its split.csv, or the images of
a folder given with `parity_data`. Every image must get the same top-1 class (a tie closer than
`TOP1_TIE` in the PyTorch probabilities is accepted either way), probabilities within
`PROBABILITY_TOLERANCE` and, with a box head, boxes within `BOX_TOLERANCE_PX` pixels of the original
photo. When it fails, `ParityError` names the worst image and nothing is written.

Then, for a run, the embedding space that `carid enroll` adds new classes in is fitted on the run's
training photos and calibrated on its validation photos (`carid.enroll.prepare`; an enrolment-*.npz).

The bundle is built in a temporary folder beside the destination and swapped into place in one step
only when the check passed (an existing bundle is replaced only with `overwrite`), so a kill at any
moment leaves the old bundle (or none) where it was. Each export first removes what a killed one left
(its staging folders beside the destination, temporary files in it: `carid.files`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from carid import __version__
from carid.artifacts.bundle import (
    BOX,
    EMBEDDING,
    INPUT_NAME,
    LOGITS,
    MODEL_FILE,
    Bundle,
    BundleMetadata,
    write_metadata,
)
from carid.artifacts.detector import DetectorMetadata
from carid.artifacts.enrolment import remove_bundle_leftovers
from carid.artifacts.run_dir import BEST_CHECKPOINT, CHECKPOINT_DIR, EXPORT_DIR, SPLIT_FILE
from carid.enroll.prepare import DEFAULT_SPACE_IMAGES, prepare_enrolment
from carid.errors import CaridError
from carid.files import make_staging_folder, move_folder_into_place, remove_stale_temporaries
from carid.images import is_image_file
from carid.models.network import CarNet
from carid.preprocess import PreprocessSpec
from carid.runtime.backends import OnnxBackend, TorchBackend, file_sha256
from carid.runtime.calibration import apply_temperature
from carid.runtime.inputs import PreparedImage, prepare_image

log = logging.getLogger(__name__)
AnyMetadata = TypeVar("AnyMetadata", BundleMetadata, DetectorMetadata)

DEFAULT_PARITY_IMAGES = 32
PROBABILITY_TOLERANCE = 1e-3
BOX_TOLERANCE_PX = 1.0
TOP1_TIE = 1e-6  # PyTorch probabilities this close: either class is an acceptable top-1
PARITY_BATCH = 16
# What the dynamo exporter says on every export that is no news for a carid user.
_QUIET_WARNINGS = (".*Exporting a model while it is in training mode.*",)


class ExportError(CaridError, ValueError):
    """An export that cannot be done as asked; the message names the path and the problem."""


class ParityError(ExportError):
    """PyTorch and ONNX Runtime disagree on the parity images; `report` has the details."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


# --- the parity check ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityImage:
    """One parity image: each backend's top-1 class and the largest differences between them.

    probability_diff: max |p_torch - p_onnx| over the classes (softmax, temperature 1).
    box_diff_px: max coordinate difference of the boxes in original-photo pixels (None: no box head).
    """

    source: str
    top1_torch: int
    top1_onnx: int
    top1_tie: bool
    probability_diff: float
    box_diff_px: float | None
    passed: bool

    @property
    def top1_agrees(self) -> bool:
        return self.top1_torch == self.top1_onnx or self.top1_tie

    def severity(self, probability_tolerance: float, box_tolerance_px: float) -> float:
        """How far over its tolerances the image is (> 1 fails; infinite for a top-1 disagreement)."""
        if not self.top1_agrees:
            return float("inf")
        box = 0.0 if self.box_diff_px is None else self.box_diff_px / box_tolerance_px
        return max(self.probability_diff / probability_tolerance, box)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "top1_torch": self.top1_torch,
            "top1_onnx": self.top1_onnx,
            "top1_tie": self.top1_tie,
            "probability_diff": self.probability_diff,
            "box_diff_px": self.box_diff_px,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class ParityReport:
    """PyTorch vs ONNX Runtime on real photos. data: where the photos came from. unreadable: the
    candidate photos that could not be read (skipped, each message names the file). class_names:
    to name classes in `describe` (the images record class indices)."""

    images: tuple[ParityImage, ...]
    data: str
    unreadable: tuple[str, ...] = ()
    probability_tolerance: float = PROBABILITY_TOLERANCE
    box_tolerance_px: float = BOX_TOLERANCE_PX
    class_names: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.images) and all(image.passed for image in self.images)

    @property
    def failed(self) -> tuple[ParityImage, ...]:
        return tuple(image for image in self.images if not image.passed)

    @property
    def worst(self) -> ParityImage | None:
        if not self.images:
            return None
        return max(self.images, key=lambda i: i.severity(self.probability_tolerance, self.box_tolerance_px))

    @property
    def max_probability_diff(self) -> float:
        return max((image.probability_diff for image in self.images), default=0.0)

    @property
    def max_box_diff_px(self) -> float | None:
        values = [image.box_diff_px for image in self.images if image.box_diff_px is not None]
        return max(values) if values else None

    def describe(self) -> str:
        """One paragraph: passed (with the largest differences) or failed (naming the worst image)."""
        worst = self.worst
        if worst is None:
            return f"parity check: no readable images in {self.data}"
        tolerances = f"tolerances {self.probability_tolerance:g} and {self.box_tolerance_px:g} px"
        if self.passed:
            box = "" if self.max_box_diff_px is None else f", box {self.max_box_diff_px:.3g} px"
            return (
                f"parity check passed on {len(self.images)} images from {self.data}: largest differences "
                f"probability {self.max_probability_diff:.3g}{box} ({tolerances})"
            )
        box = "" if worst.box_diff_px is None else f", box difference {worst.box_diff_px:.3g} px"
        return (
            f"parity check FAILED: PyTorch and ONNX Runtime disagree on {len(self.failed)} of "
            f"{len(self.images)} images from {self.data}; worst image {worst.source}: top-1 class "
            f"{self._name(worst.top1_torch)} (PyTorch) vs {self._name(worst.top1_onnx)} (ONNX Runtime), "
            f"probability difference {worst.probability_diff:.3g}{box} ({tolerances})"
        )

    def _name(self, index: int) -> str:
        return repr(self.class_names[index]) if 0 <= index < len(self.class_names) else str(index)

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {
            "passed": self.passed,
            "data": self.data,
            "num_images": len(self.images),
            "num_failed": len(self.failed),
            "probability_tolerance": self.probability_tolerance,
            "box_tolerance_px": self.box_tolerance_px,
            "max_probability_diff": self.max_probability_diff,
            "max_box_diff_px": self.max_box_diff_px,
            "top1_agreement": sum(image.top1_agrees for image in self.images) / max(1, len(self.images)),
            "worst_image": None if worst is None else worst.source,
            "unreadable": list(self.unreadable),
            "images": [image.to_dict() for image in self.images],
        }


def check_parity(
    torch_backend: TorchBackend,
    onnx_backend: OnnxBackend,
    candidates: Sequence[Path],
    spec: PreprocessSpec,
    count: int = DEFAULT_PARITY_IMAGES,
    data: str = "",
    class_names: Sequence[str] = (),
    probability_tolerance: float = PROBABILITY_TOLERANCE,
    box_tolerance_px: float = BOX_TOLERANCE_PX,
) -> ParityReport:
    """Compare the backends on the first `count` readable `candidates` (batches of `PARITY_BATCH`).

    data: where the candidates come from (for messages); class_names: to name classes in messages.
    """
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
    images: list[ParityImage] = []
    for start in range(0, len(chosen), PARITY_BATCH):
        batch_items = chosen[start : start + PARITY_BATCH]
        batch = np.stack([item.array for item in batch_items])  # type: ignore[misc]
        reference, exported = torch_backend.run(batch), onnx_backend.run(batch)
        for row, item in enumerate(batch_items):
            images.append(_compare(item, row, reference, exported, probability_tolerance, box_tolerance_px))
    return ParityReport(
        images=tuple(images),
        data=data,
        unreadable=tuple(unreadable),
        probability_tolerance=probability_tolerance,
        box_tolerance_px=box_tolerance_px,
        class_names=tuple(class_names),
    )


def _compare(
    item: PreparedImage,
    row: int,
    reference: dict[str, np.ndarray],
    exported: dict[str, np.ndarray],
    probability_tolerance: float,
    box_tolerance_px: float,
) -> ParityImage:
    p_torch = apply_temperature(np.asarray(reference[LOGITS][row], dtype=np.float64), 1.0)
    p_onnx = apply_temperature(np.asarray(exported[LOGITS][row], dtype=np.float64), 1.0)
    top_torch, top_onnx = int(np.argmax(p_torch)), int(np.argmax(p_onnx))
    tie = top_torch != top_onnx and abs(p_torch[top_torch] - p_torch[top_onnx]) <= TOP1_TIE
    probability_diff = float(np.max(np.abs(p_torch - p_onnx)))
    if not np.isfinite(probability_diff):
        probability_diff = float("inf")
    box_diff = None
    if BOX in reference:
        geometry = item.geometry
        assert geometry is not None
        box_torch = geometry.boxes_to_original(np.asarray(reference[BOX][row : row + 1], dtype=np.float64))
        box_onnx = geometry.boxes_to_original(np.asarray(exported[BOX][row : row + 1], dtype=np.float64))
        box_diff = float(np.max(np.abs(box_torch - box_onnx)))
        if not np.isfinite(box_diff):
            box_diff = float("inf")
    passed = (
        (top_torch == top_onnx or tie)
        and probability_diff <= probability_tolerance
        and (box_diff is None or box_diff <= box_tolerance_px)
    )
    return ParityImage(item.name, top_torch, top_onnx, tie, probability_diff, box_diff, passed)


def parity_candidates(run_dir: Path | None, parity_data: Path | None, count: int) -> tuple[list[Path], str]:
    """(photos to try, in order; a description of where they came from).

    parity_data: a folder, searched recursively for image files. Otherwise the run's split.csv:
    validation and test images (train images only when the run has neither). The first `count`
    are spread evenly over the sorted list; the rest follow as reserves for unreadable files.
    """
    if parity_data is not None:
        folder = Path(parity_data)
        if not folder.is_dir():
            raise ExportError(f"--parity-data {folder}: not a folder")
        paths = sorted(path for path in folder.rglob("*") if path.is_file() and is_image_file(path))
        if not paths:
            raise ExportError(f"--parity-data {folder}: no image files in it")
        return _spread(paths, count), str(folder)
    split_csv = None if run_dir is None else run_dir / SPLIT_FILE
    if split_csv is None or not split_csv.is_file():
        raise ExportError(
            "no photos for the parity check: the checkpoint is not in a run folder with a split.csv; "
            "pass --parity-data FOLDER (or --parity-images 0 to skip the check)"
        )
    from carid.data.split import load_split

    try:
        table = load_split(split_csv)
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"{split_csv}: cannot read the run's split ({exc}); pass --parity-data FOLDER"
        ) from None
    held_out = sorted({Path(s.path) for s in table.samples if s.split in ("val", "test")})
    if held_out:
        return _spread(held_out, count), f"{split_csv} (val and test)"
    train = sorted({Path(s.path) for s in table.samples})
    if not train:
        raise ExportError(f"{split_csv}: no images listed; pass --parity-data FOLDER")
    return _spread(train, count), f"{split_csv} (train: the run has no val or test images)"


def _spread(paths: list[Path], count: int) -> list[Path]:
    if count <= 0 or len(paths) <= count:
        return list(paths)
    picked = sorted(set(np.linspace(0, len(paths) - 1, count).round().astype(int).tolist()))
    chosen = set(picked)
    return [paths[i] for i in picked] + [path for i, path in enumerate(paths) if i not in chosen]


# --- the ONNX graph ----------------------------------------------------------------------------------


class ExportedCarNet(nn.Module):
    """The graph that is exported: images -> (logits, [box,] embedding), names in `output_names`."""

    def __init__(self, network: CarNet) -> None:
        super().__init__()
        self.network = network

    @property
    def output_names(self) -> tuple[str, ...]:
        return (*self.network.output_names, EMBEDDING)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = self.network.encode(images)
        output = self.network.forward_heads(*encoded)
        if output.box is None:
            return output.logits, encoded.embeddings
        return output.logits, output.box, encoded.embeddings


def export_onnx(
    network: CarNet, path: Path, spec: PreprocessSpec, opset: int | None = None, optimize: bool = True
) -> tuple[str, ...]:
    """Write the network as ONNX (dynamic batch, input "images" float32 [B, 3, H, W]); returns the
    output names. opset: None = the exporter's default. optimize: onnxscript graph optimization."""
    module = ExportedCarNet(network).eval()
    example = torch.zeros(2, 3, spec.height, spec.width)  # batch 2: the exporter specializes 0 and 1
    with warnings.catch_warnings():
        for message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(module.output_names),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            optimize=optimize,
            verbose=False,
        )
    return module.output_names


def _onnx_opset(path: Path) -> int | None:
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    return next((int(item.version) for item in model.opset_import if item.domain in ("", "ai.onnx")), None)


def _versions() -> dict[str, str]:
    import onnxruntime

    versions = {"carid": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    for name in ("onnx", "onnxscript"):
        with contextlib.suppress(ImportError):
            versions[name] = str(__import__(name).__version__)
    return versions


# --- the export ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """The written bundle, its parity report (None when skipped) and the export's duration."""

    bundle: Bundle
    parity: ParityReport | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle.path),
            "model": self.bundle.metadata.summary(),
            "parity": None if self.parity is None else self.parity.to_dict(),
            "seconds": round(self.seconds, 2),
        }


def resolve_checkpoint(source: Path | str) -> tuple[Path, Path | None]:
    """(checkpoint, its run folder or None) for a run folder or a .ckpt path."""
    source = Path(source)
    if not source.exists():
        raise ExportError(f"{source}: no such file or folder")
    if source.is_dir():
        checkpoint = source / BEST_CHECKPOINT
        if not checkpoint.is_file():
            raise ExportError(f"{source}: not a run folder (no {BEST_CHECKPOINT.as_posix()})")
        return checkpoint, source
    if source.suffix != ".ckpt":
        raise ExportError(f"{source}: expected a run folder or a .ckpt checkpoint")
    parent = source.parent
    run_dir = parent.parent if parent.name == CHECKPOINT_DIR else None
    return source, run_dir


def default_bundle_dir(checkpoint: Path, run_dir: Path | None) -> Path:
    """RUN/export for a run's best checkpoint (where `Predictor.load(RUN)` looks), else
    `<checkpoint folder>/<checkpoint stem>-export`."""
    if run_dir is not None and checkpoint.resolve() == (run_dir / BEST_CHECKPOINT).resolve():
        return run_dir / EXPORT_DIR
    return checkpoint.parent / f"{checkpoint.stem}-{EXPORT_DIR}"


def with_input_size(metadata: AnyMetadata, input_size: tuple[int, int] | None, multiple: int) -> AnyMetadata:
    """The metadata of a bundle exported at its own input (width, height), each side a multiple of
    `multiple` (a detector's coarsest stride; 1 for a classifier, whose pooling takes any size); the
    size it was trained at is kept in extra.trained_input_size. Unchanged when input_size is None."""
    if input_size is None:
        return metadata
    width, height = (int(side) for side in input_size)
    if min(width, height) < 32 or width % multiple or height % multiple:
        rule = "at least 32" if multiple == 1 else f"multiples of {multiple}, at least 32"
        raise ExportError(f"--input-size must be two sizes {rule} (WIDTHxHEIGHT), got {width}x{height}")
    spec = metadata.preprocess_spec()
    preprocess = {**metadata.preprocess, "image_size": [height, width]}
    extra = {**metadata.extra, "trained_input_size": [spec.width, spec.height]}
    return replace(metadata, preprocess=preprocess, extra=extra)


def export_bundle(
    source: Path | str,
    out: Path | str | None = None,
    parity_images: int = DEFAULT_PARITY_IMAGES,
    parity_data: Path | str | None = None,
    opset: int | None = None,
    overwrite: bool = False,
    optimize: bool = True,
    say: Callable[[str], None] | None = None,
    enrol_images: int = DEFAULT_SPACE_IMAGES,
    finish: Callable[[Path, BundleMetadata], BundleMetadata] | None = None,
    input_size: tuple[int, int] | None = None,
) -> ExportResult:
    """Export a run folder or a .ckpt to a bundle folder; see the module docstring.

    out: the bundle folder (default `default_bundle_dir`). parity_images: how many photos the
    parity check uses (0 skips it, recorded in model.json). parity_data: a folder of photos for
    the check instead of the run's split. overwrite: replace an existing bundle folder.
    say: called with a line of progress at each step (the CLI prints them).
    enrol_images: training photos of the run's split that fit the embedding space new classes are
    enrolled in (`carid.enroll.prepare`; 0 skips it: the bundle then cannot take new classes).
    finish: called with the staging folder and the metadata once the parity check passed; returns the
    metadata to write (`carid.export_quantize` swaps in an int8 graph there).
    input_size: (width, height) the bundle resizes photos to instead of the training size (testing
    at a higher resolution than training, "FixRes"; measure it with `carid evaluate BUNDLE`).
    Raises ExportError for unusable inputs and ParityError when the check fails.
    """
    started = time.perf_counter()
    tell = say or log.info
    checkpoint, run_dir = resolve_checkpoint(source)
    out_dir = Path(out) if out is not None else default_bundle_dir(checkpoint, run_dir)
    for leftover in [
        *remove_stale_temporaries(out_dir.parent, targets=(out_dir.name,)),
        *remove_bundle_leftovers(out_dir),
    ]:
        tell(leftover.describe())
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --force to replace it, or --out elsewhere")
    if parity_images < 0:
        raise ExportError(f"--parity-images must be >= 0, got {parity_images}")
    candidates, data = (
        ([], "") if parity_images == 0 else parity_candidates(run_dir, _path(parity_data), parity_images)
    )

    tell(f"loading {checkpoint}")
    try:
        torch_backend, checkpoint_metadata = TorchBackend.from_checkpoint(checkpoint)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    network: CarNet = torch_backend.network
    base = BundleMetadata.from_checkpoint_metadata(
        checkpoint_metadata,
        output_names=torch_backend.output_names,
        embedding_dim=int(network.backbone.num_features),
        source_checkpoint=str(checkpoint.resolve()),
    )
    base = with_input_size(base, input_size, multiple=1)
    spec = base.preprocess_spec()
    sha256 = file_sha256(checkpoint)

    staging = make_staging_folder(out_dir)
    try:
        tell(f"exporting to ONNX ({spec.height}x{spec.width} input, dynamic batch)")
        model_path = staging / MODEL_FILE
        try:
            output_names = export_onnx(network, model_path, spec, opset=opset, optimize=optimize)
        except Exception as exc:  # the exporter raises many types; all mean the same to the user
            raise ExportError(f"{checkpoint}: ONNX export failed: {exc}") from exc
        onnx_backend = OnnxBackend(model_path, INPUT_NAME, providers=["CPUExecutionProvider"])
        report = None
        if parity_images > 0:
            tell(f"parity check: PyTorch vs ONNX Runtime on up to {parity_images} photos from {data}")
            report = check_parity(
                torch_backend, onnx_backend, candidates, spec, parity_images, data, base.class_names
            )
            if not report.images:
                first = report.unreadable[0] if report.unreadable else "no candidates"
                raise ExportError(
                    f"parity check: none of the photos from {data} could be read ({first}); "
                    "pass --parity-data FOLDER"
                )
            if not report.passed:
                raise ParityError(report.describe() + f". The bundle was not written to {out_dir}.", report)
            tell(report.describe())
        else:
            tell("parity check skipped (--parity-images 0)")
        metadata = replace(
            base,
            output_names=tuple(output_names),
            opset=_onnx_opset(model_path),
            versions=_versions(),
            source_sha256=sha256,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            parity=report.to_dict() if report is not None else {"skipped": True, "passed": None},
        )
        metadata = metadata if finish is None else finish(staging, metadata)
        write_metadata(staging, metadata)
        _prepare_enrolment(staging, run_dir, enrol_images, tell)
        Bundle.load(staging)  # what readers will see: validate before moving into place
        _move_into_place(staging, out_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    bundle = Bundle.load(out_dir)
    return ExportResult(bundle=bundle, parity=report, seconds=time.perf_counter() - started)


def _prepare_enrolment(staging: Path, run_dir: Path | None, images: int, tell: Callable[[str], None]) -> None:
    """Fit the bundle's enrolment space from the run's split; a bundle without it still predicts."""
    if images <= 0:
        tell("enrolment space skipped (--enrol-images 0): the bundle cannot take new classes")
        return
    split = None if run_dir is None else run_dir / SPLIT_FILE
    if split is None or not split.is_file():
        tell("enrolment space skipped: no run split.csv to fit it on (export a run folder to get one)")
        return
    from carid.evaluation.evaluation_data import load_run_config, trained_splits

    val_trained = "val" in trained_splits(load_run_config(run_dir))
    try:
        prepare_enrolment(staging, split, images=images, say=tell, val_trained=val_trained)
    except ValueError as exc:
        tell(f"enrolment space skipped: {exc}")


def _path(value: Path | str | None) -> Path | None:
    return None if value is None else Path(value)


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished bundle to `out_dir`; an existing one (with overwrite) is moved aside first."""
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} appeared during the export; pass --force to replace it")
    move_folder_into_place(staging, out_dir)
