"""ExplainedModel from checkpoints and networks, class targets, photo preparation."""

from __future__ import annotations

import pytest
import torch

from carid.explain import ExplainedModel, ExplainError, prepare_photo, resolve_model
from carid.explain.model import resolve_class
from carid.images import ImageError
from carid.preprocess import PreprocessSpec
from tests.explain.helpers import (
    CLASS_NAMES,
    tiny_metadata,
    tiny_network,
    write_checkpoint,
)


def test_resolve_class_by_index_name_and_digits():
    assert resolve_class(2, CLASS_NAMES) == 2
    assert resolve_class("Ford Fiesta Sedan 2012", CLASS_NAMES) == 1
    assert resolve_class("ford fiesta sedan 2012", CLASS_NAMES) == 1
    assert resolve_class(" 0 ", CLASS_NAMES) == 0


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (3, "out of range: the model has classes 0..2"),
        ("-1", "out of range"),
        ("Ford Fiesta 2012", "Did you mean: Ford Fiesta Sedan 2012"),
        ("zebra", "unknown class 'zebra'"),
        (True, "index or a class name"),
    ],
)
def test_resolve_class_errors(target, message):
    with pytest.raises(ExplainError, match=message):
        resolve_class(target, CLASS_NAMES)


def test_model_from_checkpoint_matches_the_network(tmp_path):
    network = tiny_network()
    path = write_checkpoint(tmp_path / "tiny.ckpt", network, tiny_metadata())
    model = resolve_model(path)
    assert model.class_names == CLASS_NAMES
    assert model.has_box_head
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.network(images).logits, network(images).logits, atol=1e-6)


def test_missing_or_bad_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ExplainError, match="checkpoint not found"):
        resolve_model(tmp_path / "missing.ckpt")
    not_carid = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, not_carid)
    with pytest.raises(ExplainError, match="not a carid checkpoint"):
        resolve_model(not_carid)


def test_network_needs_a_description_and_matching_class_count():
    with pytest.raises(ExplainError, match="needs its class names and preprocessing"):
        resolve_model(tiny_network())
    metadata = tiny_metadata()
    two_classes = type(metadata)(
        class_names=("a", "b"), preprocess=metadata.preprocess, model=metadata.model, with_box=True
    )
    with pytest.raises(ExplainError, match="3 classes but its metadata names 2"):
        ExplainedModel.of(tiny_network(), two_classes)


def test_prepare_photo_keeps_the_original_frame(image_factory):
    path = image_factory("car.jpg", size=(400, 100), seed=3)
    spec = PreprocessSpec(image_size=(32, 32), resize_mode="letterbox")
    photo = prepare_photo(path, spec)
    assert photo.original_size == (400, 100)
    assert tuple(photo.inputs.shape) == (1, 3, 32, 32)
    assert photo.geometry.pad_top == 12 and photo.geometry.pad_left == 0
    assert photo.name == str(path)


def test_prepare_photo_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match=r"broken\.jpg"):
        prepare_photo(bad, PreprocessSpec(image_size=(32, 32)))
