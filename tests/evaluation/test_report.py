"""The evaluation report from hand-made predictions: figures, the page, thumbnails, escaping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carid.data.samples import Problem, Sample, Severity
from carid.evaluation import report as report_module
from carid.evaluation.metrics import evaluate_predictions
from carid.evaluation.report import (
    EvaluationView,
    confusion_figure,
    pair_examples,
    per_class_rows,
    thumbnail,
    write_evaluation_report,
    zoom_classes,
)
from carid.taxonomy import Taxonomy

CLASSES = ("Audi A4 Sedan 2012", "Audi TT Coupe 2012", "BMW X5 SUV 2007", "BMW M3 Coupe 2012")


def _view(tmp_path: Path, with_boxes: bool = True, class_names=CLASSES) -> EvaluationView:
    """12 images, 3 per class; class 0 twice taken for class 1, class 2 once for class 3."""
    labels = np.repeat(np.arange(4), 3)
    predicted = labels.copy()
    predicted[[0, 1]] = 1
    predicted[6] = 3
    probabilities = np.full((12, 4), 0.1)
    probabilities[np.arange(12), predicted] = 0.7
    samples = []
    for row in range(12):
        path = tmp_path / "images" / f"car_{row:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (80, 60), (20 * row, 100, 150)).save(path)
        samples.append(Sample(path, class_names[labels[row]], boxes=[[10, 10, 60, 50]], width=80, height=60))
    pred_boxes = np.tile([12.0, 8.0, 58.0, 50.0], (12, 1)) if with_boxes else None
    true_boxes = np.tile([10.0, 10.0, 60.0, 50.0], (12, 1)) if with_boxes else None
    taxonomy = Taxonomy.from_class_names(class_names)
    result = evaluate_predictions(
        probabilities, labels, class_names, pred_boxes=pred_boxes, true_boxes=true_boxes, taxonomy=taxonomy
    )
    iou = np.full(12, 0.8) if with_boxes else None
    return EvaluationView(
        title="Evaluation: test",
        result=result,
        samples=samples,
        labels=labels,
        probabilities=probabilities,
        pred_boxes=pred_boxes,
        true_boxes=true_boxes,
        iou=iou,
        taxonomy=taxonomy,
        facts=[("model", "tiny <model>")],
        notes=[
            Problem(
                "unknown_class", "1 sample(s) have a label the model does not know", "data", Severity.WARNING
            )
        ],
    )


def test_the_report_writes_every_figure_and_a_self_contained_page(tmp_path: Path) -> None:
    view = _view(tmp_path)
    paths = write_evaluation_report(view, tmp_path / "out")
    for name in ("confusion", "confusion_top", "reliability", "per_class_f1", "iou"):
        assert paths[name].read_bytes().startswith(b"\x89PNG")
    html = paths["report"].read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 5
    assert "data:image/jpeg;base64," in html  # confused-pair thumbnails
    assert "tiny &lt;model&gt;" in html  # autoescaped
    assert "label the model does not know" in html
    for level in ("make", "body type", "year"):
        assert f"<td>{level}</td>" in html
    assert html.count('<tr class="weak">') == sum(
        1 for m in view.result.per_class if m.support > 0 and m.f1 < 0.5
    )


def test_figures_a_run_does_not_produce_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_evaluation_report(_view(tmp_path), out)
    assert (out / "figures" / "iou.png").exists()
    paths = write_evaluation_report(_view(tmp_path, with_boxes=False), out)
    assert "iou" not in paths and not (out / "figures" / "iou.png").exists()


def test_class_names_are_escaped_in_the_page(tmp_path: Path) -> None:
    names = ("<b>bold</b>", "plain", "a&b", "z")
    view = _view(tmp_path, with_boxes=False, class_names=names)
    html = write_evaluation_report(view, tmp_path / "out")["report"].read_text(encoding="utf-8")
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_zoom_and_pairs_follow_the_most_confused_pairs(tmp_path: Path) -> None:
    view = _view(tmp_path)
    pairs = view.result.confused_pairs
    assert [(p.true_index, p.predicted_index, p.count) for p in pairs] == [(0, 1, 2), (2, 3, 1)]
    rank = {index: position for position, index in enumerate(view.result.display_order)}
    assert zoom_classes(view.result) == sorted([0, 1, 2, 3], key=rank.__getitem__)
    examples = pair_examples(view)
    assert [(e["true_name"], e["predicted_name"], e["count"]) for e in examples] == [
        (CLASSES[0], CLASSES[1], 2),
        (CLASSES[2], CLASSES[3], 1),
    ]
    assert examples[0]["mistake_name"] in {"car_00.png", "car_01.png"}
    assert examples[0]["reference_name"] in {"car_03.png", "car_04.png", "car_05.png"}
    assert examples[0]["mistake_uri"].startswith("data:image/jpeg;base64,")


def test_a_thumbnail_of_an_unreadable_file_is_none(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    assert thumbnail(Sample(broken, "x")) is None
    good = tmp_path / "good.png"
    Image.new("RGB", (400, 300)).save(good)
    data = thumbnail(Sample(good, "x"), [(np.array([10, 10, 200, 150]), (255, 0, 0))])
    from io import BytesIO

    size = Image.open(BytesIO(data)).size
    assert max(size) == report_module.THUMB_SIZE


def test_per_class_rows_put_the_worst_first_and_absent_classes_last() -> None:
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    result = evaluate_predictions(probabilities, labels, ("b", "a", "c"))
    rows = per_class_rows(result)
    # "b": precision 1, recall 1/2 -> F1 2/3; "a": precision 2/3, recall 1 -> F1 0.8; "c": no samples
    assert [row["name"] for row in rows] == ["b", "a", "c"]
    assert [row["f1"] for row in rows[:2]] == ["0.667", "0.800"]
    assert rows[-1]["support"] == 0


def test_class_names_on_the_big_confusion_matrix_only_up_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _view(tmp_path, with_boxes=False).result
    figure = confusion_figure(result)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == [
        result.class_names[i] for i in result.display_order
    ]
    monkeypatch.setattr(report_module, "MAX_TICK_LABELS", 3)
    assert confusion_figure(result).axes[0].get_yticklabels() == []
