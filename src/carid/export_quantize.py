"""int8 bundles (`carid export --quantize int8`): ONNX Runtime's static quantization of a bundle's graph.

    fp32 model.onnx --quant_pre_process (shape inference, graph optimization)
        --quantize_static (ranges calibrated on the run's training photos, preprocessed by the
          predictor's own `prepare_image`)--> int8 model.onnx
        --check: fp32 graph vs int8 graph on the run's validation photos--> model.json extra.quantization

The quantization is onnxruntime.quantization's; carid only feeds it its own preprocessed photos,
checks what comes out and records it. The check runs both graphs on the same photos and reports what
the fp32 parity check reports (top-1 agreement, largest probability and box differences) plus the
embedding's cosine similarity, each graph's top-1 accuracy on those labelled photos and the time each
took. When int8 loses more top-1 accuracy than the tolerance (`export.quantize_max_top1_drop` points,
or `--max-top1-drop`; without labels, top-1 agreement), `QuantizationError` names the figures and
nothing is written. int8 kernels differ between CPUs (AVX2 without
VNNI multiplies u8 x s8 pairs with 16-bit saturation, hence 7-bit weights, `reduce_range`, by
default), so the figures recorded are those of the machine that exported.

An int8 bundle is an ordinary bundle: `model.onnx` holds the int8 graph and model.json says so in
`extra["quantization"]` (precision, settings, calibration photos, the check's figures). Predict,
serve, evaluate and enroll load it unchanged; ONNX Runtime's CPU provider runs it without torch.

Two entry points: `export_quantized_bundle` (a run or checkpoint: the fp32 export, parity-checked
against PyTorch, then quantized before model.json is written, through `export_bundle`'s `finish`
hook) and `quantize_bundle` (an existing fp32 bundle -> an int8 copy in another folder, keeping its
calibration and enrolment space; the calibration photos come from its source run's split.csv).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType

from carid.artifacts.bundle import (
    BOX,
    EMBEDDING,
    LOGITS,
    METADATA_FILE,
    Bundle,
    BundleMetadata,
    write_metadata,
)
from carid.artifacts.run_dir import CHECKPOINT_DIR, SPLIT_FILE
from carid.config import ExportConfig
from carid.export import ExportError, ExportResult, default_bundle_dir, export_bundle, resolve_checkpoint
from carid.files import make_staging_folder, move_folder_into_place, remove_stale_temporaries
from carid.preprocess import PreprocessSpec
from carid.runtime.backends import OnnxBackend
from carid.runtime.calibration import apply_temperature
from carid.runtime.inputs import prepare_image

log = logging.getLogger(__name__)

PRECISIONS = ("int8",)
QUANTIZATION_KEY = "quantization"  # the model.json `extra` entry of a quantized bundle
CHECK_BATCH = 16
EXPECTED_SPEEDUP = 1.5  # below it the export warns: int8 costs accuracy for little speed here


class QuantizationError(ExportError):
    """The int8 graph disagrees with the fp32 one beyond the tolerance; `check` has the figures."""

    def __init__(self, message: str, check: PrecisionCheck) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class QuantizeSettings:
    """How onnxruntime.quantization.quantize_static is called.

    format: "qoperator" (QLinearConv and friends: fused int8 kernels) or "qdq" (QuantizeLinear /
        DequantizeLinear pairs around float operators, fused by ONNX Runtime where it can).
    per_channel: one scale per output channel of each weight (depthwise convolutions need it).
    reduce_range: 7-bit weights, so that u8 x s8 products cannot saturate on AVX2 CPUs without VNNI.
    calibration: "minmax" or "percentile" (99.999th percentile of each activation).
    """

    format: Literal["qoperator", "qdq"] = "qoperator"
    per_channel: bool = True
    reduce_range: bool = True
    calibration: Literal["minmax", "percentile"] = "minmax"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "calibration": self.calibration,
            "activations": "uint8",
            "weights": "int8",
        }


DEFAULT_SETTINGS = QuantizeSettings()


# --- quantizing a graph --------------------------------------------------------------------------------


class _Batches(CalibrationDataReader):
    """Preprocessed photos for quantize_static, a few at a time."""

    def __init__(self, arrays: np.ndarray, input_name: str, batch: int = 8) -> None:
        self.arrays, self.input_name, self.batch, self.start = arrays, input_name, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.arrays):
            return None
        chunk = self.arrays[self.start : self.start + self.batch]
        self.start += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self.start = 0


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs a warning per layer on the root logger (e.g. bias scales); the
    check below is what tells whether they mattered."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(
    fp32_path: Path, int8_path: Path, calibration: np.ndarray, input_name: str, settings: QuantizeSettings
) -> None:
    """Write the int8 version of the graph `fp32_path` to `int8_path`; calibration: float32 [N, 3, H, W]
    preprocessed photos the activation ranges are measured on."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="carid-quantize-") as work, _quiet_quantizer():
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(int8_path),
            _Batches(calibration, input_name),
            quant_format=QuantFormat.QOperator if settings.format == "qoperator" else QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=(
                CalibrationMethod.Percentile
                if settings.calibration == "percentile"
                else CalibrationMethod.MinMax
            ),
            extra_options={"CalibPercentile": 99.999} if settings.calibration == "percentile" else {},
        )


# --- comparing the two graphs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionCheck:
    """fp32 graph vs int8 graph on the same photos.

    top1_agreement: share of photos with the same top-1 class. probability diffs: |p_fp32 - p_int8|
    (softmax, temperature 1), largest over the classes, then max / mean over the photos. box: largest
    coordinate difference in original-photo pixels (None: no box head). embedding_cosine: of the two
    embeddings (min / mean; None: no embedding output). accuracy_*: top-1 accuracy on the photos
    whose label is one of the bundle's classes (None: no such photos). seconds_*: inference time of
    each graph over the same batches of `CHECK_BATCH`. tolerance_points: the largest loss of top-1
    accuracy accepted, in percentage points: measured on the labelled photos when there are any
    (what a user loses), else as the share of photos whose top-1 changed (`top1_drop_points`). int8
    can change many answers while the accuracy holds (as many wrong answers become right as the
    reverse), so the agreement is reported beside it but decides only without labels.
    """

    data: str
    num_images: int
    top1_agreement: float
    max_probability_diff: float
    mean_probability_diff: float
    max_box_diff_px: float | None
    embedding_cosine_min: float | None
    embedding_cosine_mean: float | None
    accuracy_fp32: float | None
    accuracy_int8: float | None
    num_labelled: int
    seconds_fp32: float
    seconds_int8: float
    tolerance_points: float
    worst_image: str | None
    unreadable: tuple[str, ...] = ()

    @property
    def agreement_loss_points(self) -> float:
        return 100.0 * (1.0 - self.top1_agreement)

    @property
    def top1_drop_points(self) -> float:
        """Points of top-1 accuracy lost on the labelled photos, else points of top-1 agreement lost."""
        if self.accuracy_fp32 is not None and self.accuracy_int8 is not None and self.num_labelled > 0:
            return 100.0 * (self.accuracy_fp32 - self.accuracy_int8)
        return self.agreement_loss_points

    @property
    def passed(self) -> bool:
        return self.num_images > 0 and self.top1_drop_points <= self.tolerance_points + 1e-9

    @property
    def speedup(self) -> float:
        return self.seconds_fp32 / self.seconds_int8 if self.seconds_int8 > 0 else float("nan")

    def describe(self) -> str:
        """One paragraph: the figures, and whether they are within the tolerance."""
        verdict = "within" if self.passed else "MORE than"
        agreement = (
            f"top-1 agrees with fp32 on {100 * self.top1_agreement:.1f} % of {self.num_images} photos "
            f"from {self.data}"
        )
        if self.accuracy_fp32 is not None and self.accuracy_int8 is not None and self.num_labelled > 0:
            head = (
                f"int8 check: top-1 accuracy on {self.num_labelled} labelled photos "
                f"{100 * self.accuracy_fp32:.1f} % fp32, {100 * self.accuracy_int8:.1f} % int8 "
                f"({self.top1_drop_points:.1f} points lost, {verdict} the tolerance of "
                f"{self.tolerance_points:g}); {agreement}"
            )
        else:
            head = (
                f"int8 check: {agreement} ({self.agreement_loss_points:.1f} points lost, {verdict} the "
                f"tolerance of {self.tolerance_points:g}; no labelled photos to measure accuracy on)"
            )
        box = "" if self.max_box_diff_px is None else f", box {self.max_box_diff_px:.3g} px"
        return (
            f"{head}; largest probability difference {self.max_probability_diff:.3g}{box}; "
            f"int8 ran {self.speedup:.2f}x as fast as fp32 here"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "data": self.data,
            "num_images": self.num_images,
            "top1_agreement": self.top1_agreement,
            "top1_agreement_loss_points": self.agreement_loss_points,
            "top1_drop_points": self.top1_drop_points,
            "judged_on": "accuracy" if self.num_labelled and self.accuracy_int8 is not None else "agreement",
            "tolerance_points": self.tolerance_points,
            "max_probability_diff": self.max_probability_diff,
            "mean_probability_diff": self.mean_probability_diff,
            "max_box_diff_px": self.max_box_diff_px,
            "embedding_cosine_min": self.embedding_cosine_min,
            "embedding_cosine_mean": self.embedding_cosine_mean,
            "num_labelled": self.num_labelled,
            "accuracy_fp32": self.accuracy_fp32,
            "accuracy_int8": self.accuracy_int8,
            "seconds_fp32": round(self.seconds_fp32, 4),
            "seconds_int8": round(self.seconds_int8, 4),
            "speedup": round(self.speedup, 3),
            "worst_image": self.worst_image,
            "unreadable": list(self.unreadable),
        }


def compare_graphs(
    fp32: OnnxBackend,
    int8: OnnxBackend,
    photos: Sequence[tuple[Path, str | None]],
    spec: PreprocessSpec,
    class_names: Sequence[str],
    data: str,
    tolerance_points: float,
) -> PrecisionCheck:
    """Run both graphs on the readable `photos` ((path, label or None) pairs); see `PrecisionCheck`."""
    index = {name: i for i, name in enumerate(class_names)}
    agree, prob_diffs, box_diffs, cosines, names = [], [], [], [], []
    right32, right8, unreadable = [], [], []
    seconds32 = seconds8 = 0.0
    for start in range(0, len(photos), CHECK_BATCH):
        chunk = [
            (prepare_image(path, spec, str(path)), label)
            for path, label in photos[start : start + CHECK_BATCH]
        ]
        unreadable += [item.error for item, _ in chunk if item.error is not None]
        good = [(item, label) for item, label in chunk if item.error is None]
        if not good:
            continue
        batch = np.stack([item.array for item, _ in good])  # type: ignore[misc]
        started = time.perf_counter()
        a = fp32.run(batch)
        seconds32 += time.perf_counter() - started
        started = time.perf_counter()
        b = int8.run(batch)
        seconds8 += time.perf_counter() - started
        p32, p8 = (
            apply_temperature(a[LOGITS].astype(np.float64), 1.0),
            apply_temperature(b[LOGITS].astype(np.float64), 1.0),
        )
        top32, top8 = p32.argmax(axis=1), p8.argmax(axis=1)
        agree += (top32 == top8).tolist()
        prob_diffs += np.abs(p32 - p8).max(axis=1).tolist()
        names += [item.name for item, _ in good]
        for row, (item, label) in enumerate(good):
            if label in index:
                right32.append(top32[row] == index[label])
                right8.append(top8[row] == index[label])
            if BOX in a and BOX in b and item.geometry is not None:
                box32 = item.geometry.boxes_to_original(a[BOX][row : row + 1].astype(np.float64))
                box8 = item.geometry.boxes_to_original(b[BOX][row : row + 1].astype(np.float64))
                box_diffs.append(float(np.abs(box32 - box8).max()))
        if EMBEDDING in a and EMBEDDING in b:
            e32, e8 = a[EMBEDDING].astype(np.float64), b[EMBEDDING].astype(np.float64)
            norms = np.linalg.norm(e32, axis=1) * np.linalg.norm(e8, axis=1)
            cosines += ((e32 * e8).sum(axis=1) / np.maximum(norms, 1e-12)).tolist()
    worst = None
    if names:  # a changed top-1 first, then the largest probability difference
        worst = names[max(range(len(names)), key=lambda i: (not agree[i], prob_diffs[i]))]
    return PrecisionCheck(
        data=data,
        num_images=len(agree),
        top1_agreement=float(np.mean(agree)) if agree else 0.0,
        max_probability_diff=max(prob_diffs, default=0.0),
        mean_probability_diff=float(np.mean(prob_diffs)) if prob_diffs else 0.0,
        max_box_diff_px=max(box_diffs) if box_diffs else None,
        embedding_cosine_min=min(cosines) if cosines else None,
        embedding_cosine_mean=float(np.mean(cosines)) if cosines else None,
        accuracy_fp32=float(np.mean(right32)) if right32 else None,
        accuracy_int8=float(np.mean(right8)) if right8 else None,
        num_labelled=len(right32),
        seconds_fp32=seconds32,
        seconds_int8=seconds8,
        tolerance_points=float(tolerance_points),
        worst_image=worst,
        unreadable=tuple(unreadable),
    )


# --- photos from the run's split -------------------------------------------------------------------------


def split_photos(
    split_csv: Path, splits: Sequence[str], count: int
) -> tuple[list[tuple[Path, str | None]], str]:
    """(up to `count` (path, label) pairs, the split's name): the first of `splits` that has photos in
    `split_csv`, spread evenly over its sorted paths (class folders: every class in proportion)."""
    from carid.data.split import load_split

    try:
        table = load_split(split_csv)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{split_csv}: cannot read the run's split ({exc})") from None
    for name in splits:
        rows = sorted({(Path(s.path), s.label) for s in table.samples if s.split == name}, key=lambda r: r[0])
        if rows:
            if count < len(rows):
                rows = [
                    rows[i] for i in sorted(set(np.linspace(0, len(rows) - 1, count).round().astype(int)))
                ]
            return list(rows), name
    raise ExportError(f"{split_csv}: no {' or '.join(splits)} photos in it")


def _calibration_arrays(
    photos: Sequence[tuple[Path, str | None]], spec: PreprocessSpec
) -> tuple[np.ndarray, list[str]]:
    arrays, unreadable = [], []
    for path, _ in photos:
        item = prepare_image(path, spec, str(path))
        if item.error is None:
            arrays.append(item.array)
        else:
            unreadable.append(item.error)
    if not arrays:
        raise ExportError(f"none of the {len(photos)} calibration photos could be read ({unreadable[:1]})")
    return np.stack(arrays).astype(np.float32), unreadable


@dataclass(frozen=True)
class QuantizeOptions:
    """What an int8 export needs besides the bundle: the tolerance (points of top-1 agreement lost),
    how many calibration and check photos, and the quantizer settings."""

    max_top1_drop: float = ExportConfig.quantize_max_top1_drop
    calibration_images: int = ExportConfig.quantize_calibration_images
    check_images: int = ExportConfig.quantize_check_images
    settings: QuantizeSettings = DEFAULT_SETTINGS

    @classmethod
    def resolve(
        cls,
        run_dir: Path | None,
        max_top1_drop: float | None = None,
        calibration_images: int | None = None,
        check_images: int | None = None,
        settings: QuantizeSettings = DEFAULT_SETTINGS,
    ) -> QuantizeOptions:
        """The run's `export:` config (defaults when there is none), overridden by what is given."""
        from carid.evaluation.evaluation_data import load_run_config

        run_config = load_run_config(run_dir)
        config = ExportConfig() if run_config is None else run_config.export
        options = cls(
            max_top1_drop=config.quantize_max_top1_drop if max_top1_drop is None else float(max_top1_drop),
            calibration_images=(
                config.quantize_calibration_images if calibration_images is None else int(calibration_images)
            ),
            check_images=config.quantize_check_images if check_images is None else int(check_images),
            settings=settings,
        )
        if not 0.0 <= options.max_top1_drop <= 100.0:
            raise ExportError(
                f"--max-top1-drop must be between 0 and 100 points, got {options.max_top1_drop:g}"
            )
        if options.calibration_images < 1 or options.check_images < 1:
            raise ExportError("an int8 export needs at least 1 calibration photo and 1 check photo")
        return options


def quantize_folder(
    folder: Path,
    metadata: BundleMetadata,
    split_csv: Path,
    options: QuantizeOptions,
    tell: Callable[[str], None],
    destination: Path | None = None,
) -> BundleMetadata:
    """Replace `folder`'s fp32 model file by its int8 version and return the metadata to write.

    Raises QuantizationError (nothing replaced) when the check loses more than the tolerance.
    destination: the bundle folder named in that message (default `folder`).
    """
    spec = metadata.preprocess_spec()
    model_path = folder / metadata.model_file
    calibration, _ = split_photos(split_csv, ("train",), options.calibration_images)
    tell(f"int8: calibrating on {len(calibration)} training photos of {split_csv}")
    arrays, unreadable = _calibration_arrays(calibration, spec)
    int8_path = folder / f".int8-{metadata.model_file}"
    quantize_onnx(model_path, int8_path, arrays, metadata.input_name, options.settings)
    check_photos, check_split = split_photos(split_csv, ("val", "test"), options.check_images)
    tell(f"int8: comparing with fp32 on {len(check_photos)} photos")
    fp32 = OnnxBackend(model_path, metadata.input_name, providers=["CPUExecutionProvider"])
    int8 = OnnxBackend(int8_path, metadata.input_name, providers=["CPUExecutionProvider"])
    check = compare_graphs(
        fp32,
        int8,
        check_photos,
        spec,
        metadata.class_names,
        f"{split_csv} ({check_split})",
        options.max_top1_drop,
    )
    if not check.passed:
        int8_path.unlink(missing_ok=True)
        raise QuantizationError(
            f"{check.describe()}. The int8 bundle was not written to {destination or folder}; pass "
            f"--max-top1-drop {np.ceil(check.top1_drop_points - 1e-6):g} to accept it "
            "(or keep the fp32 export).",
            check,
        )
    tell(check.describe())
    if check.speedup < EXPECTED_SPEEDUP:
        tell(
            f"warning: int8 ran only {check.speedup:.2f}x as fast as fp32 on this CPU "
            f"(batches of {CHECK_BATCH}; int8 is worth its accuracy cost from about {EXPECTED_SPEEDUP:g}x)"
        )
    int8_path.replace(model_path)
    record = {
        "precision": "int8",
        "method": "onnxruntime.quantization.quantize_static",
        **options.settings.to_dict(),
        "calibration": {
            "data": f"{split_csv} (train)",
            "images": len(arrays),
            "unreadable": unreadable,
        },
        "check": check.to_dict(),
    }
    return replace(metadata, extra={**metadata.extra, QUANTIZATION_KEY: record})


def is_bundle(path: Path | str) -> bool:
    """A bundle folder (or its model.json) rather than a run folder or a checkpoint."""
    path = Path(path)
    return path.name == METADATA_FILE or (path.is_dir() and (path / METADATA_FILE).is_file())


def precision_of(metadata: BundleMetadata) -> str:
    """ "int8" for a quantized bundle, else "fp32"."""
    record = metadata.extra.get(QUANTIZATION_KEY)
    return str(record.get("precision", "int8")) if isinstance(record, dict) else "fp32"


# --- the two entry points ------------------------------------------------------------------------------


def _split_of(run_dir: Path | None, what: str) -> Path:
    split = None if run_dir is None else run_dir / SPLIT_FILE
    if split is None or not split.is_file():
        raise ExportError(
            f"{what}: an int8 export calibrates on the run's training photos, and there is no run "
            f"{SPLIT_FILE} (export a run folder, or a bundle exported from one)"
        )
    return split


def export_quantized_bundle(
    source: Path | str,
    precision: str = "int8",
    max_top1_drop: float | None = None,
    calibration_images: int | None = None,
    check_images: int | None = None,
    settings: QuantizeSettings = DEFAULT_SETTINGS,
    say: Callable[[str], None] | None = None,
    **export_options: Any,
) -> ExportResult:
    """`export_bundle` of a run or checkpoint, with the graph quantized before model.json is written.

    max_top1_drop / calibration_images / check_images: None takes the run's `export:` config.
    export_options: the rest of `export_bundle`'s arguments (out, overwrite, parity_images, ...).
    """
    _check_precision(precision)
    tell = say or log.info
    checkpoint, run_dir = resolve_checkpoint(source)
    split = _split_of(run_dir, str(source))
    options = QuantizeOptions.resolve(run_dir, max_top1_drop, calibration_images, check_images, settings)
    out = export_options.get("out")
    destination = Path(out) if out is not None else default_bundle_dir(checkpoint, run_dir)

    def finish(staging: Path, metadata: BundleMetadata) -> BundleMetadata:
        return quantize_folder(staging, metadata, split, options, tell, destination=destination)

    return export_bundle(source, say=say, finish=finish, **export_options)


def quantize_bundle(
    bundle_path: Path | str,
    out: Path | str | None = None,
    precision: str = "int8",
    max_top1_drop: float | None = None,
    calibration_images: int | None = None,
    check_images: int | None = None,
    settings: QuantizeSettings = DEFAULT_SETTINGS,
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
) -> ExportResult:
    """An int8 copy of an fp32 bundle in `out` (default `<bundle>-int8`), with its calibration,
    operating point and enrolment space (fitted on the fp32 embeddings: the check's embedding cosine
    says how far int8 moves them). Calibrated on the training photos of the bundle's source run."""
    _check_precision(precision)
    started = time.perf_counter()
    tell = say or log.info
    bundle = Bundle.load(bundle_path)
    if precision_of(bundle.metadata) != "fp32":
        raise ExportError(f"{bundle.path}: already {precision_of(bundle.metadata)}; quantize its fp32 bundle")
    out_dir = Path(out) if out is not None else bundle.path.with_name(f"{bundle.path.name}-{precision}")
    if out_dir.resolve() == bundle.path.resolve():
        raise ExportError(f"{out_dir}: the int8 bundle needs its own folder (--out), beside the fp32 one")
    for leftover in remove_stale_temporaries(out_dir.parent, targets=(out_dir.name,)):
        tell(leftover.describe())
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir} already exists; pass --force to replace it, or --out elsewhere")
    source = bundle.metadata.source_checkpoint
    checkpoint = None if source is None else Path(source)
    run_dir = (
        checkpoint.parent.parent
        if checkpoint is not None and checkpoint.parent.name == CHECKPOINT_DIR
        else None
    )
    split = _split_of(run_dir, str(bundle.path))
    options = QuantizeOptions.resolve(run_dir, max_top1_drop, calibration_images, check_images, settings)
    staging = make_staging_folder(out_dir)
    try:
        for item in sorted(bundle.path.iterdir()):
            if item.is_file() and not item.name.startswith("."):
                shutil.copy2(item, staging / item.name)
        metadata = quantize_folder(staging, bundle.metadata, split, options, tell, destination=out_dir)
        write_metadata(staging, metadata)
        Bundle.load(staging)
        if out_dir.exists() and not overwrite:
            raise ExportError(f"{out_dir} appeared during the export; pass --force to replace it")
        move_folder_into_place(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(bundle=Bundle.load(out_dir), parity=None, seconds=time.perf_counter() - started)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ExportError(f"--quantize {precision!r}: expected one of {', '.join(PRECISIONS)}")
