"""The pipeline predictor: every car found is cropped, named and listed, largest first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carid.artifacts.pipeline import CropRule, Pipeline
from carid.runtime.detection import Detection
from carid.runtime.pipeline import PipelinePredictor, decode_photo, largest_first
from carid.runtime.results import UNKNOWN_LABEL
from tests.conftest import write_image
from tests.runtime.test_predictor import stub_predictor


@dataclass
class FakeMetadata:
    score_threshold: float = 0.4
    input_size: tuple[int, int] = (64, 48)


@dataclass
class FakeDetector:
    """Answers every photo with `boxes` given in ORIGINAL pixels, scaled to the array it is given."""

    boxes: list[tuple[float, float, float, float, float]]
    original: tuple[int, int]
    metadata: FakeMetadata = field(default_factory=FakeMetadata)
    seen: list[tuple[int, ...]] = field(default_factory=list)

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> list[Detection]:
        self.seen.append(image.shape)
        sx, sy = image.shape[1] / self.original[0], image.shape[0] / self.original[1]
        return [Detection((x1 * sx, y1 * sy, x2 * sx, y2 * sy), s) for x1, y1, x2, y2, s in self.boxes]


def pipeline_predictor(tmp_path: Path, boxes, original=(200, 100), crop=None, max_cars=20):
    identifier, backend = stub_predictor()
    pipeline = Pipeline(path=tmp_path, crop=crop or CropRule(), max_cars=max_cars)
    detector = FakeDetector(boxes, original)
    return PipelinePredictor(pipeline, detector, identifier), backend, detector  # type: ignore[arg-type]


def test_every_car_is_named_largest_first(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "street.png", size=(200, 100), seed=1)
    boxes = [(10, 10, 30, 30, 0.9), (100, 20, 180, 90, 0.6), (40, 40, 80, 80, 0.8)]
    predictor, backend, _ = pipeline_predictor(tmp_path, boxes)
    [answer] = predictor.predict([photo])
    assert answer.ok and answer.cars is not None and len(answer.cars) == 3
    expected = [[100, 20, 180, 90], [40, 40, 80, 80], [10, 10, 30, 30]]
    assert [car.box.to_list() for car in answer.cars] == expected
    assert [car.detection_score for car in answer.cars] == [0.6, 0.8, 0.9]
    # the identifier saw one crop per car, each the size of its box (margin 0)
    assert sum(len(batch) for batch in backend.batches) == 3
    assert all(car.label == answer.cars[0].label and car.image_size == (200, 100) for car in answer.cars)
    # the photo's own fields repeat the largest car's answer; the JSON lists every car
    assert answer.box == answer.cars[0].box and answer.label == answer.cars[0].label
    data = answer.to_dict()
    assert [car["detection_score"] for car in data["cars"]] == [0.6, 0.8, 0.9]
    assert all(car["source"] == str(photo) for car in data["cars"])
    assert answer.timing.detection_ms > 0 and answer.timing.inference_ms > 0


def test_a_photo_with_no_car_has_a_reason_and_no_label(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "empty.png", size=(200, 100), seed=2)
    predictor, backend, _ = pipeline_predictor(tmp_path, [])
    [answer] = predictor.predict([photo])
    assert answer.ok and answer.cars == () and answer.label is None
    assert answer.reason is not None and "no car found" in answer.reason and "0.40" in answer.reason
    assert answer.to_dict()["cars"] == [] and not backend.batches


def test_a_tiny_car_is_listed_unknown_with_the_reason(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "far.png", size=(200, 100), seed=3)
    predictor, backend, _ = pipeline_predictor(tmp_path, [(5, 5, 15, 12, 0.7), (50, 10, 150, 90, 0.9)])
    [answer] = predictor.predict([photo])
    big, tiny = answer.cars
    assert big.label != UNKNOWN_LABEL and tiny.unknown and tiny.label == UNKNOWN_LABEL
    assert "10x7 px" in tiny.reason and "too small to name" in tiny.reason
    assert sum(len(batch) for batch in backend.batches) == 1


def test_max_cars_keeps_the_largest(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "many.png", size=(200, 100), seed=4)
    boxes = [(i * 20, 0, i * 20 + 18 + i, 40, 0.5) for i in range(8)]
    predictor, _, _ = pipeline_predictor(tmp_path, boxes, max_cars=3)
    [answer] = predictor.predict([photo])
    widths = [round(car.box.x2 - car.box.x1) for car in answer.cars]
    assert widths == [25, 24, 23]


def test_a_large_photo_is_decoded_reduced_and_boxes_come_back_in_its_pixels(tmp_path: Path) -> None:
    photo = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2400, 3200, 3), dtype=np.uint8)).save(photo)
    box = (400, 300, 2000, 1500, 0.9)
    predictor, _, detector = pipeline_predictor(tmp_path, [box], original=(3200, 2400))
    [answer] = predictor.predict([photo])
    assert detector.seen[0][0] < 2400  # the detector saw a reduced decode
    assert answer.image_size == (3200, 2400)
    assert answer.box.to_list() == pytest.approx([400, 300, 2000, 1500], abs=2)


def test_unreadable_and_odd_inputs_are_answered_with_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    sliver = write_image(tmp_path / "sliver.png", size=(400, 20), seed=5)
    predictor, _, detector = pipeline_predictor(tmp_path, [(0, 0, 10, 10, 0.9)])
    broken, thin, number = predictor.predict([bad, sliver, 42])
    assert not broken.ok and "bad.jpg" in broken.error and broken.to_dict()["cars"] == []
    assert thin.ok and thin.cars == () and "aspect ratio" in thin.reason
    assert not number.ok and "unsupported input int" in number.error
    assert not detector.seen  # neither reached the detector


def test_decode_photo_and_ordering_helpers(tmp_path: Path) -> None:
    image = Image.new("RGBA", (30, 20), (10, 20, 30, 0))
    decoded = decode_photo(image, "upload")
    assert decoded.error is None and decoded.image.mode == "RGB" and decoded.original_size == (30, 20)
    ordered = largest_first([Detection((0, 0, 5, 5), 0.9), Detection((0, 0, 9, 9), 0.1)])
    assert [d.score for d in ordered] == [0.1, 0.9]


_BUILT: dict[str, Path] = {}


def tiny_pipeline_dir(factory: pytest.TempPathFactory) -> Path:
    """Once per session: a tiny FCOS detector trained on red rectangles drawn here (as
    tests/models/test_detector.py trains it), saved as a detect run, exported, and put in a pipeline
    with the tiny classifier bundle of tests/test_export.py. Its photos are in `frames/` beside it."""
    if "pipeline" not in _BUILT:
        import csv

        import torch
        import yaml

        from carid.artifacts.pipeline import build_pipeline
        from carid.data.readers import read_dataset
        from carid.export_detector import export_detector_bundle
        from tests.models.test_detector import rectangles, tiny
        from tests.test_export import tiny_bundle_dir
        from tests.test_export_detector import write_checkpoint

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(0)
            net = tiny("fcos")
            images, targets = rectangles(16)
            optimizer = torch.optim.AdamW(net.parameter_groups(0.01, 0.3, 1e-4))
            net.train()
            generator = torch.Generator().manual_seed(0)
            for _ in range(40):
                batch = torch.randperm(16, generator=generator)[:8]
                loss = sum(net.losses(images[batch], [targets[i] for i in batch]).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            net.eval()
        finally:
            torch.set_num_threads(threads)
        root = factory.mktemp("tiny-pipeline")
        frames = root / "frames"
        (frames / "images").mkdir(parents=True)
        rows = []
        for index, (image, target) in enumerate(zip(images, targets, strict=True)):
            pixels = ((image.numpy().transpose(1, 2, 0) * 0.5 + 0.5) * 255).round().clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(frames / "images" / f"frame_{index:02d}.png")
            rows += [[f"frame_{index:02d}.png", *box] for box in target["boxes"].tolist()]
        with (frames / "boxes.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["image_id", "xmin", "ymin", "xmax", "ymax"], *rows])
        table = read_dataset(frames, "csv-boxes")
        splits = ["train", "val", "test", "train"] * 4
        run = root / "runs" / "detector"
        split_table = table.with_samples(s.with_(split=n) for s, n in zip(table.samples, splits, strict=True))
        split_table.to_csv(run / "split.csv", splits=splits)
        detect = {"backbone": "test_efficientnet", "pretrained": "none", "image_size": [128, 96]}
        tree = {"task": "detect", "name": "detector", "detect": {**detect, "fpn_channels": 32}}
        (run / "config.yaml").write_text(yaml.safe_dump(tree), encoding="utf-8")
        write_checkpoint(net, run / "checkpoints" / "best.ckpt")
        detector = export_detector_bundle(run).bundle.path
        _BUILT["pipeline"] = build_pipeline(detector, tiny_bundle_dir(factory), root / "pipeline").path
    return _BUILT["pipeline"]


@pytest.mark.slow
def test_end_to_end_a_trained_detector_and_a_classifier_in_one_pipeline(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The pipeline's boxes are its detector bundle's, and each car is named as the classifier
    names its crop, through ONNX Runtime (the slim install runs the same pipeline:
    tests/test_slim_install.py)."""
    pytest.importorskip("torch")
    from carid.runtime.detection import Detector
    from carid.runtime.predictor import Predictor

    pipeline = Pipeline.load(tiny_pipeline_dir(tmp_path_factory))
    predictor = Predictor.load(pipeline.path)
    assert isinstance(predictor, PipelinePredictor) and predictor.info()["kind"] == "pipeline"
    photos = sorted((pipeline.path.parent / "frames" / "images").glob("*.png"))[:6]
    answers = predictor.predict(photos)
    detector, identifier = Detector.load(pipeline.detector), Predictor.load(pipeline.identifier)
    named = 0
    for photo, answer in zip(photos, answers, strict=True):
        assert answer.ok and answer.cars is not None
        image = Image.open(photo).convert("RGB")
        expected = largest_first(detector.detect(np.asarray(image)))
        got = np.array([car.box.to_list() for car in answer.cars]).reshape(-1, 4)
        np.testing.assert_allclose(got, np.array([d.box for d in expected]).reshape(-1, 4), atol=1e-3)
        for car in answer.cars:
            if car.top1 is None:  # too small to name: said so
                assert car.unknown and "too small to name" in (car.reason or "")
                continue
            region = CropRule().region(tuple(car.box.to_list()), image.width, image.height)
            [direct] = identifier.predict([image.crop(region)])
            assert car.top1.label == direct.top1.label
            named += 1
    assert named >= 3, "the trained detector found too few of the drawn cars"
