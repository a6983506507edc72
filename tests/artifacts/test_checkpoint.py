"""The checkpoint metadata format: plain round trip, old checkpoints, reading it, and no torch at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carid.artifacts.checkpoint import CHECKPOINT_KEY, ModelMetadata, load_checkpoint_metadata, metadata_of
from carid.config import ModelConfig
from carid.preprocess import PreprocessSpec

TINY_MODEL = ModelConfig(backbone="carid_vgg", pretrained="none", image_size=32, box_hidden=16, dropout=0.0)


def metadata_for(num_classes: int) -> ModelMetadata:
    return ModelMetadata(
        class_names=tuple(f"class {i}" for i in range(num_classes)),
        preprocess=PreprocessSpec(image_size=(32, 32)).to_dict(),
        model={**TINY_MODEL.__dict__},
        with_box=True,
    )


def test_metadata_round_trip_is_plain() -> None:
    metadata = metadata_for(4)
    data = metadata.to_dict()
    assert ModelMetadata.from_dict(data) == metadata
    assert isinstance(data["class_names"], list) and isinstance(data["preprocess"]["image_size"], list)
    with pytest.raises(ValueError, match="missing"):
        ModelMetadata.from_dict({"class_names": []})


def test_metadata_without_box_input_is_a_pooled_box_head() -> None:
    """Checkpoints written before model.box_input existed rebuild with the box head they were trained with."""
    legacy = {
        key: value for key, value in TINY_MODEL.__dict__.items() if key not in ("box_input", "box_channels")
    }
    metadata = ModelMetadata(class_names=("a", "b"), preprocess={}, model=legacy, with_box=True)
    assert metadata.model_config().box_input == "pooled"
    assert metadata_for(3).model_config().box_input == "map"


def test_metadata_of_a_checkpoint_dict_and_of_a_file(tmp_path: Path) -> None:
    metadata = metadata_for(3)
    assert metadata_of({CHECKPOINT_KEY: metadata.to_dict()}, tmp_path / "a.ckpt") == metadata
    with pytest.raises(ValueError, match=r"plain\.ckpt: not a carid checkpoint"):
        metadata_of({"state_dict": {}}, tmp_path / "plain.ckpt")
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.ckpt"
    torch.save({CHECKPOINT_KEY: metadata.to_dict(), "state_dict": {"network.w": torch.zeros(2)}}, path)
    assert load_checkpoint_metadata(path) == metadata


def test_the_format_imports_no_torch() -> None:
    code = "import sys, carid.artifacts.checkpoint; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
