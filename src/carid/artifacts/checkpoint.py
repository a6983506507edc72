"""The carid metadata of a training checkpoint: what a model needs to predict without its config.

A Lightning checkpoint written by `CarModule` carries, under the key "carid" (`CHECKPOINT_KEY`),
a `ModelMetadata`: class names, preprocessing, taxonomy, the model config, whether there is a box
head, the label level and the carid version, as plain dicts/lists/strings, so that
`torch.load(path, weights_only=True)` reads the whole checkpoint. This module is the format only
and imports no torch at module level (`load_checkpoint_metadata` imports it when called); rebuilding
the network from a checkpoint is `carid.models.checkpoint.load_for_inference`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carid import __version__
from carid.config import ModelConfig, from_dict
from carid.preprocess import PreprocessSpec

CHECKPOINT_KEY = "carid"
METADATA_VERSION = 1


@dataclass(frozen=True)
class ModelMetadata:
    """What a checkpoint must say so that a model predicts without its training config.

    class_names: names of the network's outputs, in output order (taxonomy-level values when
        label_level is not "class").
    preprocess: `PreprocessSpec.to_dict()`.
    model: the `ModelConfig` as a dict (backbone, heads, image size).
    with_box: the network has a box head.
    label_level: what the classes are: "class", "make", "body_type" or "year".
    taxonomy: `Taxonomy.to_dict()` of the class names when label_level is "class", else None.
    """

    class_names: tuple[str, ...]
    preprocess: dict[str, Any]
    model: dict[str, Any]
    with_box: bool
    label_level: str = "class"
    taxonomy: dict[str, Any] | None = None
    carid_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocess, source="checkpoint preprocessing")

    def model_config(self) -> ModelConfig:
        """The model config; checkpoints from before `box_input` existed have a pooled box head."""
        return from_dict(ModelConfig, {"box_input": "pooled", **self.model}, source="checkpoint model config")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (so checkpoints load with weights_only=True)."""
        data = {
            "version": METADATA_VERSION,
            "class_names": list(self.class_names),
            "preprocess": self.preprocess,
            "model": self.model,
            "with_box": bool(self.with_box),
            "label_level": self.label_level,
            "taxonomy": self.taxonomy,
            "carid_version": self.carid_version,
            "extra": self.extra,
        }
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "checkpoint") -> ModelMetadata:
        missing = [key for key in ("class_names", "preprocess", "model", "with_box") if key not in data]
        if missing:
            raise ValueError(f"{source}: carid metadata is missing {', '.join(missing)}")
        return cls(
            class_names=tuple(data["class_names"]),
            preprocess=dict(data["preprocess"]),
            model=dict(data["model"]),
            with_box=bool(data["with_box"]),
            label_level=str(data.get("label_level", "class")),
            taxonomy=data.get("taxonomy"),
            carid_version=str(data.get("carid_version", "unknown")),
            extra=dict(data.get("extra") or {}),
        )


def metadata_of(checkpoint: Mapping[str, Any], path: Path) -> ModelMetadata:
    """The metadata of a loaded checkpoint dict; ValueError "<path>: not a carid checkpoint" without it."""
    if CHECKPOINT_KEY not in checkpoint:
        raise ValueError(f"{path}: not a carid checkpoint (no {CHECKPOINT_KEY!r} metadata)")
    return ModelMetadata.from_dict(checkpoint[CHECKPOINT_KEY], source=str(path))


def load_checkpoint_metadata(checkpoint_path: Path | str) -> ModelMetadata:
    """Only the metadata of a checkpoint (still reads the whole file; needs torch)."""
    import torch

    checkpoint = torch.load(Path(checkpoint_path), map_location="cpu", weights_only=True)
    return metadata_of(checkpoint, Path(checkpoint_path))
