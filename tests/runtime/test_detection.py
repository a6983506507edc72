"""Tests for carid.runtime.detection: the letterbox round trip, NMS, the post-processing and
`Detector` on ONNX Runtime.

`write_fake_detector` builds a detector bundle whose model.onnx (made with onnx.helper, no torch)
gives fixed scores and boxes, so every expected detection is derived here; a score can also follow
the photo's brightness to check the batch order. The exported real detector is tested in
tests/test_export_detector.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from carid.artifacts.bundle import METADATA_FILE, MODEL_FILE
from carid.artifacts.detector import DetectorBundleError, DetectorMetadata, write_detector_metadata
from carid.boxes import iou
from carid.preprocess import PreprocessSpec, denormalize
from carid.runtime.detection import (
    DetectionError,
    Detector,
    PostProcess,
    check_image,
    letterbox,
    nms,
    postprocess,
)

INPUT = (96, 64)  # network input (width, height)
SPEC = PreprocessSpec(image_size=(INPUT[1], INPUT[0]), resize_mode="letterbox")


def fake_metadata(**changes: Any) -> DetectorMetadata:
    values: dict[str, Any] = {
        "preprocess": SPEC.to_dict(),
        "score_threshold": 0.5,
        "nms_iou": 0.5,
        "max_detections": 10,
        "min_box_side": 2.0,
        "model_config": {"architecture": "fake"},
    }
    values.update(changes)
    return DetectorMetadata(**values)


def write_fake_detector(
    folder: Path,
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    brightness: Sequence[float] | None = None,
    graph_input: tuple[int, int] = INPUT,
    output_names: tuple[str, str] = ("scores", "boxes"),
    **metadata: Any,
) -> Path:
    """A detector bundle whose graph answers `boxes` (network pixels) for every photo, with
    scores sigmoid(logit(score) + brightness * mean input value) (brightness default 0)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    count = len(scores)
    clipped = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
    logits = np.log(clipped / (1 - clipped)).astype(np.float32).reshape(1, count)
    weights = np.asarray(brightness or [0.0] * count, dtype=np.float32).reshape(1, count)
    constants = {
        "logits": logits,
        "weights": weights,
        "box_values": np.asarray(boxes, dtype=np.float32).reshape(1, count, 4),
        "zero": np.zeros((1, 1, 1), dtype=np.float32),
        "axes1": np.array([1], dtype=np.int64),
        "axes2": np.array([2], dtype=np.int64),
    }
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axes1"], ["mean_b1"]),
        helper.make_node("Mul", ["mean_b1", "weights"], ["shift"]),
        helper.make_node("Add", ["shift", "logits"], ["raw"]),
        helper.make_node("Sigmoid", ["raw"], [output_names[0]]),
        helper.make_node("Unsqueeze", ["mean_b1", "axes2"], ["mean_b11"]),
        helper.make_node("Mul", ["mean_b11", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "box_values"], [output_names[1]]),
    ]
    width, height = graph_input
    graph = helper.make_graph(
        nodes,
        "fake_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, height, width])],
        [
            helper.make_tensor_value_info(output_names[0], TensorProto.FLOAT, ["batch", count]),
            helper.make_tensor_value_info(output_names[1], TensorProto.FLOAT, ["batch", count, 4]),
        ],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / MODEL_FILE))
    write_detector_metadata(folder, fake_metadata(**metadata))
    return folder


def photo(width: int, height: int, value: int = 0) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


# --- letterbox and post-processing ------------------------------------------------------------------


def test_boxes_go_through_the_letterbox_and_back() -> None:
    image = photo(200, 100)
    image[20:60, 50:130] = 255  # a white car at x 50..130, y 20..60
    array, geometry = letterbox(image, SPEC)
    assert array.shape == (3, INPUT[1], INPUT[0])
    # 200x100 fits 96x48, centred: 8 rows of border above and below
    assert (geometry.scale_x, geometry.pad_left, geometry.pad_top) == (0.48, 0.0, 8.0)
    truth = np.array([[50.0, 20.0, 130.0, 60.0]])
    network = geometry.boxes_to_network(truth) * np.array([INPUT[0], INPUT[1]] * 2)
    assert network[0].tolist() == pytest.approx([24.0, 17.6, 62.4, 36.8])
    white = np.argwhere(denormalize(array, SPEC).min(axis=2) > 200)
    (top, left), (bottom, right) = white.min(axis=0), white.max(axis=0) + 1
    assert np.abs(np.array([left, top, right, bottom]) - network[0]).max() <= 1.0
    settings = PostProcess(score_threshold=0.5, nms_iou=0.5, max_detections=5)
    [found] = postprocess(np.array([0.9]), network, geometry, settings)
    assert found.box == pytest.approx((50.0, 20.0, 130.0, 60.0)) and found.score == pytest.approx(0.9)


def test_nms_keeps_the_best_of_overlapping_boxes_and_both_separate_ones() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10.5]], dtype=float)
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]  # 0 and 3 overlap 1 (IoU 0.82, 0.78)
    assert nms(boxes, scores, 0.85).tolist() == [1, 0, 2]  # 3 overlaps 0 by 0.95
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_nms_keeps_what_torchvision_keeps() -> None:
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 100, size=(300, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, size=(300, 2))], axis=1)
    scores = rng.uniform(size=300)
    for threshold in (0.3, 0.5, 0.7):
        expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
        assert nms(boxes, scores, threshold).tolist() == expected.tolist()


def test_postprocess_thresholds_caps_clips_and_drops_small_boxes() -> None:
    _, geometry = letterbox(photo(96, 64), SPEC)  # the photo is the network input: identity mapping
    boxes = np.array(
        [
            [10, 10, 30, 30],
            [40, 10, 60, 30],
            [70, 10, 90, 30],
            [-5, 40, 20, 70],
            [50, 50, 51, 60],
            [0, 0, 9, 9],
        ],
        dtype=float,
    )
    scores = np.array([0.6, 0.9, 0.5, 0.8, 0.95, np.nan])
    settings = PostProcess(score_threshold=0.5, nms_iou=0.5, max_detections=3, min_box_side=2.0)
    found = postprocess(scores, boxes, geometry, settings)
    # 0.5 is not above 0.5; NaN never passes; the best 3 are 0.95 (1 px wide: dropped), 0.9, 0.8
    assert [d.score for d in found] == pytest.approx([0.9, 0.8])
    assert found[1].box == (0.0, 40.0, 20.0, 64.0)  # clipped to the photo
    lower = PostProcess(score_threshold=0.1, nms_iou=0.5, max_detections=10, min_box_side=2.0)
    assert len(postprocess(scores, boxes, geometry, lower)) == 4


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 10), dtype=np.uint8), r"H x W x 3 RGB array, got shape \(10, 10\)"),
        (np.zeros((10, 10, 4), dtype=np.uint8), r"got shape \(10, 10, 4\)"),
        (np.zeros((10, 10, 3), dtype=np.float32), "expected uint8 pixels"),
        (np.zeros((0, 10, 3), dtype=np.uint8), r"the image is empty \(10 x 0 pixels\)"),
        ([[[0, 0, 0]]], "got list"),
    ],
)
def test_bad_arrays_raise_an_error_naming_the_problem(image: Any, message: str) -> None:
    with pytest.raises(DetectionError, match=message):
        check_image(image, "image 0")


# --- Detector on ONNX Runtime --------------------------------------------------------------------


@pytest.fixture
def fake_bundle(tmp_path: Path) -> Path:
    boxes = [[20, 10, 40, 30], [22, 10, 42, 30], [60, 20, 90, 50], [0, 0, 96, 64]]
    return write_fake_detector(tmp_path / "detector", boxes, [0.9, 0.8, 0.7, 0.2], brightness=[0, 0, 0, 4])


def test_the_detector_answers_in_photo_pixels_best_first(fake_bundle: Path) -> None:
    detector = Detector.load(fake_bundle, threads=1)
    found = detector.detect(photo(192, 128))  # twice the network size: boxes double
    assert [d.box for d in found] == [pytest.approx((40, 20, 80, 60)), pytest.approx((120, 40, 180, 100))]
    assert [d.score for d in found] == pytest.approx([0.9, 0.7])  # 0.8 overlapped 0.9; 0.2 is below
    assert [d.score for d in detector.detect(photo(192, 128), score_threshold=0.75)] == pytest.approx([0.9])
    assert detector.metadata.input_size == INPUT
    assert json.loads(json.dumps(found[0].to_dict())) == {"box": [40, 20, 80, 60], "score": 0.9}


def test_a_car_free_photo_gives_no_detection(tmp_path: Path) -> None:
    detector = Detector.load(write_fake_detector(tmp_path / "d", [[10, 10, 50, 50]], [0.3]))
    assert detector.detect(photo(300, 200, 128)) == []


def test_detect_batch_keeps_the_order_of_the_photos(fake_bundle: Path) -> None:
    detector = Detector.load(fake_bundle)
    dark, bright = photo(96, 64, 0), photo(96, 64, 255)  # bright: anchor 3 scores about 1
    results = detector.detect_batch([dark, bright, dark], score_threshold=0.6, batch_size=2)
    assert [len(found) for found in results] == [2, 3, 2]
    assert results[1][0].box == (0.0, 0.0, 96.0, 64.0)
    with pytest.raises(DetectionError, match="image 1: expected uint8"):
        detector.detect_batch([dark, dark.astype(np.float32)])
    with pytest.raises(DetectionError, match="score_threshold must be a number in"):
        detector.detect(dark, score_threshold=1.5)


def test_a_graph_that_does_not_fit_its_model_json_is_refused(tmp_path: Path) -> None:
    box = [[0, 0, 10, 10]]
    with pytest.raises(
        DetectorBundleError, match=r"inputs of shape \['batch', 3, 64, 128\].*\[batch, 3, 64, 96\]"
    ):
        Detector.load(write_fake_detector(tmp_path / "size", box, [0.9], graph_input=(128, 64)))
    with pytest.raises(DetectorBundleError, match="graph's outputs are"):
        Detector.load(
            write_fake_detector(tmp_path / "names", box, [0.9], output_names=("probabilities", "box"))
        )
    write_fake_detector(tmp_path / "broken", box, [0.9])
    (tmp_path / "broken" / MODEL_FILE).write_bytes(b"not onnx")
    with pytest.raises(DetectorBundleError, match="ONNX Runtime cannot load the model"):
        Detector.load(tmp_path / "broken")
    assert (tmp_path / "broken" / METADATA_FILE).is_file()


def test_a_real_photo_file_decoded_to_an_array_is_detected(fake_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    Image.fromarray(photo(96, 64, 40)).save(path)
    found = Detector.load(fake_bundle).detect(np.asarray(Image.open(path).convert("RGB")))
    assert iou([found[0].box], [[20, 10, 40, 30]])[0, 0] == pytest.approx(1.0)


def test_sessions_do_not_spin_between_runs(fake_bundle: Path) -> None:
    """A pipeline runs its detector and identifier sessions in turn on the same cores: idle worker
    threads must not spin (ONNX Runtime's default) and starve the other session."""
    from carid.runtime.backends import OnnxBackend

    detector = Detector.load(fake_bundle, threads=2)
    options = detector.backend.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
    spinning = OnnxBackend(fake_bundle / MODEL_FILE, spin=True).session.get_session_options()
    with pytest.raises(Exception, match="allow_spinning"):  # not set: ONNX Runtime's default (spin)
        spinning.get_session_config_entry("session.intra_op.allow_spinning")
