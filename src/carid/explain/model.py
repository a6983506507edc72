"""The model being explained: a network, its class names and its preprocessing, from any source.

Explanations need three things besides the photo: a torch network, the names of its outputs and
the `PreprocessSpec` that turns a photo into its input. `ExplainedModel` holds them, built from a
carid checkpoint (`from_checkpoint`), a `CarNet` and its `ModelMetadata` (`of`), or any plain
`nn.Module` that returns logits [B, C] (a timm ImageNet classifier, a hand-built CNN) together with
a `ClassifierInfo`. This module also resolves a class target given as an index or a name, and
prepares a photo (`Photo`) for the network.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from carid.errors import CaridError
from carid.models.network import CarNet, CarNetOutput
from carid.preprocess import DecodedImage, Geometry, PreprocessSpec, load_image, preprocess


class ExplainError(CaridError, ValueError):
    """An explanation that cannot be made as asked (unknown class or layer, no box head, ...); the
    message says what is wrong and what would work."""


class ModelDescription(Protocol):
    """What explaining needs to know about a network: `ModelMetadata` and `ClassifierInfo` fit."""

    @property
    def class_names(self) -> tuple[str, ...]: ...

    def preprocess_spec(self) -> PreprocessSpec: ...


@dataclass(frozen=True)
class ClassifierInfo:
    """Class names and preprocessing of a plain classifier (an `nn.Module` returning logits [B, C]).

    class_names: names of the logits, in output order.
    preprocess: how a photo becomes the classifier's input.
    """

    class_names: tuple[str, ...]
    preprocess: PreprocessSpec

    def preprocess_spec(self) -> PreprocessSpec:
        return self.preprocess


@dataclass(frozen=True)
class ExplainedModel:
    """A network in eval mode with the names of its classes and its preprocessing.

    network: a `CarNet` (logits and, with a box head, a box) or any `nn.Module` mapping images
        [B, 3, H, W] (normalized per `spec`) to logits [B, C] (or to an object with `.logits`).
    """

    network: nn.Module = field(repr=False)
    class_names: tuple[str, ...]
    spec: PreprocessSpec

    @property
    def has_box_head(self) -> bool:
        return isinstance(self.network, CarNet) and self.network.has_box_head

    @classmethod
    def of(cls, network: nn.Module, description: ModelDescription) -> ExplainedModel:
        """A network with its `ModelMetadata` (checkpoint) or `ClassifierInfo` (plain classifier)."""
        if not isinstance(network, nn.Module):
            raise ExplainError(f"expected a torch nn.Module to explain, got {type(network).__name__}")
        names = tuple(str(name) for name in description.class_names)
        if not names:
            raise ExplainError("the model description has no class names")
        if isinstance(network, CarNet) and network.num_classes != len(names):
            raise ExplainError(
                f"the network has {network.num_classes} classes but its metadata names {len(names)}"
            )
        return cls(network=network.eval(), class_names=names, spec=description.preprocess_spec())

    @classmethod
    def from_checkpoint(cls, path: Path | str) -> ExplainedModel:
        """Load a carid training checkpoint (`load_for_inference`, weights only, CPU)."""
        from carid.models.checkpoint import load_for_inference

        checkpoint = Path(path)
        if not checkpoint.is_file():
            raise ExplainError(f"{checkpoint}: checkpoint not found")
        try:
            network, metadata = load_for_inference(checkpoint)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ExplainError(f"{checkpoint}: cannot load as a carid checkpoint ({exc})") from None
        return cls.of(network, metadata)


def resolve_model(
    model: Path | str | nn.Module | ExplainedModel, description: ModelDescription | None = None
) -> ExplainedModel:
    """A checkpoint path, an `ExplainedModel`, or a network with its description -> ExplainedModel."""
    if isinstance(model, ExplainedModel):
        return model
    if isinstance(model, str | Path):
        return ExplainedModel.from_checkpoint(model)
    if description is None:
        raise ExplainError(
            f"explaining a {type(model).__name__} needs its class names and preprocessing: pass "
            "description=ModelMetadata(...) or ClassifierInfo(class_names, PreprocessSpec(...))"
        )
    return ExplainedModel.of(model, description)


def resolve_class(target: int | str, class_names: tuple[str, ...]) -> int:
    """A class given as an index (int or digits) or a name (exact, then ignoring case) -> its index.

    Raises ExplainError naming the valid range or the closest class names.
    """
    count = len(class_names)
    if isinstance(target, bool):
        raise ExplainError(f"class target must be an index or a class name, got {target!r}")
    if isinstance(target, int | np.integer):
        if not 0 <= int(target) < count:
            raise ExplainError(f"class index {target} is out of range: the model has classes 0..{count - 1}")
        return int(target)
    text = str(target).strip()
    if text in class_names:
        return class_names.index(text)
    folded = [name.casefold() for name in class_names]
    if text.casefold() in folded:
        return folded.index(text.casefold())
    if text.lstrip("-").isdigit():
        return resolve_class(int(text), class_names)
    close = difflib.get_close_matches(text, class_names, n=5, cutoff=0.5)
    hint = f" Did you mean: {'; '.join(close)}?" if close else ""
    shown = "; ".join(class_names[:10]) + ("; ..." if count > 10 else "")
    raise ExplainError(f"unknown class {text!r}.{hint} Give a class index 0..{count - 1} or a name ({shown})")


@dataclass(frozen=True)
class Photo:
    """A photo ready for a network: the decoded image, the network input and where the photo sits in it.

    image: the decoded RGB image (possibly a reduced-size JPEG decode of the file).
    original_size: (width, height) of the photo file; heat maps and boxes are given in its pixels.
    inputs: float32 tensor [1, 3, H, W], normalized per the spec.
    geometry: maps between network input and original photo pixels.
    name: the file path or a label, for messages and output names.
    """

    image: Image.Image = field(repr=False)
    original_size: tuple[int, int]
    inputs: torch.Tensor = field(repr=False)
    geometry: Geometry
    name: str


def prepare_photo(
    source: Path | str | bytes | Image.Image | DecodedImage, spec: PreprocessSpec, name: str | None = None
) -> Photo:
    """Read (files: reduced-size JPEG decode when exact enough) and preprocess one photo.

    Raises `carid.images.ImageError` naming the file when it cannot be read.
    """
    if isinstance(source, Image.Image):
        decoded = DecodedImage(image=source.convert("RGB"), original_size=source.size)
        label = name or "<image>"
    elif isinstance(source, DecodedImage):
        decoded, label = source, name or "<image>"
    else:
        data = source if isinstance(source, bytes) else Path(source)
        label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
        decoded = load_image(data, spec, name=label)
    array, geometry = preprocess(decoded.image, spec, original_size=decoded.original_size)
    return Photo(
        image=decoded.image,
        original_size=decoded.original_size,
        inputs=torch.from_numpy(array)[None],
        geometry=geometry,
        name=label,
    )


def split_output(output: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A network's output -> (logits [B, C], box [B, 4] or None): CarNetOutput, `.logits`, or a tensor."""
    if isinstance(output, CarNetOutput):
        return output.logits, output.box
    if isinstance(output, torch.Tensor):
        return output, None
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits, getattr(output, "box", None)
    raise ExplainError(
        f"the network returned a {type(output).__name__}; expected logits [B, C] or an object with .logits"
    )


def check_logits(logits: torch.Tensor, class_names: tuple[str, ...]) -> None:
    """ExplainError unless logits is [B, len(class_names)]."""
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ExplainError(
            f"the network gives logits of shape {tuple(logits.shape)} but {len(class_names)} class names "
            "were given"
        )
