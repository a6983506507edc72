"""The ImageNet car classes and the car-probability score."""

from __future__ import annotations

import numpy as np
import pytest

from carid.models.imagenet import IMAGENET_CAR_CLASS_NAMES, IMAGENET_CAR_CLASSES, car_probability


def test_car_classes_are_valid_imagenet_indices():
    assert set(IMAGENET_CAR_CLASS_NAMES) == IMAGENET_CAR_CLASSES
    assert all(0 <= index < 1000 for index in IMAGENET_CAR_CLASSES)
    assert IMAGENET_CAR_CLASS_NAMES[817] == "sports car"


def test_car_probability_sums_the_car_classes():
    probabilities = np.zeros((2, 1000))
    probabilities[0, 817] = 0.6
    probabilities[0, 436] = 0.3
    probabilities[0, 1] = 0.1
    probabilities[1, 1] = 1.0
    assert car_probability(probabilities) == pytest.approx([0.9, 0.0])
    assert car_probability(probabilities[0]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="last axis 1000"):
        car_probability(np.zeros(10))
