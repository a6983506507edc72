"""Pure box math on NumPy arrays. carid's one internal box format is absolute xyxy pixels.

Every function takes and returns new float64 arrays of shape [N, 4] (or [4] for one box where
noted) and never mutates its input. Conversions to and from other formats (1-based inclusive
Stanford boxes, COCO xywh, YOLO normalized cxcywh) happen only at the edges, in the readers and
writers. Torch code (losses) uses `torchvision.ops` on tensors in the same xyxy convention.

Pixel convention: continuous coordinates, (0, 0) is the top-left corner of the top-left pixel, so
a box covering a whole W x H image is [0, 0, W, H].
"""

from __future__ import annotations

import numpy as np


def as_boxes(boxes: object) -> np.ndarray:
    """Any [N, 4] / [4] / empty input as a float64 array [N, 4]."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return array.reshape(-1, 4)


def from_inclusive_1based(boxes: object) -> np.ndarray:
    """Stanford devkit boxes (1-based, inclusive pixel indices) -> xyxy pixels.

    A box x1=1, x2=W covers pixels 1..W, i.e. [0, W) in continuous coordinates.
    """
    b = as_boxes(boxes)
    return np.stack([b[:, 0] - 1, b[:, 1] - 1, b[:, 2], b[:, 3]], axis=1)


def from_xywh(boxes: object) -> np.ndarray:
    """COCO [x, y, width, height] -> xyxy."""
    b = as_boxes(boxes)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def to_xywh(boxes: object) -> np.ndarray:
    b = as_boxes(boxes)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def from_cxcywh_normalized(boxes: object, width: float, height: float) -> np.ndarray:
    """YOLO [cx, cy, w, h] as fractions of the image size -> xyxy pixels."""
    b = as_boxes(boxes)
    cx, cy, w, h = b[:, 0] * width, b[:, 1] * height, b[:, 2] * width, b[:, 3] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def to_cxcywh_normalized(boxes: object, width: float, height: float) -> np.ndarray:
    b = as_boxes(boxes)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return np.stack([(b[:, 0] + w / 2) / width, (b[:, 1] + h / 2) / height, w / width, h / height], axis=1)


def widths(boxes: object) -> np.ndarray:
    b = as_boxes(boxes)
    return b[:, 2] - b[:, 0]


def heights(boxes: object) -> np.ndarray:
    b = as_boxes(boxes)
    return b[:, 3] - b[:, 1]


def area(boxes: object) -> np.ndarray:
    """Area of each box, [N]; 0 for degenerate (inverted or empty) boxes."""
    return np.clip(widths(boxes), 0, None) * np.clip(heights(boxes), 0, None)


def is_degenerate(boxes: object, min_size: float = 1.0) -> np.ndarray:
    """[N] bool: width or height below `min_size` pixels (including inverted boxes)."""
    return (widths(boxes) < min_size) | (heights(boxes) < min_size)


def clip(boxes: object, width: float, height: float) -> np.ndarray:
    """Clip boxes to the image [0, width] x [0, height]."""
    b = as_boxes(boxes)
    return np.stack(
        [
            np.clip(b[:, 0], 0, width),
            np.clip(b[:, 1], 0, height),
            np.clip(b[:, 2], 0, width),
            np.clip(b[:, 3], 0, height),
        ],
        axis=1,
    )


def outside_fraction(boxes: object, width: float, height: float) -> np.ndarray:
    """[N] share of each box's area that lies outside the image (0 = fully inside, 1 = outside)."""
    full = area(boxes)
    inside = area(clip(boxes, width, height))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(full > 0, 1.0 - inside / np.where(full > 0, full, 1.0), 0.0)
    return share


def scale(boxes: object, sx: float, sy: float) -> np.ndarray:
    """Scale x coordinates by sx and y by sy (e.g. after resizing an image)."""
    return as_boxes(boxes) * np.array([sx, sy, sx, sy], dtype=np.float64)


def translate(boxes: object, dx: float, dy: float) -> np.ndarray:
    return as_boxes(boxes) + np.array([dx, dy, dx, dy], dtype=np.float64)


def iou(boxes_a: object, boxes_b: object) -> np.ndarray:
    """Pairwise intersection over union, [N, M]. Degenerate boxes give 0."""
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def paired_iou(boxes_a: object, boxes_b: object) -> np.ndarray:
    """IoU of a[i] with b[i], [N] (the diagonal of `iou`, without the N x N work)."""
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    if len(a) != len(b):
        raise ValueError(f"paired_iou needs equal lengths, got {len(a)} and {len(b)}")
    x1 = np.maximum(a[:, 0], b[:, 0])
    y1 = np.maximum(a[:, 1], b[:, 1])
    x2 = np.minimum(a[:, 2], b[:, 2])
    y2 = np.minimum(a[:, 3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def giou(boxes_a: object, boxes_b: object) -> np.ndarray:
    """Pairwise generalized IoU, [N, M], in [-1, 1]."""
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    overlap = iou(a, b)
    x1 = np.minimum(a[:, None, 0], b[None, :, 0])
    y1 = np.minimum(a[:, None, 1], b[None, :, 1])
    x2 = np.maximum(a[:, None, 2], b[None, :, 2])
    y2 = np.maximum(a[:, None, 3], b[None, :, 3])
    hull = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    x1i = np.maximum(a[:, None, 0], b[None, :, 0])
    y1i = np.maximum(a[:, None, 1], b[None, :, 1])
    x2i = np.minimum(a[:, None, 2], b[None, :, 2])
    y2i = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2i - x1i, 0, None) * np.clip(y2i - y1i, 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    penalty = np.divide(hull - union, hull, out=np.zeros_like(hull), where=hull > 0)
    return overlap - penalty


def union_box(boxes: object) -> np.ndarray:
    """The smallest box [4] enclosing all boxes (for single-box training on multi-box images)."""
    b = as_boxes(boxes)
    if len(b) == 0:
        raise ValueError("union_box of no boxes")
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()], dtype=np.float64)


def largest(boxes: object) -> np.ndarray:
    """The box [4] with the largest area."""
    b = as_boxes(boxes)
    if len(b) == 0:
        raise ValueError("largest of no boxes")
    return b[int(np.argmax(area(b)))]
