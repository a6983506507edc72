"""Predict with a trained model: `Predictor` (ONNX Runtime or PyTorch) and its result, `Prediction`.

    images (paths, bytes, PIL images)
        --decode (carid.preprocess.load_image: reduced-size JPEG decode, EXIF, alpha on white)
        --preprocess (carid.preprocess.preprocess: the bundle's PreprocessSpec, one code path)
        --backend.run(float32 [B, 3, H, W]) -> logits [B, C], box [B, 4] normalized xyxy, embedding [B, D]
        --softmax(logits / temperature) --unknown threshold --taxonomy roll-up --box to original pixels
        --> Prediction per image (errors per image: one unreadable file does not stop the batch)

`Predictor.load(path)` accepts a bundle folder (or its model.json), a `.ckpt` checkpoint, a run
folder (its `export/` bundle when present, else `checkpoints/best.ckpt` on PyTorch), or an ensemble
folder (ensemble.json: `carid.evaluation.ensemble.EnsemblePredictor`, which runs each member bundle
on its own preprocessing and combines their probabilities). A bundle's enrolled classes (`carid enroll`,
`carid.enroll.store`) are scored from the embedding output and follow the trained classes. backend="auto"
picks ONNX Runtime for bundles and PyTorch for checkpoints; backend="torch" on a bundle runs the
bundle's source checkpoint with the bundle's calibration (to compare the two backends).
tta="hflip" also scores each photo's mirror image and averages the two (`carid.runtime.tta`; for an
ensemble, each member does).

This module imports without torch (the slim install: numpy, Pillow, onnxruntime); torch is imported
only when the torch backend is asked for. `Prediction` and its parts are frozen dataclasses whose
`to_dict()` is what the CLI, the REST API and the web page show.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from PIL import Image

from carid import boxes as box_math
from carid.artifacts.bundle import (
    BOX,
    EMBEDDING,
    ENSEMBLE_FILE,
    INPUT_NAME,
    LOGITS,
    METADATA_FILE,
    Bundle,
    BundleError,
    BundleMetadata,
)
from carid.errors import CaridError
from carid.evaluation.calibration import apply_temperature, apply_unknown
from carid.images import ImageError, to_rgb
from carid.preprocess import Geometry, PreprocessSpec, load_image, preprocess

if TYPE_CHECKING:
    from carid.enroll.store import Enrolment
from carid.runtime.tta import TtaError, check_mode, tta_of, with_tta
from carid.taxonomy import Taxonomy, roll_up

log = logging.getLogger(__name__)

BackendName = Literal["auto", "onnx", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "onnx", "torch")
UNKNOWN_LABEL = "unknown"
ROLL_UP_LEVELS: tuple[str, ...] = ("make", "body_type", "year")
RUN_EXPORT_DIR = "export"  # `carid export RUN` writes RUN/export; `Predictor.load(RUN)` looks there
RUN_CHECKPOINT = Path("checkpoints") / "best.ckpt"
TORCH_MISSING = (
    "the torch backend needs PyTorch (pip install 'carid[train]'); without it, export the model "
    "with `carid export` and predict with the bundle on ONNX Runtime"
)

ImageInput = str | Path | bytes | Image.Image


class PredictorError(CaridError, ValueError):
    """A model that cannot be loaded or run as asked; the message names the path and the problem."""


# --- results -------------------------------------------------------------------------------------


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
    """Milliseconds spent on one image. inference_ms is the batch's run time divided by its size."""

    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.preprocess_ms + self.inference_ms

    def to_dict(self) -> dict[str, float]:
        return {
            "decode_ms": round(self.decode_ms, 3),
            "preprocess_ms": round(self.preprocess_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image, or why it could not say anything (`error`).

    source: the path as given, or a name for bytes / PIL inputs.
    label: the top-1 class, or "unknown" when its probability is below the bundle's unknown
        threshold (`unknown` True; `top_k` still lists the classes). None when `error` is set.
    probability: the top-1 class probability (after temperature scaling).
    make / body_type / year: the most likely value at each taxonomy level with its rolled-up
        probability (None when the model's classes do not say it). Given also when the label is
        "unknown": the make can be clear when the exact model is not.
    box: the car in the original photo's pixels (None without a box head).
    image_size: (width, height) of the photo after EXIF orientation.
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

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def top1(self) -> ClassScore | None:
        """The most likely class (also when the label is "unknown")."""
        return self.top_k[0] if self.top_k else None

    def to_dict(self) -> dict[str, Any]:
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
        }


# --- preparing images -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the network: array float32 [3, H, W] and its Geometry, or an error."""

    name: str
    array: np.ndarray | None = field(default=None, repr=False)
    geometry: Geometry | None = None
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    error: str | None = None


def source_name(image: object, index: int) -> str:
    """How an input is named in results and errors: the path, a PIL image's file name, or "<image i>"."""
    if isinstance(image, str | Path):
        return str(image)
    filename = getattr(image, "filename", None)
    if isinstance(image, Image.Image) and isinstance(filename, str) and filename:
        return filename
    return f"<image {index}>"


def prepare_image(image: ImageInput, spec: PreprocessSpec, name: str) -> PreparedImage:
    """Decode and preprocess one input exactly as the network's training evaluation did.

    Never raises for a bad image: the returned `error` names the image and the problem.
    """
    started = time.perf_counter()
    try:
        if isinstance(image, Image.Image):
            rgb, original_size = to_rgb(image), None
        elif isinstance(image, str | Path | bytes | bytearray | memoryview):
            source = Path(image) if isinstance(image, str | Path) else bytes(image)
            decoded = load_image(source, spec, name=name)
            rgb, original_size = decoded.image, decoded.original_size
        else:
            return PreparedImage(
                name,
                error=f"{name}: unsupported input {type(image).__name__} (give a path, bytes or a PIL image)",
            )
        decoded_at = time.perf_counter()
        array, geometry = preprocess(rgb, spec, original_size=original_size)
    except ImageError as exc:
        return PreparedImage(name, error=str(exc), decode_ms=_ms_since(started))
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors on odd in-memory images
        return PreparedImage(
            name, error=f"{name}: cannot use this image ({exc})", decode_ms=_ms_since(started)
        )
    return PreparedImage(
        name=name,
        array=array,
        geometry=geometry,
        decode_ms=(decoded_at - started) * 1000.0,
        preprocess_ms=_ms_since(decoded_at),
    )


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


# --- backends --------------------------------------------------------------------------------------


class InferenceBackend(Protocol):
    """Runs the network: float32 [B, 3, H, W] -> {output name: array}, names from `output_names`."""

    name: str
    output_names: tuple[str, ...]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxBackend:
    """An ONNX Runtime session over a bundle's model.onnx."""

    name = "onnx"

    def __init__(
        self,
        model_path: Path | str,
        input_name: str = INPUT_NAME,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime

        self.model_path = Path(model_path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.model_path),
                sess_options=options,
                providers=list(providers) if providers else default_providers(),
            )
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise BundleError(f"{self.model_path}: ONNX Runtime cannot load the model ({exc})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != input_name:
            found = ", ".join(item.name for item in inputs)
            raise BundleError(f"{self.model_path}: expected one input named {input_name!r}, found {found}")
        self.input_name = input_name
        self.input_shape = tuple(inputs[0].shape)
        self.output_names = tuple(output.name for output in self.session.get_outputs())
        batch_dim = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fixed_batch is None or len(batch) == self.fixed_batch:
            values = self.session.run(None, {self.input_name: batch})
            return dict(zip(self.output_names, values, strict=True))
        if self.fixed_batch != 1:
            raise PredictorError(
                f"{self.model_path}: the graph takes batches of exactly {self.fixed_batch} images"
            )
        parts = [self.run(batch[i : i + 1]) for i in range(len(batch))]
        return {name: np.concatenate([part[name] for part in parts]) for name in self.output_names}


class TorchBackend:
    """A `CarNet` on PyTorch (eval mode, no gradients); outputs named as in the ONNX export."""

    name = "torch"

    def __init__(self, network: Any, device: str = "cpu") -> None:
        torch = _import_torch()
        self.torch = torch
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.output_names = (*network.output_names, EMBEDDING)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Path | str, device: str = "cpu", threads: int | None = None
    ) -> tuple[TorchBackend, dict[str, Any]]:
        """(backend, the checkpoint's carid metadata as plain types). threads: torch.set_num_threads."""
        torch = _import_torch()
        if threads:
            torch.set_num_threads(int(threads))
        from carid.training.module import load_for_inference

        try:
            network, metadata = load_for_inference(checkpoint, device=device)
        except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as exc:
            raise PredictorError(f"{checkpoint}: cannot load the checkpoint ({exc})") from None
        return cls(network, device=device), metadata.to_dict()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            encoded = self.network.encode(images)
            output = self.network.forward_heads(*encoded)
            result = {LOGITS: output.logits, EMBEDDING: encoded.embeddings}
            if output.box is not None:
                result[BOX] = output.box
            return {name: tensor.float().cpu().numpy() for name, tensor in result.items()}


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise PredictorError(TORCH_MISSING) from None
    return torch


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the predictor -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClassParts:
    make: str | None = None
    model: str | None = None
    body_type: str | None = None
    year: int | None = None


class Predictor:
    """A model ready to predict: a backend, the bundle metadata and the preprocessing it prescribes.

    Build it with `Predictor.load(path)`; tests and tools may pass any `InferenceBackend`. Safe to
    share between threads (ONNX Runtime sessions and eval-mode torch modules are).
    """

    def __init__(
        self,
        backend: InferenceBackend,
        metadata: BundleMetadata,
        source: Path | str | None = None,
        enrolment: Enrolment | None = None,
        tta: str = "none",
    ):
        self.backend: InferenceBackend = with_tta(backend, tta)  # type: ignore[assignment]
        self.source = None if source is None else Path(source)
        # Enrolled classes (`carid enroll`) follow the trained ones: their scores are appended to
        # the trained logits, and the class names (and taxonomy) the predictor answers with grow.
        self.trained_classes = metadata.num_classes
        self.enrolment = enrolment if enrolment is not None and enrolment.classes else None
        if self.enrolment is not None:
            if EMBEDDING not in backend.output_names:
                raise PredictorError(
                    f"{self.source or 'model'}: enrolled classes need the model's {EMBEDDING!r} output"
                )
            metadata = with_enrolled_classes(metadata, self.enrolment.labels)
        self.metadata = metadata
        self.spec: PreprocessSpec = metadata.preprocess_spec()
        taxonomy = metadata.taxonomy_object() if metadata.label_level == "class" else None
        # Class names that are no car names at all ("red", "Abyssinian") say no make or body type.
        self.taxonomy = taxonomy if taxonomy and any(entry.parsed for entry in taxonomy.entries) else None
        where = self.source or "model"
        required = (LOGITS, BOX) if metadata.with_box else (LOGITS,)
        missing = [name for name in required if name not in backend.output_names]
        if missing:
            raise PredictorError(
                f"{where}: the {backend.name} model has outputs {list(backend.output_names)}, "
                f"missing {missing} that model.json promises"
            )
        self._parts = [self._class_parts(index) for index in range(metadata.num_classes)]
        self._level_values = (
            {level: self.taxonomy.values(level) for level in ROLL_UP_LEVELS} if self.taxonomy else {}
        )

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        path: Path | str,
        backend: BackendName | str = "auto",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        device: str = "cpu",
        enrolled: bool = True,
        tta: str = "none",
    ) -> Predictor:
        """A predictor for a bundle folder / model.json, a .ckpt, or a run folder (see module docstring).

        providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
        threads: intra-op threads (ONNX Runtime), or torch.set_num_threads for the torch backend.
        device: torch device for the torch backend.
        enrolled: answer with the bundle's enrolled classes too (`carid enroll`); False: the trained
            classes only.
        tta: "none" or "hflip" (score the mirror image too and average; `carid.runtime.tta`).
        Raises PredictorError / BundleError naming the path and the problem.
        """
        if backend not in BACKENDS:
            raise PredictorError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
        path = Path(path)
        if not path.exists():
            raise PredictorError(f"{path}: no such file or folder")
        try:
            tta = check_mode(tta)
        except TtaError as exc:
            raise PredictorError(str(exc)) from None
        if (path.is_dir() and (path / ENSEMBLE_FILE).is_file()) or path.name == ENSEMBLE_FILE:
            from carid.evaluation.ensemble import EnsemblePredictor

            return EnsemblePredictor.load(
                path, backend, providers=providers, threads=threads, device=device, tta=tta
            )
        predictor = cls._load_one(path, backend, providers, threads, device, enrolled)
        predictor.backend = with_tta(predictor.backend, tta)  # type: ignore[assignment]
        return predictor

    @classmethod
    def _load_one(
        cls,
        path: Path,
        backend: str,
        providers: Sequence[str] | None,
        threads: int | None,
        device: str,
        enrolled: bool,
    ) -> Predictor:
        """A predictor for one model (not an ensemble), without TTA; see `load`."""
        if (path.is_dir() and (path / METADATA_FILE).is_file()) or path.name == METADATA_FILE:
            return cls._from_bundle(Bundle.load(path), backend, providers, threads, device, enrolled)
        if path.is_file() and path.suffix == ".onnx":
            if not (path.parent / METADATA_FILE).is_file():
                raise PredictorError(
                    f"{path}: an ONNX file needs its {METADATA_FILE} beside it (a carid bundle)"
                )
            return cls._from_bundle(Bundle.load(path.parent), backend, providers, threads, device, enrolled)
        if path.is_file() and path.suffix == ".ckpt":
            if backend == "onnx":
                raise PredictorError(
                    f"{path}: a checkpoint runs on the torch backend; export it (carid export {path}) "
                    "to predict on ONNX Runtime"
                )
            return cls._from_checkpoint(path, threads=threads, device=device)
        if path.is_dir() and ((path / RUN_CHECKPOINT).is_file() or (path / RUN_EXPORT_DIR).is_dir()):
            return cls._from_run(path, backend, providers, threads, device, enrolled)
        raise PredictorError(
            f"{path}: not a model: expected a bundle folder (with {METADATA_FILE}), a .ckpt checkpoint "
            f"or a run folder (with {RUN_CHECKPOINT.as_posix()})"
        )

    @classmethod
    def _from_bundle(
        cls,
        bundle: Bundle,
        backend: str,
        providers: Sequence[str] | None,
        threads: int | None,
        device: str,
        enrolled: bool = True,
    ) -> Predictor:
        metadata = bundle.metadata
        if backend != "torch":
            onnx = OnnxBackend(bundle.model_path, metadata.input_name, providers=providers, threads=threads)
            missing = [name for name in metadata.output_names if name not in onnx.output_names]
            if missing:
                raise BundleError(
                    f"{bundle.model_path}: the graph has outputs {list(onnx.output_names)}, "
                    f"but {bundle.metadata_path} field 'output_names' lists {list(metadata.output_names)}"
                )
            _check_input_size(onnx, metadata, bundle.model_path)
            return cls(onnx, metadata, bundle.path, _enrolment(bundle, enrolled))
        checkpoint = metadata.source_checkpoint
        if not checkpoint or not Path(checkpoint).is_file():
            raise PredictorError(
                f"{bundle.path}: backend 'torch' runs the bundle's source checkpoint, "
                f"{checkpoint or '(none recorded)'}, which is not there"
            )
        if metadata.source_sha256 and file_sha256(checkpoint) != metadata.source_sha256:
            raise PredictorError(
                f"{bundle.path}: the source checkpoint {checkpoint} changed since the export "
                "(its SHA-256 differs from model.json 'source_sha256')"
            )
        torch_backend, checkpoint_metadata = TorchBackend.from_checkpoint(checkpoint, device, threads)
        if tuple(checkpoint_metadata["class_names"]) != metadata.class_names:
            raise PredictorError(f"{bundle.path}: the classes of {checkpoint} differ from the bundle's")
        return cls(torch_backend, metadata, bundle.path, _enrolment(bundle, enrolled))

    @classmethod
    def _from_checkpoint(
        cls,
        checkpoint: Path,
        threads: int | None,
        device: str,
        calibration: dict[str, Any] | None = None,
    ) -> Predictor:
        backend, checkpoint_metadata = TorchBackend.from_checkpoint(checkpoint, device, threads)
        network = backend.network
        metadata = BundleMetadata.from_checkpoint_metadata(
            checkpoint_metadata,
            output_names=backend.output_names,
            embedding_dim=int(network.backbone.num_features),
            source_checkpoint=str(checkpoint),
        )
        if calibration:
            metadata = replace(metadata, **calibration)
        return cls(backend, metadata, checkpoint)

    @classmethod
    def _from_run(
        cls,
        run_dir: Path,
        backend: str,
        providers: Sequence[str] | None,
        threads: int | None,
        device: str,
        enrolled: bool = True,
    ) -> Predictor:
        export = run_dir / RUN_EXPORT_DIR
        if backend != "torch" and (export / METADATA_FILE).is_file():
            return cls._from_bundle(Bundle.load(export), "onnx", providers, threads, device, enrolled)
        if backend == "onnx":
            raise PredictorError(
                f"{run_dir}: the run has no export in {export}; run `carid export {run_dir}`"
            )
        checkpoint = run_dir / RUN_CHECKPOINT
        if not checkpoint.is_file():
            raise PredictorError(f"{run_dir}: the run has no {RUN_CHECKPOINT.as_posix()}")
        return cls._from_checkpoint(checkpoint, threads, device, _export_calibration(export, checkpoint))

    # --- predicting ------------------------------------------------------------------------------

    def predict(
        self,
        images: Iterable[ImageInput] | ImageInput,
        top_k: int = 5,
        batch_size: int = 16,
        names: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """One `Prediction` per input, in input order (images that cannot be read have `error` set;
        a failure of the model itself raises).

        images: paths (str or Path), encoded bytes, or PIL images (one of these alone is fine too).
        names: how to call each input in results (default: the path, or "<image i>").
        """
        return [p for batch in self.predict_batches(images, top_k, batch_size, names) for p in batch]

    def predict_batches(
        self,
        images: Iterable[ImageInput] | ImageInput,
        top_k: int = 5,
        batch_size: int = 16,
        names: Sequence[str] | None = None,
    ) -> Iterator[list[Prediction]]:
        """`predict` a batch at a time (for progress bars): yields a list per batch of `batch_size`."""
        items = _as_list(images)
        labels = list(names) if names is not None else [source_name(item, i) for i, item in enumerate(items)]
        if len(labels) != len(items):
            raise ValueError(f"predict: {len(items)} images but {len(labels)} names")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = [
            (items[start : start + batch_size], labels[start : start + batch_size])
            for start in range(0, len(items), batch_size)
        ]
        if len(chunks) <= 1:
            for images_chunk, names_chunk in chunks:
                yield self._predict_prepared(self._prepare(images_chunk, names_chunk), top_k)
            return
        # Decode and preprocess the next batch in a thread while the model runs on this one
        # (Pillow's decoding and resizing and NumPy release the GIL; the results keep input order).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="carid-prepare") as pool:
            pending = pool.submit(self._prepare, *chunks[0])
            for index in range(len(chunks)):
                prepared = pending.result()
                if index + 1 < len(chunks):
                    pending = pool.submit(self._prepare, *chunks[index + 1])
                yield self._predict_prepared(prepared, top_k)

    def _predict_prepared(self, prepared: Sequence[PreparedImage], top_k: int) -> list[Prediction]:
        good = [item for item in prepared if item.error is None]
        results: dict[int, Prediction] = {}
        if good:
            started = time.perf_counter()
            logits, boxes = self._forward(good)
            inference_ms = _ms_since(started) / len(good)
            probabilities = apply_temperature(logits, self.metadata.temperature)
            indices, top_probabilities = apply_unknown(probabilities, self.metadata.unknown_threshold or 0.0)
            rolled = {level: roll_up(probabilities, self.taxonomy, level) for level in self._level_values}
            positions = [i for i, item in enumerate(prepared) if item.error is None]
            for row, position in enumerate(positions):
                results[position] = self._prediction(
                    prepared[position],
                    probabilities[row],
                    int(indices[row]),
                    float(top_probabilities[row]),
                    {level: values[row] for level, values in rolled.items()},
                    None if boxes is None else boxes[row],
                    top_k,
                    inference_ms,
                )
        return [
            results.get(i)
            or Prediction(source=item.name, error=item.error, timing=Timing(decode_ms=item.decode_ms))
            for i, item in enumerate(prepared)
        ]

    def _prepare(self, images: Sequence[ImageInput], names: Sequence[str]) -> list[PreparedImage]:
        """Decode and preprocess each input with this model's spec (errors per image, never raises)."""
        return [prepare_image(image, self.spec, name) for image, name in zip(images, names, strict=True)]

    def _forward(self, prepared: Sequence[PreparedImage]) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the network on prepared images (none with an error).

        Returns (logits float64 [B, C] before the temperature, boxes float64 [B, 4] absolute xyxy
        pixels of each original photo, clipped to it, or None without a box head). An ensemble
        overrides this (and `_prepare`) to run its members and combine them.
        """
        outputs = self.backend.run(np.stack([item.array for item in prepared]))  # type: ignore[misc]
        logits = np.asarray(outputs[LOGITS], dtype=np.float64)
        if logits.shape != (len(prepared), self.trained_classes):
            raise PredictorError(
                f"{self.source or 'model'}: the network gave logits of shape {list(logits.shape)} for "
                f"{len(prepared)} images, but model.json lists {self.trained_classes} classes"
            )
        if self.enrolment is not None:
            logits = np.concatenate([logits, self.enrolment.scores(outputs[EMBEDDING])], axis=1)
        if not self.metadata.with_box:
            return logits, None
        normalized = np.asarray(outputs[BOX], dtype=np.float64)
        boxes = np.empty((len(prepared), 4), dtype=np.float64)
        for row, item in enumerate(prepared):
            geometry = item.geometry
            assert geometry is not None
            pixels = geometry.boxes_to_original(normalized[row][None, :])
            boxes[row] = box_math.clip(pixels, geometry.original_width, geometry.original_height)[0]
        return logits, boxes

    def _prediction(
        self,
        item: PreparedImage,
        probabilities: np.ndarray,
        index: int,
        top_probability: float,
        rolled: dict[str, np.ndarray],
        box: np.ndarray | None,
        top_k: int,
        inference_ms: float,
    ) -> Prediction:
        order = np.argsort(-probabilities, kind="stable")[: min(top_k, len(probabilities))]
        scores = tuple(self._score(int(i), float(probabilities[i])) for i in order)
        unknown = index < 0
        label = UNKNOWN_LABEL if unknown else self.metadata.class_names[index]
        levels = self._levels(rolled, scores[0])
        geometry = item.geometry
        assert geometry is not None
        original = (geometry.original_width, geometry.original_height)
        mapped = None if box is None else Box(*(float(value) for value in box))
        return Prediction(
            source=item.name,
            label=label,
            probability=top_probability,
            unknown=unknown,
            top_k=scores,
            make=levels.get("make"),
            body_type=levels.get("body_type"),
            year=levels.get("year"),
            box=mapped,
            image_size=original,
            timing=Timing(item.decode_ms, item.preprocess_ms, inference_ms),
        )

    def _score(self, index: int, probability: float) -> ClassScore:
        parts = self._parts[index]
        return ClassScore(
            index=index,
            label=self.metadata.class_names[index],
            probability=probability,
            make=parts.make,
            model=parts.model,
            body_type=parts.body_type,
            year=parts.year,
        )

    def _levels(self, rolled: dict[str, np.ndarray], top1: ClassScore) -> dict[str, LevelScore]:
        """Most likely make / body type / year: rolled up from classes, or the class itself for a
        model trained at that level."""
        if rolled:
            levels = {}
            for level, probabilities in rolled.items():
                best = int(np.argmax(probabilities))
                levels[level] = LevelScore(self._level_values[level][best], float(probabilities[best]))
            return levels
        if self.metadata.label_level in ROLL_UP_LEVELS:
            return {self.metadata.label_level: LevelScore(top1.label, top1.probability)}
        return {}

    def _class_parts(self, index: int) -> _ClassParts:
        name = self.metadata.class_names[index]
        if self.taxonomy is not None:
            entry = self.taxonomy.entries[index]
            return _ClassParts(entry.make, entry.model or None, entry.body_type, entry.year)
        level = self.metadata.label_level
        if level == "make":
            return _ClassParts(make=name)
        if level == "body_type":
            return _ClassParts(body_type=name)
        if level == "year" and name.isdigit():
            return _ClassParts(year=int(name))
        return _ClassParts()

    # --- embeddings, warm-up, description -----------------------------------------------------------

    def embed(self, images: Iterable[ImageInput] | ImageInput, batch_size: int = 16) -> np.ndarray:
        """Pooled backbone embeddings float32 [N, D] (the heads' input), e.g. to enrol new classes.

        Needs an "embedding" output (bundles exported by carid have one). Raises PredictorError
        naming the first image that cannot be read.
        """
        if EMBEDDING not in self.backend.output_names:
            raise PredictorError(
                f"{self.source or 'model'}: this model has no {EMBEDDING!r} output; re-export it with "
                "`carid export` to get one"
            )
        items = _as_list(images)
        rows: list[np.ndarray] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            prepared = [
                prepare_image(image, self.spec, source_name(image, start + i))
                for i, image in enumerate(chunk)
            ]
            failed = next((item for item in prepared if item.error is not None), None)
            if failed is not None:
                raise PredictorError(failed.error)
            rows.append(self.backend.run(np.stack([item.array for item in prepared]))[EMBEDDING])  # type: ignore[misc]
        if not rows:
            return np.zeros((0, self.metadata.embedding_dim or 0), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32, copy=False)

    def warmup(self, batch_size: int = 1) -> float:
        """Run one batch of blank inputs (first-run allocations, kernel choice); returns milliseconds."""
        batch = np.zeros((batch_size, 3, self.spec.height, self.spec.width), dtype=np.float32)
        started = time.perf_counter()
        self.backend.run(batch)
        return _ms_since(started)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def tta(self) -> str:
        """The test-time augmentation applied ("none" or "hflip"; `carid.runtime.tta`)."""
        return tta_of(self.backend)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.metadata.class_names

    def info(self) -> dict[str, Any]:
        """What the model is: backend, source and `BundleMetadata.summary()`, plus the class names."""
        return {
            "backend": self.backend.name,
            "tta": self.tta,
            "source": None if self.source is None else str(self.source),
            **self.metadata.summary(),
            "num_trained_classes": self.trained_classes,
            "enrolled_classes": [] if self.enrolment is None else self.enrolment.summary(),
            "class_names": list(self.metadata.class_names),
        }

    def __repr__(self) -> str:
        return (
            f"Predictor(source={str(self.source)!r}, backend={self.backend.name!r}, "
            f"classes={self.metadata.num_classes}, with_box={self.metadata.with_box})"
        )


def _as_list(images: Iterable[ImageInput] | ImageInput) -> list[Any]:
    if isinstance(images, str | Path | bytes | bytearray | Image.Image):
        return [images]
    return list(images)


def _enrolment(bundle: Bundle, enrolled: bool) -> Enrolment | None:
    """The bundle's enrolled classes when asked for; EnrolError (a PredictorError) when broken."""
    if not enrolled or bundle.metadata.enrolment is None:
        return None
    from carid.enroll.store import EnrolError, load_enrolment

    try:
        return load_enrolment(bundle)
    except EnrolError as exc:
        raise PredictorError(str(exc)) from None


def with_enrolled_classes(metadata: BundleMetadata, labels: Sequence[str]) -> BundleMetadata:
    """The metadata as the predictor answers with it: trained classes, then the enrolled ones (the
    taxonomy, when the trained names had one, parsed again over all names)."""
    names = (*metadata.class_names, *labels)
    taxonomy = None if metadata.taxonomy is None else Taxonomy.from_class_names(names).to_dict()
    return replace(metadata, class_names=names, taxonomy=taxonomy)


def _check_input_size(backend: OnnxBackend, metadata: BundleMetadata, model_path: Path) -> None:
    """The graph's fixed input height and width must be the preprocessing size."""
    spec = metadata.preprocess_spec()
    shape = backend.input_shape
    if len(shape) != 4:
        raise BundleError(f"{model_path}: the input has shape {list(shape)}, expected [batch, 3, H, W]")
    for axis, expected in ((2, spec.height), (3, spec.width)):
        if isinstance(shape[axis], int) and shape[axis] != expected:
            raise BundleError(
                f"{model_path}: the graph takes {shape[2]}x{shape[3]} inputs but model.json 'preprocess' "
                f"says {spec.height}x{spec.width}"
            )


def _export_calibration(export: Path, checkpoint: Path) -> dict[str, Any]:
    """Temperature and unknown threshold of the run's export, when it was made from this checkpoint."""
    if not (export / METADATA_FILE).is_file():
        return {}
    try:
        metadata = Bundle.load(export).metadata
    except BundleError as exc:
        log.warning("ignoring the run's export for calibration: %s", exc)
        return {}
    if metadata.source_sha256 != file_sha256(checkpoint):
        return {}
    return {"temperature": metadata.temperature, "unknown_threshold": metadata.unknown_threshold}
