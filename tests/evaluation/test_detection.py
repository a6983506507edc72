"""Tests for carid.evaluation.detection: AP by COCO's definition on cases worked out by hand, the
counts at the operating threshold (recall, car-free false positives), identity accuracy, the
samples figure and `carid evaluate` on a detector bundle (the fake ONNX detector of
tests/runtime/test_detection.py, whose answers are known)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carid.data.samples import Sample, SampleTable
from carid.evaluation.detection import (
    AP_SCORE_FLOOR,
    PhotoDetections,
    detection_metrics,
    evaluate_detector,
    match,
    render_detection_samples,
)
from carid.evaluation.evaluate import evaluate
from carid.evaluation.scoring import EvaluationError
from carid.runtime.detection import Detector
from carid.training.detection import EVAL_SCORE_THRESHOLD
from tests.runtime.test_detection import write_fake_detector


def sample(name: str, boxes: list[list[float]], labels: tuple[str, ...] = ()) -> Sample:
    return Sample(
        Path(name),
        label=None,
        boxes=np.array(boxes, dtype=float).reshape(-1, 4),
        box_labels=labels or ("car",) * len(boxes),
    )


def found(name: str, boxes: list[list[float]], scores: list[float], labels: tuple[str, ...] | None = None):
    return PhotoDetections(name, np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores), labels)


def test_perfect_predictions_score_ap_1() -> None:
    samples = [sample("a.jpg", [[0, 0, 100, 100], [200, 0, 260, 50]]), sample("b.jpg", [[10, 10, 40, 30]])]
    predictions = [
        found("a.jpg", [[200, 0, 260, 50], [0, 0, 100, 100]], [0.8, 0.9]),
        found("b.jpg", [[10, 10, 40, 30]], [0.7]),
    ]
    metrics = detection_metrics(samples, predictions, score_threshold=0.5)
    assert (metrics.ap50, metrics.ap, metrics.ap75) == (
        pytest.approx(1.0),
        pytest.approx(1.0),
        pytest.approx(1.0),
    )
    assert (metrics.recall, metrics.precision, metrics.mean_matched_iou) == (1.0, 1.0, 1.0)
    assert (metrics.num_true_cars, metrics.num_detections, metrics.false_positives) == (3, 3, 0)
    assert metrics.num_car_free == 0 and metrics.false_positives_per_car_free_photo is None
    assert metrics.identity_accuracy is None and json.loads(json.dumps(metrics.to_dict()))["ap50"] == 1.0


def test_a_shifted_box_scores_lower() -> None:
    truth = [sample("a.jpg", [[0, 0, 100, 100]])]
    loose = detection_metrics(truth, [found("a.jpg", [[0, 0, 100, 72]], [0.9])], 0.5)  # IoU 0.72
    # matched at IoU 0.50, 0.55, 0.60, 0.65, 0.70 of COCO's ten thresholds: AP@[.5:.95] = 0.5
    assert (loose.ap50, loose.ap, loose.ap75) == (pytest.approx(1.0), pytest.approx(0.5), pytest.approx(0.0))
    assert loose.recall == 1.0 and loose.mean_matched_iou == pytest.approx(0.72)
    off = detection_metrics(truth, [found("a.jpg", [[0, 0, 100, 45]], [0.9])], 0.5)  # IoU 0.45
    assert (off.ap50, off.ap, off.recall, off.precision, off.false_positives) == (0.0, 0.0, 0.0, 0.0, 1)


def test_ap_ranks_every_detection_and_recall_counts_only_those_above_the_threshold() -> None:
    truth = [sample("a.jpg", [[0, 0, 50, 50], [100, 100, 150, 150]])]
    predictions = [
        found("a.jpg", [[0, 0, 50, 50], [300, 300, 350, 350], [100, 100, 150, 150]], [0.9, 0.8, 0.3])
    ]
    metrics = detection_metrics(truth, predictions, score_threshold=0.5)
    # ranked: hit (P 1, R .5), miss (P .5), hit (P 2/3, R 1): 101-point interpolated precision is 1
    # up to recall 0.5 (51 points) and 2/3 above it (50 points)
    assert metrics.ap50 == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101, abs=1e-6)
    assert (metrics.recall, metrics.precision, metrics.num_detections, metrics.false_positives) == (
        0.5,
        0.5,
        2,
        1,
    )


def test_false_positives_on_car_free_photos() -> None:
    samples = [sample("car.jpg", [[0, 0, 10, 10]]), sample("free1.jpg", []), sample("free2.jpg", [])]
    predictions = [
        found("car.jpg", [[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.6]),
        found("free1.jpg", [[1, 1, 5, 5], [20, 20, 30, 30], [40, 40, 50, 50]], [0.8, 0.7, 0.4]),
        found("free2.jpg", [[1, 1, 5, 5]], [0.45]),
    ]
    metrics = detection_metrics(samples, predictions, score_threshold=0.5)
    assert (metrics.num_car_photos, metrics.num_car_free) == (1, 2)
    assert (metrics.false_positives, metrics.car_free_false_positives) == (3, 2)
    assert metrics.false_positives_per_car_free_photo == 1.0 and metrics.car_free_clean_share == 0.5
    strict = detection_metrics(samples, predictions, score_threshold=0.75)
    assert strict.false_positives_per_car_free_photo == 0.5 and strict.car_free_clean_share == 0.5
    assert strict.ap50 == metrics.ap50  # AP does not depend on the operating threshold
    assert AP_SCORE_FLOOR == EVAL_SCORE_THRESHOLD  # AP ranks what the training's validation mAP ranks


def test_identity_accuracy_of_matched_cars() -> None:
    truth = [
        sample(
            "a.jpg",
            [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]],
            ("Audi A4", "BMW X5", "car", "Fiat 500"),
        )
    ]
    predictions = [
        found(
            "a.jpg",
            [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
            [0.9, 0.8, 0.7],
            ("Audi A4", "Audi A4", "Ford"),
        )
    ]
    metrics = detection_metrics(truth, predictions, 0.5)
    # the generic "car" box has no identity; the Fiat is missed: 1 right of 2 identified found cars
    assert (metrics.identity_checked, metrics.identity_correct, metrics.identity_accuracy) == (2, 1, 0.5)
    assert metrics.recall == 0.75
    assert detection_metrics(truth, [found("a.jpg", [[0, 0, 10, 10]], [0.9])], 0.5).identity_accuracy is None


def test_matching_is_greedy_by_score_and_misaligned_inputs_are_refused() -> None:
    pairs = match(np.array([[0, 0, 10, 10], [0, 0, 10, 9]], dtype=float), np.array([[0, 0, 10, 9.5]]))
    assert [(p, t) for p, t, _ in pairs] == [(0, 0)]  # the first (best) takes the box; the second gets none
    with pytest.raises(EvaluationError, match="2 photos but 1 detection lists"):
        detection_metrics([sample("a.jpg", []), sample("b.jpg", [])], [found("a.jpg", [], [])], 0.5)
    with pytest.raises(EvaluationError, match=r"detections for b\.jpg given in the place of a\.jpg"):
        detection_metrics([sample("a.jpg", [])], [found("b.jpg", [], [])], 0.5)
    with pytest.raises(EvaluationError, match="2 boxes, 1 scores"):
        found("a.jpg", [[0, 0, 1, 1], [0, 0, 2, 2]], [0.5])


def _photo(path: Path, size: tuple[int, int] = (192, 128)) -> Path:
    Image.new("RGB", size, (90, 90, 90)).save(path)
    return path


def test_the_samples_figure_draws_true_and_predicted_boxes(tmp_path: Path) -> None:
    path = _photo(tmp_path / "a.png", (320, 160))
    png = render_detection_samples(
        [Sample(path, None, np.array([[10, 10, 100, 100]]))],
        [found(str(path), [[150, 40, 300, 150]], [0.8])],
        0.5,
    )
    assert png is not None
    sheet = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert sheet.shape == (240 + 16, 3 * 320, 3)  # one row of three 320x240 tiles, a name below each
    # the photo fills the tile's width (centred vertically: 40 px above): true box green, detection red
    assert tuple(sheet[40 + 30, 10]) == (0, 170, 0) and tuple(sheet[40 + 145, 300]) == (220, 30, 30)
    assert tuple(sheet[40 + 30, 5]) == (90, 90, 90)  # the photo itself beside the box
    small = _photo(tmp_path / "small.png", (160, 80))  # enlarged to fill the tile: boxes twice as far
    png = render_detection_samples(
        [Sample(small, None, np.array([[5, 15, 50, 50]]))], [found(str(small), [], [])], 0.5
    )
    assert png is not None
    assert tuple(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[40 + 60, 10]) == (0, 170, 0)
    assert (
        render_detection_samples(
            [Sample(tmp_path / "gone.png", None)], [found(str(tmp_path / "gone.png"), [], [])], 0.5
        )
        is None
    )


def test_evaluate_dispatches_a_detector_bundle_and_writes_its_report(tmp_path: Path) -> None:
    # the fake answers the same boxes for every photo: 2 cars at 0.9 and 0.7, and the whole input at 0.2
    bundle = write_fake_detector(
        tmp_path / "detector", [[20, 10, 40, 30], [60, 20, 90, 50], [0, 0, 96, 64]], [0.9, 0.7, 0.2]
    )
    cars = _photo(tmp_path / "cars.png")
    free = _photo(tmp_path / "free.png")
    table = SampleTable(
        [
            Sample(cars, None, np.array([[40, 20, 80, 60], [120, 40, 180, 100]]), split="test"),
            Sample(free, None, split="test"),
            Sample(tmp_path / "missing.png", None, split="test"),
        ],
        [],
        tmp_path,
        "table",
    )
    report = evaluate(bundle, table, split="test", out_dir=tmp_path / "out")
    metrics = report.metrics  # type: ignore[union-attr]
    assert (metrics.num_photos, metrics.recall, metrics.false_positives_per_car_free_photo) == (2, 1.0, 2.0)
    assert metrics.car_free_clean_share == 0.0 and metrics.score_threshold == 0.5
    direct = Detector.load(bundle).detect_batch([np.asarray(Image.open(p)) for p in (cars, free)], 0.05)
    expected = detection_metrics(
        list(report.samples),
        [PhotoDetections.of(p, d) for p, d in zip((cars, free), direct, strict=True)],
        0.5,
    )
    assert metrics == expected and 0 < metrics.ap50 < 1
    assert [note.kind for note in report.notes] == ["unreadable_image"]
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text(encoding="utf-8"))
    assert saved["task"] == "detect" and saved["result"]["recall"] == 1.0
    rows = list(csv.DictReader((tmp_path / "out" / "detections.csv").open(encoding="utf-8")))
    assert sorted(row["outcome"] for row in rows) == ["false_positive", "false_positive", "found", "found"]
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert (
        "AP@0.5" in page and "false positives per car-free photo" in page and "data:image/png;base64" in page
    )
    assert (tmp_path / "out" / "figures" / "detections.png").is_file()
    lines = report.summary_lines()
    assert (
        "2 photos (1 with 2 cars, 1 without)" in lines[0] and "recall at 0.5 (IoU >= 0.5) 1.0000" in lines[1]
    )
    with pytest.raises(EvaluationError, match="are for classifiers"):
        evaluate(bundle, table, split="test", tta="hflip", write=False)
    strict = evaluate_detector(bundle, table, split="test", score_threshold=0.8, write=False)
    assert strict.metrics.recall == 0.5 and strict.metrics.false_positives_per_car_free_photo == 1.0
