"""The ImageNet-1k classes that show a car, for "is there a car in this photo?" checks.

An ImageNet classifier (the pretrained backbones' original 1000-class head) puts a car photo in one
of a handful of vehicle classes; summing their probabilities gives a cheap "car present" score
without any car training. This module holds only constants and NumPy so that the slim, torch-free
install (inference, serve) can import it.
"""

from __future__ import annotations

import numpy as np

# ImageNet-1k class index (0-based, the order of timm / torchvision heads) -> class name.
IMAGENET_CAR_CLASS_NAMES: dict[int, str] = {
    436: "beach wagon",
    468: "cab",
    479: "car wheel",
    511: "convertible",
    581: "grille",
    609: "jeep",
    627: "limousine",
    656: "minivan",
    661: "Model T",
    675: "moving van",
    705: "passenger car",
    717: "pickup",
    734: "police van",
    751: "racer",
    817: "sports car",
    864: "tow truck",
    867: "trailer truck",
}

IMAGENET_CAR_CLASSES: frozenset[int] = frozenset(IMAGENET_CAR_CLASS_NAMES)

IMAGENET_NUM_CLASSES = 1000


def car_probability(probabilities: np.ndarray) -> np.ndarray:
    """Probability mass on the car classes.

    probabilities: softmax output of an ImageNet-1k head, [1000] or [N, 1000].
    Returns a float array [] or [N] in [0, 1].
    """
    array = np.asarray(probabilities, dtype=np.float64)
    if array.shape[-1] != IMAGENET_NUM_CLASSES:
        raise ValueError(
            f"car_probability expects ImageNet-1k probabilities (last axis 1000), got shape {array.shape}"
        )
    return array[..., sorted(IMAGENET_CAR_CLASSES)].sum(axis=-1)
