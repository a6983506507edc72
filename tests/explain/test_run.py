"""explain_images: many photos -> PNGs and Explanation records, bad photos recorded, bad requests refused."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from carid.explain import ExplainError, explain_images, parse_methods
from carid.explain.overlay import CAPTION_HEIGHT, OVERLAY_MAX_SIDE
from tests.explain.helpers import tiny_metadata, tiny_network, write_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "tiny.ckpt", tiny_network(), tiny_metadata(resize_mode="letterbox"))


def test_gradcam_pictures_for_each_photo_from_a_checkpoint(tmp_path, checkpoint, image_factory):
    photos = [
        image_factory("a/car.jpg", size=(60, 40), seed=1),
        image_factory("b/car.jpg", size=(30, 50), seed=2),
    ]
    results = explain_images(checkpoint, photos, tmp_path / "out")
    assert [r.image for r in results] == [str(p) for p in photos]
    first, second = results
    assert first.ok and first.label in tiny_metadata().class_names and 0 < first.probability <= 1
    assert set(first.files) == {"gradcam", "gradcam_box"}  # the network has a box head
    assert first.files["gradcam"].endswith("car.gradcam.png")
    assert second.files["gradcam"].endswith("car-2.gradcam.png")  # same file name, no overwrite
    for result in results:
        for path in result.files.values():
            with Image.open(path) as picture:
                assert max(picture.width, picture.height - CAPTION_HEIGHT) == OVERLAY_MAX_SIDE
    assert first.details["gradcam_box"]["box"] is not None
    json.dumps([r.to_dict() for r in results])  # plain JSON types


def test_both_methods_with_a_target_and_a_layer(tmp_path, checkpoint, image_factory):
    photo = image_factory("car.png", size=(40, 40), seed=3)
    (result,) = explain_images(
        checkpoint,
        [photo],
        tmp_path / "out",
        methods="both",
        target="Volvo 240 Sedan 1993",
        layer="stages.0",
        shap_evals=20,
        top_k=2,
    )
    assert set(result.files) == {"gradcam", "gradcam_box", "shap"}
    assert result.details["gradcam"]["target_index"] == 2
    assert result.details["gradcam"]["layer"] == "stages.0"
    assert result.details["shap"]["classes"][0]["index"] == 2


def test_unreadable_photo_is_recorded_and_the_rest_go_on(tmp_path, checkpoint, image_factory):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    good = image_factory("good.jpg", size=(40, 30), seed=4)
    results = explain_images(checkpoint, [broken, tmp_path / "missing.jpg", good], tmp_path / "out")
    assert [r.ok for r in results] == [False, False, True]
    assert "broken.jpg" in results[0].error and results[0].files == {}
    assert "missing.jpg" in results[1].error and "not found" in results[1].error
    assert results[2].files


def test_requests_that_would_fail_every_photo_are_refused_first(tmp_path, checkpoint, image_factory):
    photo = image_factory("car.jpg", seed=5)
    out = tmp_path / "out"
    with pytest.raises(ExplainError, match="unknown class"):
        explain_images(checkpoint, [photo], out, target="Tesla Model S 2012")
    with pytest.raises(ExplainError, match="unknown explanation method 'lime'"):
        explain_images(checkpoint, [photo], out, methods="lime")
    with pytest.raises(ExplainError, match="no layer 'layer4'"):
        explain_images(checkpoint, [photo], out, layer="layer4")
    assert not out.exists() or not any(out.iterdir())


def test_parse_methods():
    assert parse_methods("both") == ("gradcam", "shap")
    assert parse_methods(["shap", "gradcam", "shap"]) == ("gradcam", "shap")
    with pytest.raises(ExplainError, match="no explanation method"):
        parse_methods([])
