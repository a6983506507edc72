"""What runs the network: `InferenceBackend` (float32 [B, 3, H, W] -> named outputs), on ONNX Runtime
(`OnnxBackend`, the slim install) or on PyTorch (`TorchBackend`, a checkpoint; torch imported only
when it is asked for).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from carid.artifacts.bundle import (
    BOX,
    EMBEDDING,
    INPUT_NAME,
    LOGITS,
    BundleError,
    BundleMetadata,
)
from carid.errors import CaridError


class PredictorError(CaridError, ValueError):
    """A model that cannot be loaded or run as asked; the message names the path and the problem."""


BackendName = Literal["auto", "onnx", "torch"]


BACKENDS: tuple[str, ...] = ("auto", "onnx", "torch")


TORCH_MISSING = (
    "the torch backend needs PyTorch (pip install 'carid[train]'); without it, export the model "
    "with `carid export` and predict with the bundle on ONNX Runtime"
)


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
        *,
        spin: bool = False,
    ) -> None:
        """spin: let idle ONNX Runtime worker threads spin-wait for the next run (its default). Off
        here: a pipeline (detector, then identifier) or an ensemble runs several sessions in turn on
        the same cores, and one session's spinning threads starve the next; on 2 cores a 3-car frame
        through a pipeline took about half the time with spinning off (benchmarks/RESULTS.md)."""
        import onnxruntime

        self.model_path = Path(model_path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        from carid.models.checkpoint import load_for_inference

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


def check_input_size(backend: OnnxBackend, metadata: BundleMetadata, model_path: Path) -> None:
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
