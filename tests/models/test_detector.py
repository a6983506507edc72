"""The car detector: shapes and scores of `forward_export`, that it agrees with torchvision's own
post-processing, that a tiny detector learns boxes drawn here, the ONNX export, offline weights and
rebuilding from a checkpoint.

Tiny models: timm's 82k-parameter `test_efficientnet` backbone from random weights, 128x96 inputs.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from carid.config import ConfigError, DetectConfig, ModelConfig
from carid.models.backbones import create_backbone
from carid.models.detector import (
    DetectorError,
    DetectorNet,
    build_detector,
    detector_metadata,
    is_detector_metadata,
    load_detector,
)

WIDTH, HEIGHT = 128, 96
TINY = DetectConfig(
    backbone="test_efficientnet", pretrained="none", image_size=(WIDTH, HEIGHT), fpn_channels=32
)


@pytest.fixture
def one_thread():
    """One intra-op thread for the training tests: on 2 cores shared with another process (pytest -n 2
    or a background run) two threads each are several times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(architecture: str = "fcos", **changes: object) -> DetectorNet:
    torch.manual_seed(0)
    return build_detector(dataclasses.replace(TINY, architecture=architecture, **changes))  # type: ignore[arg-type]


def rectangles(count: int = 16, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Normalized images [count, 3, 96, 128] of noise with 1-2 red rectangles each (every fourth
    image none) and their targets {"boxes" xyxy pixels, "labels"}."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for index in range(count):
        pixels = rng.integers(0, 120, (HEIGHT, WIDTH, 3)).astype(np.float32)
        boxes = []
        for _ in range(0 if index % 4 == 3 else int(rng.integers(1, 3))):
            box_w, box_h = int(rng.integers(20, 50)), int(rng.integers(16, 36))
            x, y = int(rng.integers(0, WIDTH - box_w)), int(rng.integers(0, HEIGHT - box_h))
            pixels[y : y + box_h, x : x + box_w] = (230, 30, 30)
            boxes.append([x, y, x + box_w, y + box_h])
        images.append(torch.from_numpy(((pixels / 255 - 0.5) / 0.5).transpose(2, 0, 1).copy()))
        box_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        targets.append({"boxes": box_tensor, "labels": torch.zeros(len(boxes), dtype=torch.int64)})
    return torch.stack(images), targets


def locations(p6p7: bool = False) -> int:
    strides = (8, 16, 32, 64, 128) if p6p7 else (8, 16, 32)
    return sum(-(-HEIGHT // s) * -(-WIDTH // s) for s in strides)


@pytest.mark.parametrize(
    ("architecture", "p6p7", "per_location"), [("fcos", False, 1), ("fcos", True, 1), ("retinanet", False, 9)]
)
def test_forward_export_gives_a_score_and_a_decoded_box_per_location(architecture, p6p7, per_location):
    net = tiny(architecture, p6p7=p6p7).eval()
    images, _ = rectangles(2)
    with torch.no_grad():
        scores, boxes = net.forward_export(images)
    count = locations(p6p7) * per_location
    assert scores.shape == (2, count) and boxes.shape == (2, count, 4)
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    assert bool(torch.isfinite(boxes).all())
    assert bool((boxes[..., 2] >= boxes[..., 0]).all()) and bool((boxes[..., 3] >= boxes[..., 1]).all())
    if architecture == "fcos":  # an FCOS box is distances from its location: it contains the location
        with torch.no_grad():
            anchors = net._run(images)[1][0]
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        assert bool((boxes[0, :, :2] <= centres + 1e-4).all()) and bool(
            (boxes[0, :, 2:] >= centres - 1e-4).all()
        )


@pytest.mark.parametrize("architecture", ["fcos", "retinanet"])
def test_forward_export_thresholded_and_suppressed_is_torchvisions_post_processing(architecture):
    """What the NumPy runtime will do with forward_export (threshold, NMS, cap) gives exactly the
    detections of torchvision's own post-processing."""
    net = tiny(architecture, nms_iou=0.5, max_detections=30, min_box_side=0.0).eval()
    images, _ = rectangles(2, seed=3)
    with torch.no_grad():
        scores, boxes = net.forward_export(images)
        threshold = float(scores.quantile(0.9))  # keeps a tenth of the locations, under torchvision's top-k
        detections = net.detect(images, score_threshold=threshold)
    for index, detected in enumerate(detections):
        keep = scores[index] > threshold
        kept_boxes = clip_boxes_to_image(boxes[index][keep], (HEIGHT, WIDTH))
        kept_scores = scores[index][keep]
        order = batched_nms(kept_boxes, kept_scores, torch.zeros_like(kept_scores, dtype=torch.int64), 0.5)[
            :30
        ]
        assert len(detected["boxes"]) == len(order) > 0
        torch.testing.assert_close(detected["scores"], kept_scores[order])
        torch.testing.assert_close(detected["boxes"], kept_boxes[order])
        assert bool((detected["labels"] == 0).all())


def test_a_tiny_fcos_detector_learns_the_drawn_boxes(one_thread):
    torch.manual_seed(0)
    net = tiny("fcos")
    images, targets = rectangles(16)
    optimizer = torch.optim.AdamW(net.parameter_groups(0.01, 0.3, 1e-4))
    net.train()
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        batch = torch.randperm(16, generator=generator)[:8]
        loss = sum(net.losses(images[batch], [targets[i] for i in batch]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.6 * losses[0]
    net.eval()
    detections = net.detect(images, score_threshold=0.2)
    best = [
        box_iou(target["boxes"], detected["boxes"]).max(dim=1).values
        if len(detected["boxes"])
        else torch.zeros(len(target["boxes"]))
        for target, detected in zip(targets, detections, strict=True)
        if len(target["boxes"])
    ]
    ious = torch.cat(best)
    assert float(ious.mean()) > 0.6, ious
    assert float((ious > 0.5).float().mean()) > 0.7, ious


def test_retinanet_trains_with_empty_images(one_thread):
    net = tiny("retinanet").train()
    images, targets = rectangles(8)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 8
    parts = net.losses(images, empty)
    assert set(parts) == {"classification", "bbox_regression"}
    assert all(bool(torch.isfinite(value)) for value in parts.values())
    optimizer = torch.optim.AdamW(net.parameter_groups(0.003, 1.0, 0.0))
    losses = []
    for _ in range(10):
        loss = sum(net.losses(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


@pytest.mark.parametrize("architecture", ["fcos", "retinanet"])
def test_onnx_export_of_forward_export_matches_torch(tmp_path: Path, architecture: str):
    onnxruntime = pytest.importorskip("onnxruntime")
    net = tiny(architecture).eval()
    images, _ = rectangles(2, seed=5)
    path = tmp_path / "detector.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (images,), str(path), input_names=["images"], output_names=["scores", "boxes"], dynamo=False
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores, boxes = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        torch_scores, torch_boxes = net.forward_export(images)
    np.testing.assert_allclose(scores, torch_scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(boxes, torch_boxes.numpy(), atol=1e-2)


def test_offline_weights_reach_the_feature_model():
    net = build_detector(DetectConfig(image_size=(128, 96)))
    assert net.weights.startswith("offline: efficientnet-lite0")
    reference = create_backbone(ModelConfig()).model.state_dict()
    body = net.detector.backbone.body.state_dict()
    assert len(body) > 200
    for key, value in body.items():
        torch.testing.assert_close(value, reference[key], msg=key)
    spec = net.preprocess_spec
    assert spec.image_size == (96, 128) and spec.resize_mode == "letterbox"
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)  # what the lite weights expect


def test_a_checkpoint_rebuilds_the_same_detector(tmp_path: Path):
    net = tiny("retinanet", p6p7=True, head_convs=1).eval()
    checkpoint = {
        "state_dict": {f"network.{key}": value for key, value in net.state_dict().items()},
        "carid": detector_metadata(net, extra={"run_name": "x"}).to_dict(),
    }
    path = tmp_path / "best.ckpt"
    torch.save(checkpoint, path)
    loaded = load_detector(path)
    assert not loaded.training and loaded.config == net.config
    images, _ = rectangles(2)  # GroupNorm needs 2 values per group on the 1x1 P7 map
    with torch.no_grad():
        for ours, theirs in zip(loaded.forward_export(images), net.forward_export(images), strict=True):
            torch.testing.assert_close(ours, theirs)

    classifier = {**checkpoint, "carid": {**checkpoint["carid"], "extra": {}}}
    torch.save(classifier, tmp_path / "classifier.ckpt")
    with pytest.raises(DetectorError, match="not a detector checkpoint"):
        load_detector(tmp_path / "classifier.ckpt")
    wrong = {
        **checkpoint,
        "carid": {
            **checkpoint["carid"],
            "extra": {
                "task": "detect",
                "detect": {**checkpoint["carid"]["extra"]["detect"], "fpn_channels": 64},
            },
        },
    }
    torch.save(wrong, tmp_path / "wrong.ckpt")
    with pytest.raises(DetectorError, match="do not fit"):
        load_detector(tmp_path / "wrong.ckpt")
    assert is_detector_metadata(detector_metadata(net))


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="multiples of 32"):
        tiny(image_size=(100, 96))
    with pytest.raises(DetectorError, match="unknown timm model"):
        tiny(backbone="no_such_net")
    with pytest.raises(DetectorError, match="no offline weights"):
        tiny(backbone="test_efficientnet", pretrained="offline")
