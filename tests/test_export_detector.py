"""Tests for carid.export_detector: a tiny real DetectorNet (torchvision FCOS on timm's
test_efficientnet, 128x96 input) exported to a detector bundle that finds what PyTorch finds.

`tiny_detector_run_dir` writes a run folder as `carid train` with `task: detect` leaves it (config,
split.csv, checkpoints/best.ckpt holding the network and its carid metadata) around a detector whose
head is re-drawn at random so that it answers boxes of several sizes with scores around the
threshold; `tiny_detector_bundle_dir` exports it once per session (the ONNX export is most of the
time: about 15 s on an idle 2-core machine).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from carid.artifacts.bundle import METADATA_FILE, MODEL_FILE
from carid.artifacts.checkpoint import CHECKPOINT_KEY
from carid.artifacts.detector import DETECTOR_FORMAT, DetectorBundle
from carid.artifacts.run_dir import locate
from carid.cli import app
from carid.config import DetectConfig
from carid.data.readers import read_dataset
from carid.data.split import load_split
from carid.export_detector import (
    DetectorParityError,
    check_detector_parity,
    export_detector_bundle,
    is_detector_source,
)
from carid.models.detector import NETWORK_PREFIX, DetectorNet, build_detector, detector_metadata
from carid.runtime.backends import OnnxBackend, file_sha256
from carid.runtime.detection import (
    Detector,
    PostProcess,
    TorchDetectorBackend,
    is_detector_model,
    network_detections,
)
from tests.conftest import shared_dataset
from tests.training.conftest import draw_boxed_dataset

TINY: dict[str, Any] = {
    "backbone": "test_efficientnet",
    "pretrained": "none",
    "image_size": (128, 96),
    "fpn_channels": 32,
    "head_convs": 1,
    "score_threshold": 0.45,
    "min_box_side": 2.0,
}
_BUILT: dict[str, Path] = {}


def tiny_detector(architecture: str = "fcos", seed: int = 0) -> DetectorNet:
    """A tiny detector whose head is re-drawn (seeded) so that it answers varied boxes and scores."""
    torch.manual_seed(seed)
    net = build_detector(DetectConfig(architecture=architecture, **TINY))  # type: ignore[arg-type]
    with torch.no_grad():
        for name, parameter in net.detector.head.named_parameters():
            if parameter.dim() == 4:
                parameter.normal_(0.0, 0.05)
            elif "cls_logits" in name:
                parameter.fill_(-1.0)
            elif "bbox_reg" in name and architecture == "fcos":
                parameter.fill_(1.0)  # boxes reach about one stride each way
    return net.eval()


def write_checkpoint(net: DetectorNet, path: Path) -> Path:
    """The checkpoint `load_detector` reads: carid metadata and the LightningModule's state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {NETWORK_PREFIX + key: value for key, value in net.state_dict().items()}
    torch.save({CHECKPOINT_KEY: detector_metadata(net).to_dict(), "state_dict": state}, path)
    return path


def tiny_detector_run_dir(factory: pytest.TempPathFactory) -> Path:
    """A detect run folder around `tiny_detector()`, with 6 drawn photos split train/val/test."""
    if "run" not in _BUILT:
        root = factory.mktemp("tiny-detector")
        table = read_dataset(draw_boxed_dataset(root / "data", per_class=2, size=(160, 100)))
        splits = ["train", "val", "test"] * 2
        run = root / "runs" / "tiny-detector"
        table.with_samples(s.with_(split=name) for s, name in zip(table.samples, splits, strict=True)).to_csv(
            run / "split.csv", splits=splits
        )
        tree = {"task": "detect", "name": "tiny-detector", "detect": {**TINY, "image_size": [128, 96]}}
        (run / "config.yaml").write_text(yaml.safe_dump(tree), encoding="utf-8")
        write_checkpoint(tiny_detector(), run / "checkpoints" / "best.ckpt")
        _BUILT["run"] = run
    return _BUILT["run"]


def tiny_detector_bundle_dir(factory: pytest.TempPathFactory) -> Path:
    """The tiny detector run exported to RUN/export, once per session."""
    if "bundle" not in _BUILT:
        _BUILT["bundle"] = export_detector_bundle(tiny_detector_run_dir(factory)).bundle.path
    return _BUILT["bundle"]


@pytest.fixture(scope="session")
def detector_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_detector_run_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def detector_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_detector_bundle_dir(tmp_path_factory)


def held_out_photos(run: Path) -> list[Path]:
    return sorted(Path(s.path) for s in load_split(run / "split.csv").samples if s.split in ("val", "test"))


@pytest.mark.parametrize("architecture", ["fcos", "retinanet"])
def test_numpy_postprocessing_finds_what_torchvision_finds(architecture: str) -> None:
    net = tiny_detector(architecture, seed=1)
    images = torch.randn(3, 3, 96, 128)
    expected = net.detect(images)
    scores, boxes = (tensor.detach().numpy() for tensor in net.forward_export(images))
    settings = PostProcess(0.45, net.config.nms_iou, net.config.max_detections, net.config.min_box_side)
    for row in range(3):
        found_boxes, found_scores = network_detections(scores[row], boxes[row], (128, 96), settings)
        assert len(found_scores) == len(expected[row]["scores"]) > 0
        np.testing.assert_allclose(found_boxes, expected[row]["boxes"].numpy(), atol=1e-4)
        np.testing.assert_allclose(found_scores, expected[row]["scores"].numpy(), atol=1e-6)


@pytest.mark.slow
def test_export_writes_a_parity_checked_detector_bundle(detector_run: Path, detector_bundle: Path) -> None:
    assert detector_bundle == detector_run / "export"
    assert sorted(p.name for p in detector_bundle.iterdir()) == [METADATA_FILE, MODEL_FILE]
    assert not [p for p in detector_run.iterdir() if p.name.startswith(".export")], "staging folder left"
    data = json.loads((detector_bundle / METADATA_FILE).read_text(encoding="utf-8"))
    assert data["format"] == DETECTOR_FORMAT and data["class_names"] == ["car"]
    metadata = DetectorBundle.load(detector_bundle).metadata
    checkpoint = detector_run / "checkpoints" / "best.ckpt"
    assert (metadata.score_threshold, metadata.nms_iou, metadata.max_detections, metadata.min_box_side) == (
        0.45,
        0.5,
        100,
        2.0,
    )
    assert metadata.input_size == (128, 96) and metadata.preprocess["resize_mode"] == "letterbox"
    assert metadata.model_config["architecture"] == "fcos" and not metadata.dynamic_batch
    assert metadata.source_checkpoint == str(checkpoint.resolve())
    assert metadata.source_sha256 == file_sha256(checkpoint) and metadata.created and metadata.opset
    assert {"carid", "torch", "onnxruntime"} <= set(metadata.versions)
    parity = metadata.parity
    assert parity is not None and parity["passed"] is True
    assert {image["source"] for image in parity["images"]} == {str(p) for p in held_out_photos(detector_run)}
    assert parity["detections_matched"] == parity["detections_torch"] == parity["detections_onnx"] > 0
    assert parity["max_score_diff"] <= 1e-3 and parity["max_box_diff_px"] <= 1.0
    assert parity["min_matched_iou"] >= 0.99


@pytest.mark.slow
def test_the_bundle_finds_the_boxes_pytorch_finds(detector_run: Path, detector_bundle: Path) -> None:
    bundle = Detector.load(detector_bundle)
    reference = Detector.from_checkpoint(detector_run / "checkpoints" / "best.ckpt")
    photos = [
        np.asarray(Image.open(path).convert("RGB"))
        for path in sorted((detector_run.parent.parent / "data" / "images").glob("*.png"))
    ]
    photos.append(np.asarray(Image.new("RGB", (300, 90), (128, 128, 128))))  # another shape, no texture
    found, expected = bundle.detect_batch(photos), reference.detect_batch(photos)
    assert sum(map(len, expected)) > len(photos)
    for ours, theirs in zip(found, expected, strict=True):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert np.abs(np.subtract(a.box, b.box)).max() < 0.05 and abs(a.score - b.score) < 1e-4
            assert 0 <= a.box[0] < a.box[2] <= 300 and a.score > 0.45


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_parity_check_passes_on_real_road_frames(
    detector_run: Path, detector_bundle: Path, shared_datasets: Path
) -> None:
    frames = sorted((shared_dataset(shared_datasets, "car-frames") / "images").glob("*.jpg"))[::48]
    torch_backend = TorchDetectorBackend.from_checkpoint(detector_run / "checkpoints" / "best.ckpt")
    metadata = torch_backend.metadata
    report = check_detector_parity(
        torch_backend,
        OnnxBackend(detector_bundle / MODEL_FILE),
        frames,
        metadata.preprocess_spec(),
        PostProcess.of(metadata),
        count=len(frames),
        data="car-frames",
    )
    assert report.passed and len(report.images) == len(frames) == 8, report.describe()
    assert report.to_dict()["detections_matched"] > 0


class ShiftedScores:
    """Another backend's outputs with every score of the first photo raised by `shift`."""

    name = "shifted"

    def __init__(self, inner: OnnxBackend, shift: float) -> None:
        self.inner, self.shift = inner, shift
        self.output_names = inner.output_names
        self.input_shape = inner.input_shape

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = {name: value.copy() for name, value in self.inner.run(batch).items()}
        outputs["scores"][0] = np.clip(outputs["scores"][0] + self.shift, 0, 1)
        return outputs


@pytest.mark.slow
def test_a_graph_that_disagrees_fails_the_parity_check_and_writes_nothing(
    detector_run: Path, detector_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_backend = TorchDetectorBackend.from_checkpoint(detector_run / "checkpoints" / "best.ckpt")
    spec = torch_backend.metadata.preprocess_spec()
    settings = PostProcess.of(torch_backend.metadata)
    onnx = OnnxBackend(detector_bundle / MODEL_FILE)
    photos = held_out_photos(detector_run)
    report = check_detector_parity(torch_backend, ShiftedScores(onnx, 0.01), photos, spec, settings)  # type: ignore[arg-type]
    assert not report.passed and report.worst is not None and report.worst.source == str(photos[0])
    assert [image.passed for image in report.images] == [False] + [True] * (len(photos) - 1)
    assert report.worst.score_diff == pytest.approx(0.01, abs=1e-5) and "FAILED on 1 of" in report.describe()

    # the export: the graph of the session's bundle, read through the shifting backend
    import carid.export_detector as exporter

    monkeypatch.setattr(
        exporter,
        "export_detector_onnx",
        lambda net, path, *a, **k: shutil.copy(detector_bundle / MODEL_FILE, path),
    )
    monkeypatch.setattr(exporter, "OnnxBackend", lambda path, *a, **k: ShiftedScores(OnnxBackend(path), 0.01))
    out = tmp_path / "detector"
    with pytest.raises(DetectorParityError, match="detector parity check FAILED") as raised:
        export_detector_bundle(detector_run, out=out)
    assert not out.exists() and not list(tmp_path.iterdir())
    assert "was not written to" in str(raised.value)


def test_carid_export_routes_detect_runs_to_the_detector_export(
    detector_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert is_detector_source(detector_run) and is_detector_source(detector_run / "checkpoints" / "best.ckpt")
    assert is_detector_model(locate(detector_run))
    lone = shutil.copy(detector_run / "checkpoints" / "best.ckpt", tmp_path / "lone.ckpt")
    assert is_detector_source(lone)  # outside a run: its own metadata says task detect
    classifier = tmp_path / "classifier-run"
    (classifier / "checkpoints").mkdir(parents=True)
    (classifier / "config.yaml").write_text("task: classify\n", encoding="utf-8")
    (classifier / "checkpoints" / "best.ckpt").write_bytes(b"")
    assert not is_detector_source(classifier) and not is_detector_source(tmp_path / "nothing")

    import carid.export as classifier_export
    import carid.export_detector as exporter

    calls: list[tuple[str, Path, dict[str, Any]]] = []

    def record(kind: str):
        def export(source: Path, **options: Any) -> Any:
            calls.append((kind, Path(source), options))
            raise exporter.ExportError("stop here")

        return export

    monkeypatch.setattr(exporter, "export_detector_bundle", record("detector"))
    monkeypatch.setattr(classifier_export, "export_bundle", record("classifier"))
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(detector_run), "--parity-images", "3"])
    assert result.exit_code == 2 and "stop here" in result.output
    assert runner.invoke(app, ["export", str(classifier)]).exit_code == 2
    assert [(kind, source) for kind, source, _ in calls] == [
        ("detector", detector_run),
        ("classifier", classifier),
    ]
    assert calls[0][2]["parity_images"] == 3 and "enrol_images" not in calls[0][2]


def test_a_checkpoint_that_is_not_a_detector_is_named(tmp_path: Path) -> None:
    net = tiny_detector()
    path = write_checkpoint(net, tmp_path / "broken.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[CHECKPOINT_KEY] = replace(detector_metadata(net), extra={}).to_dict()
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="not a detector checkpoint"):
        Detector.from_checkpoint(path)


def test_export_at_another_input_size_and_threshold(detector_run: Path, tmp_path: Path) -> None:
    """`carid export --input-size 96x64 --score-threshold 0.4`: the bundle letterboxes into 96x64, keeps
    the training size in extra, stores the threshold, passes its parity check at that size and finds
    what the PyTorch network finds on the same smaller input."""
    result = CliRunner().invoke(
        app,
        ["export", str(detector_run), "--out", str(tmp_path / "small"), "--input-size", "96x64",
         "--score-threshold", "0.4", "--parity-images", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = Detector.load(tmp_path / "small")
    assert bundle.metadata.input_size == (96, 64) and bundle.metadata.score_threshold == 0.4
    assert bundle.metadata.extra["trained_input_size"] == [128, 96]
    assert bundle.metadata.parity["passed"] is True
    for size, problem in (("100x64", "multiples of 32"), ("96", "look like 512x320")):
        bad = CliRunner().invoke(
            app, ["export", str(detector_run), "--out", str(tmp_path / size), "--input-size", size]
        )
        assert bad.exit_code == 2 and problem in bad.output, bad.output
    bad = CliRunner().invoke(
        app, ["export", str(detector_run), "--out", str(tmp_path / "t"), "--score-threshold", "1.5"]
    )
    assert bad.exit_code == 2 and "between 0 and 1" in bad.output
