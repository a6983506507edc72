"""Predict with a trained model: `Predictor` (ONNX Runtime or PyTorch) and its result, `Prediction`.

    images (paths, bytes, PIL images)
        --decode (carid.preprocess.load_image: reduced-size decode, EXIF, alpha on white)
        --preprocess (carid.preprocess.preprocess: the bundle's PreprocessSpec, one code path)
        --backend.run(float32 [B, 3, H, W]) -> logits [B, C], box [B, 4] normalized xyxy, embedding [B, D]
        --softmax(logits / temperature) --unknown threshold and shape (carid.runtime.inputs.shape_problem)
        --taxonomy roll-up --box to original pixels
        --> Prediction per image (errors per image: one unreadable file does not stop the batch)

`Predictor.load(path)` accepts a bundle folder (or its model.json), a `.ckpt` checkpoint, a run
folder (its `export/` bundle when present, else `checkpoints/best.ckpt` on PyTorch), or an ensemble
folder (ensemble.json: `carid.runtime.ensemble.EnsemblePredictor`, which runs each member bundle
on its own preprocessing and combines their probabilities; it registers itself as the loader of
ensemble folders with `register_loader`). A bundle's enrolled classes (`carid enroll`,
`carid.artifacts.enrolment`) are scored from the embedding output and follow the trained classes.
backend="auto" picks ONNX Runtime for bundles and PyTorch for checkpoints; backend="torch" on a
bundle runs the bundle's source checkpoint with the bundle's calibration (to compare the two backends).
tta="hflip" also scores each photo's mirror image and averages the two (`carid.runtime.tta`; for an
ensemble, each member does).

This module imports without torch (the slim install: numpy, Pillow, onnxruntime); torch is imported
only when the torch backend is asked for. Results are `carid.runtime.results`, inputs
`carid.runtime.inputs`, backends `carid.runtime.backends`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from carid import boxes as box_math
from carid.artifacts.bundle import (
    BOX,
    EMBEDDING,
    ENSEMBLE_FILE,
    LOGITS,
    METADATA_FILE,
    Bundle,
    BundleError,
    BundleMetadata,
)
from carid.artifacts.pipeline import PIPELINE_FILE, is_pipeline_dir
from carid.artifacts.run_dir import BEST_CHECKPOINT, RunDir, is_bundle_dir, is_ensemble_dir
from carid.preprocess import PreprocessSpec
from carid.runtime.backends import (
    BACKENDS,
    BackendName,
    InferenceBackend,
    OnnxBackend,
    PredictorError,
    TorchBackend,
    check_input_size,
    file_sha256,
)
from carid.runtime.calibration import apply_temperature, apply_unknown, export_calibration
from carid.runtime.inputs import (
    ImageInput,
    PreparedImage,
    _ms_since,
    prepare_image,
    shape_problem,
    source_name,
)
from carid.runtime.results import (
    ROLL_UP_LEVELS,
    UNKNOWN_LABEL,
    Box,
    ClassScore,
    LevelScore,
    Prediction,
    Timing,
    below_threshold,
)
from carid.runtime.tta import TtaError, check_mode, tta_of, with_tta
from carid.taxonomy import Taxonomy, roll_up

if TYPE_CHECKING:
    from carid.artifacts.enrolment import Enrolment


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _LoadOptions:
    """How `Predictor.load` opens one model (see its docstring)."""

    backend: str
    providers: Sequence[str] | None
    threads: int | None
    device: str
    enrolled: bool


PredictorLoader = Callable[..., "Predictor"]
_LOADERS: dict[str, PredictorLoader] = {}


def register_loader(kind: str, loader: PredictorLoader) -> None:
    """Let `Predictor.load` hand folders of `kind` ("ensemble", "pipeline") to `loader(path, backend, *,
    providers, threads, device, tta)`. `carid.runtime.ensemble` and `carid.runtime.pipeline` register
    themselves this way (the `carid.runtime` package imports them), which keeps those `Predictor`
    subclasses out of this module without an import circle. A second loader for a kind is refused."""
    if kind in _LOADERS and _LOADERS[kind] is not loader:
        raise ValueError(f"a predictor loader for {kind!r} is registered already")
    _LOADERS[kind] = loader


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
        kind = _folder_kind(path)
        if kind is not None:
            load_kind = _LOADERS.get(kind)
            if load_kind is None:  # only when carid.runtime was never imported
                raise PredictorError(f"{path}: no loader for {kind} folders is registered")
            return load_kind(path, backend, providers=providers, threads=threads, device=device, tta=tta)
        options = _LoadOptions(backend, providers, threads, device, enrolled)
        predictor = cls._load_one(path, options)
        predictor.backend = with_tta(predictor.backend, tta)  # type: ignore[assignment]
        return predictor

    @classmethod
    def _load_one(cls, path: Path, options: _LoadOptions) -> Predictor:
        """A predictor for one model (not an ensemble), without TTA; see `load`."""
        if is_bundle_dir(path) or path.name == METADATA_FILE:
            return cls._from_bundle(Bundle.load(path), options)
        if path.is_file() and path.suffix == ".onnx":
            if not (path.parent / METADATA_FILE).is_file():
                raise PredictorError(
                    f"{path}: an ONNX file needs its {METADATA_FILE} beside it (a carid bundle)"
                )
            return cls._from_bundle(Bundle.load(path.parent), options)
        if path.is_file() and path.suffix == ".ckpt":
            if options.backend == "onnx":
                raise PredictorError(
                    f"{path}: a checkpoint runs on the torch backend; export it (carid export {path}) "
                    "to predict on ONNX Runtime"
                )
            return cls._from_checkpoint(path, options)
        run = RunDir(path)
        if path.is_dir() and (run.best_checkpoint.is_file() or run.export.is_dir()):
            return cls._from_run(run, options)
        raise PredictorError(
            f"{path}: not a model: expected a bundle folder (with {METADATA_FILE}), a .ckpt checkpoint "
            f"or a run folder (with {BEST_CHECKPOINT.as_posix()})"
        )

    @classmethod
    def _from_bundle(cls, bundle: Bundle, options: _LoadOptions) -> Predictor:
        metadata = bundle.metadata
        enrolment = _enrolment(bundle, options.enrolled)
        if options.backend != "torch":
            onnx = OnnxBackend(
                bundle.model_path, metadata.input_name, providers=options.providers, threads=options.threads
            )
            missing = [name for name in metadata.output_names if name not in onnx.output_names]
            if missing:
                raise BundleError(
                    f"{bundle.model_path}: the graph has outputs {list(onnx.output_names)}, "
                    f"but {bundle.metadata_path} field 'output_names' lists {list(metadata.output_names)}"
                )
            check_input_size(onnx, metadata, bundle.model_path)
            return cls(onnx, metadata, bundle.path, enrolment)
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
        torch_backend, checkpoint_metadata = TorchBackend.from_checkpoint(
            checkpoint, options.device, options.threads
        )
        if tuple(checkpoint_metadata["class_names"]) != metadata.class_names:
            raise PredictorError(f"{bundle.path}: the classes of {checkpoint} differ from the bundle's")
        return cls(torch_backend, metadata, bundle.path, enrolment)

    @classmethod
    def _from_checkpoint(
        cls, checkpoint: Path, options: _LoadOptions, calibration: dict[str, Any] | None = None
    ) -> Predictor:
        backend, checkpoint_metadata = TorchBackend.from_checkpoint(
            checkpoint, options.device, options.threads
        )
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
    def _from_run(cls, run: RunDir, options: _LoadOptions) -> Predictor:
        if options.backend != "torch" and run.has_export():
            return cls._from_bundle(Bundle.load(run.export), replace(options, backend="onnx"))
        if options.backend == "onnx":
            raise PredictorError(
                f"{run.path}: the run has no export in {run.export}; run `carid export {run.path}`"
            )
        checkpoint = run.best_checkpoint
        if not checkpoint.is_file():
            raise PredictorError(f"{run.path}: the run has no {BEST_CHECKPOINT.as_posix()}")
        return cls._from_checkpoint(checkpoint, options, export_calibration(run.export, checkpoint))

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
        geometry = item.geometry
        assert geometry is not None
        original = (geometry.original_width, geometry.original_height)
        reason = shape_problem(*original)  # a sliver or a thumbnail: unknown however sure the network is
        if reason is None and index < 0:
            reason = below_threshold(top_probability, self.metadata.unknown_threshold or 0.0)
        unknown = reason is not None
        label = UNKNOWN_LABEL if unknown else self.metadata.class_names[index]
        levels = self._levels(rolled, scores[0])
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
            reason=reason,
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


def _folder_kind(path: Path) -> str | None:
    """ "ensemble" or "pipeline" for the folders (or their JSON file) that a registered loader opens."""
    if is_ensemble_dir(path) or path.name == ENSEMBLE_FILE:
        return "ensemble"
    if is_pipeline_dir(path) or path.name == PIPELINE_FILE:
        return "pipeline"
    return None


def _as_list(images: Iterable[ImageInput] | ImageInput) -> list[Any]:
    if isinstance(images, str | Path | bytes | bytearray | Image.Image):
        return [images]
    return list(images)


def _enrolment(bundle: Bundle, enrolled: bool) -> Enrolment | None:
    """The bundle's enrolled classes when asked for; EnrolError (a PredictorError) when broken."""
    if not enrolled or bundle.metadata.enrolment is None:
        return None
    from carid.artifacts.enrolment import EnrolError, load_enrolment

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
