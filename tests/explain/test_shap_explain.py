"""SHAP (Partition explainer, image masker) on a tiny network: shapes, additivity, pictures, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from carid.explain import ExplainError, compute_shap, render_shap
from carid.explain.overlay import save_png
from carid.explain.shap_explain import masker_spec, probability_function
from tests.explain.helpers import random_photo, tiny_model

MAX_EVALS = 40  # tiny: a handful of regions, fast


@pytest.fixture(scope="module")
def model():
    return tiny_model(resize_mode="letterbox")


@pytest.fixture(scope="module")
def result(model):
    """One SHAP run shared by the tests (shap's numba code compiles on its first call: seconds)."""
    return compute_shap(model, random_photo(50, 30, seed=5), top_k=2, max_evals=MAX_EVALS)


def test_maps_cover_the_photo_as_resized_for_the_network(result):
    # 50 x 30 letterboxed into 32 x 32: the photo's region is 32 x 19 (border left out).
    assert result.values.shape == (2, 19, 32)
    assert result.values.dtype == np.float32
    assert result.image.shape == (19, 32, 3)
    assert np.abs(result.values).max() > 0
    assert result.geometry.pad_top == 6
    assert result.to_dict()["values_shape"] == [2, 19, 32]


def test_top_classes_in_order_of_probability(model, result):
    predict = probability_function(model, result.geometry)
    probabilities = predict(result.image[None])[0]
    expected = list(np.argsort(-probabilities)[:2])
    assert list(result.class_indices) == expected
    assert result.predicted_index == expected[0]
    assert result.probabilities == pytest.approx(probabilities[expected].tolist(), abs=1e-6)
    assert result.labels[0] == model.class_names[expected[0]]


def test_values_add_up_to_the_change_from_the_fully_masked_photo(model, result):
    """SHAP's additivity: the values of a class sum to p(photo) - p(photo with every region hidden)."""
    predict = probability_function(model, result.geometry)
    kernel = int(result.masker[len("blur(") :].split(",")[0])
    hidden = cv2.blur(result.image, (kernel, kernel))
    change = predict(result.image[None])[0] - predict(hidden[None])[0]
    sums = result.values.reshape(len(result.class_indices), -1).sum(axis=1)
    assert sums == pytest.approx(change[list(result.class_indices)], abs=1e-4)


def test_target_class_comes_first(model, result):
    least = int(np.argmin(probability_function(model, result.geometry)(result.image[None])[0]))
    targeted = compute_shap(model, random_photo(50, 30, seed=5), target=least, top_k=2, max_evals=MAX_EVALS)
    assert targeted.class_indices[0] == least
    assert targeted.class_indices[1] == result.predicted_index
    assert targeted.predicted_index == result.predicted_index


def test_shap_picture_is_written(tmp_path, result):
    picture = render_shap(result)
    path = save_png(picture, tmp_path / "shap.png")
    assert path.is_file() and path.stat().st_size > 0
    assert picture.width > 3 * picture.height // 2  # the photo + 2 class panels side by side


def test_masker_choices_and_errors(model):
    assert masker_spec("blur", 19, 32) == "blur(9,9)"
    assert masker_spec("blur(5, 7)", 19, 32) == "blur(5, 7)"
    assert masker_spec("inpaint_telea", 19, 32) == "inpaint_telea"
    with pytest.raises(ExplainError, match="unknown SHAP masker 'noise'"):
        masker_spec("noise", 19, 32)
    with pytest.raises(ExplainError, match="max_evals must be at least 10"):
        compute_shap(model, random_photo(), max_evals=5)
    with pytest.raises(ExplainError, match="unknown class"):
        compute_shap(model, random_photo(), target="Trabant 601", max_evals=MAX_EVALS)
