"""Tests for carid.embedding: the whitening, the prototypes and the simulated calibration."""

from __future__ import annotations

import numpy as np
import pytest

from carid.embedding import (
    SCALES,
    EmbeddingSpace,
    ScoreCalibration,
    fit_calibration,
    fit_space,
    prototype_sum,
    prototypes,
    unit_rows,
)


def test_fit_space_whitens_the_shrunk_within_class_covariance() -> None:
    # Class a around (10, 0), class b around (0, 10), each with residuals (+-2, 0) and (0, +-1):
    # within-class covariance diag(2, 0.5); shrinkage 1 adds mean(diag) = 1.25 -> diag(3.25, 1.75).
    residuals = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    x = np.concatenate([residuals + np.array([10.0, 0.0]), residuals + np.array([0.0, 10.0])])
    labels = ["a"] * 4 + ["b"] * 4
    space = fit_space(x, labels, shrinkage=1.0)
    np.testing.assert_allclose(space.mean, [5.0, 5.0], atol=1e-6)
    # projection P with P^T S' P = I: here P = diag(1/sqrt(3.25), 1/sqrt(1.75)) up to order and sign.
    shrunk = np.diag([3.25, 1.75])
    np.testing.assert_allclose(space.projection.T @ shrunk @ space.projection, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(
        sorted(np.abs(space.projection).max(axis=0)), sorted([3.25**-0.5, 1.75**-0.5]), atol=1e-6
    )
    # transform: centred, projected, unit length; a step along y stays along y's axis alone
    out = space.transform(np.array([[5.0, 5.0 + 1.75**0.5]]))
    np.testing.assert_allclose(np.sort(np.abs(out[0])), [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(space.transform(x), axis=1), 1.0, atol=1e-6)


def test_fit_space_without_repeated_classes_is_the_centred_cosine() -> None:
    x = np.array([[1.0, 0.0], [0.0, 3.0]])
    space = fit_space(x, ["a", "b"])
    np.testing.assert_array_equal(space.projection, np.eye(2))
    np.testing.assert_allclose(space.transform(np.array([[1.5, 1.5]])), [[1.0, 0.0]], atol=1e-6)


def test_fit_space_and_transform_check_their_inputs() -> None:
    with pytest.raises(ValueError, match="2 labels for embeddings of shape"):
        fit_space(np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="shrinkage"):
        fit_space(np.ones((2, 2)), ["a", "a"], shrinkage=0.0)
    space = EmbeddingSpace(np.zeros(3, dtype=np.float32), np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="dimension 3"):
        space.transform(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="do not fit"):
        EmbeddingSpace(np.zeros(3, dtype=np.float32), np.eye(4, dtype=np.float32))


def test_prototypes_are_unit_means_that_can_grow() -> None:
    first = prototype_sum(unit_rows(np.array([[3.0, 0.0], [0.0, 2.0]])))
    np.testing.assert_allclose(first, [1.0, 1.0])
    np.testing.assert_allclose(prototypes(first[None, :], np.array([2])), [[0.5**0.5, 0.5**0.5]])
    grown = first + prototype_sum(unit_rows(np.array([[1.0, 0.0]])))
    np.testing.assert_allclose(prototypes(grown[None, :], np.array([3])), unit_rows(np.array([[2.0, 1.0]])))


def test_score_calibration_is_affine() -> None:
    calibration = ScoreCalibration(scale=10.0, bias=-3.0)
    np.testing.assert_allclose(calibration.logits(np.array([[1.0, 0.5, -1.0]])), [[7.0, 2.0, -13.0]])


def _separable(
    classes: int = 12, per_class: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features near one axis per class; trained logits that favour the true class by a margin."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    features = unit_rows(np.eye(classes)[labels] + 0.15 * rng.normal(size=(len(labels), classes)))
    logits = rng.normal(size=(len(labels), classes))
    logits[np.arange(len(labels)), labels] += 6.0
    return logits, features, labels


def test_fit_calibration_finds_a_bias_that_keeps_both_sides_right() -> None:
    logits, features, labels = _separable()
    calibration = fit_calibration(logits, features, labels, shots=3, enrolled=20, repeats=4)
    assert calibration.scale in SCALES
    assert calibration.simulated_classes == 3  # a quarter of the 12 eligible classes
    assert calibration.shots == 3
    assert calibration.new_accuracy is not None and calibration.new_accuracy >= 0.95
    assert calibration.known_retained is not None and calibration.known_retained >= 0.95
    # Its decisions on the separable data: own prototype scores above the best trained rival logit.
    own = calibration.logits(np.array([0.95]))[0]
    assert own > np.max(logits[labels == 0][:, 1:]) - 1.0


def test_fit_calibration_is_seeded() -> None:
    logits, features, labels = _separable(seed=1)
    first = fit_calibration(logits, features, labels, seed=3)
    assert fit_calibration(logits, features, labels, seed=3) == first


def test_fit_calibration_needs_two_classes_with_two_photos() -> None:
    logits, features, labels = _separable(classes=3, per_class=1)
    with pytest.raises(ValueError, match="at least 2 classes with 2 or more"):
        fit_calibration(logits, features, labels)
    with pytest.raises(ValueError, match="3 logits rows, 2 feature rows"):
        fit_calibration(logits, features[:2], labels)
