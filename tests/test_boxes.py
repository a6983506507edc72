import numpy as np
import pytest

from carid import boxes


def test_stanford_one_based_inclusive_to_xyxy():
    # pixels 1..10 inclusive cover [0, 10) in continuous coordinates
    assert boxes.from_inclusive_1based([1, 1, 10, 20]).tolist() == [[0, 0, 10, 20]]


def test_xywh_round_trip():
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0], [0, 0, 1, 1]])
    assert np.allclose(boxes.from_xywh(boxes.to_xywh(xyxy)), xyxy)
    assert boxes.to_xywh(xyxy)[0].tolist() == [10, 20, 40, 60]


def test_yolo_normalized_round_trip():
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0]])
    yolo = boxes.to_cxcywh_normalized(xyxy, 100, 200)
    assert np.allclose(yolo, [[0.3, 0.25, 0.4, 0.3]])
    assert np.allclose(boxes.from_cxcywh_normalized(yolo, 100, 200), xyxy)


def test_iou_hand_computed():
    a = [[0, 0, 10, 10]]
    b = [[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]]
    # overlap 25, union 175
    assert np.allclose(boxes.iou(a, b), [[25 / 175, 0.0, 1.0]])
    assert np.allclose(boxes.paired_iou([[0, 0, 10, 10]] * 3, b), [25 / 175, 0.0, 1.0])


def test_giou_hand_computed():
    # disjoint boxes: iou 0, hull 30x30=900, union 200 -> giou = -(700/900)
    assert np.allclose(boxes.giou([[0, 0, 10, 10]], [[20, 20, 30, 30]]), [[-700 / 900]])
    assert np.allclose(boxes.giou([[0, 0, 10, 10]], [[0, 0, 10, 10]]), [[1.0]])


def test_clip_and_outside_fraction_do_not_mutate():
    original = np.array([[-10.0, 0.0, 10.0, 10.0]])
    clipped = boxes.clip(original, 100, 100)
    assert clipped.tolist() == [[0, 0, 10, 10]]
    assert original.tolist() == [[-10, 0, 10, 10]]
    assert np.allclose(boxes.outside_fraction(original, 100, 100), [0.5])


def test_degenerate_and_area():
    b = [[0, 0, 10, 10], [5, 5, 5, 9], [10, 10, 2, 2]]
    assert boxes.is_degenerate(b).tolist() == [False, True, True]
    assert boxes.area(b).tolist() == [100, 0, 0]


def test_scale_union_largest():
    b = np.array([[0, 0, 10, 10], [5, 5, 40, 20]])
    assert boxes.scale(b, 2, 3)[1].tolist() == [10, 15, 80, 60]
    assert boxes.union_box(b).tolist() == [0, 0, 40, 20]
    assert boxes.largest(b).tolist() == [5, 5, 40, 20]
    with pytest.raises(ValueError):
        boxes.largest([])


def test_empty_inputs():
    assert boxes.as_boxes([]).shape == (0, 4)
    assert boxes.iou([], [[0, 0, 1, 1]]).shape == (0, 1)
