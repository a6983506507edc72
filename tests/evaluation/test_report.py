"""The evaluation report from hand-made predictions: figures, the page, thumbnails, escaping."""

from __future__ import annotations

import re
from dataclasses import replace
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
    confusion_zoom_figure,
    pair_examples,
    per_class_rows,
    write_evaluation_report,
    zoom_classes,
)
from carid.evaluation.report_pairs import THUMB_SIZE, thumbnail
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
    assert "true box green, predicted box red" in html  # the thumbnails have both boxes drawn
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
    assert {photo["name"] for photo in examples[0]["mistakes"]} == {"car_00.png", "car_01.png"}
    assert examples[0]["reference"]["name"] in {"car_03.png", "car_04.png", "car_05.png"}
    assert examples[0]["mistakes"][0]["uri"].startswith("data:image/jpeg;base64,")


def test_a_thumbnail_of_an_unreadable_file_is_none(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    assert thumbnail(Sample(broken, "x")) is None
    good = tmp_path / "good.png"
    Image.new("RGB", (400, 300)).save(good)
    data = thumbnail(Sample(good, "x"), [(np.array([10, 10, 200, 150]), (255, 0, 0))])
    from io import BytesIO

    size = Image.open(BytesIO(data)).size
    assert max(size) == THUMB_SIZE


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


def test_the_page_names_the_most_confused_pairs_with_counts_in_a_text_block(tmp_path: Path) -> None:
    html = write_evaluation_report(_view(tmp_path), tmp_path / "out")["report"].read_text(encoding="utf-8")
    block = html[html.index('<table class="pairs">') :]
    block = block[: block.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", block, flags=re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S) for row in rows]
    # class 0 was taken for class 1 twice (of 3), class 2 for class 3 once; neither the other way
    assert cells == [
        ["1", CLASSES[0], CLASSES[1], "2 of 3", "66.7%", "0"],
        ["2", CLASSES[2], CLASSES[3], "1 of 3", "33.3%", "0"],
    ]
    assert html.index('<table class="pairs">') < html.index("<h2>Figures</h2>")  # read before the figures


def test_the_small_confusion_matrix_writes_the_count_in_its_cells(tmp_path: Path) -> None:
    result = _view(tmp_path, with_boxes=False).result
    figure = confusion_zoom_figure(result)
    assert figure is not None
    axis = figure.axes[0]
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axis.texts}
    classes = zoom_classes(result)
    for row, true in enumerate(classes):
        for column, predicted in enumerate(classes):
            count = int(result.confusion[true, predicted])
            if count or row == column:
                assert written[(row, column)] == str(count)
            else:
                assert (row, column) not in written
    assert min(t.get_fontsize() for t in axis.texts) >= 10


def test_box_colours_are_not_named_when_no_box_is_drawn(tmp_path: Path) -> None:
    html = write_evaluation_report(_view(tmp_path, with_boxes=False), tmp_path / "out")["report"].read_text()
    assert "green" not in html and "box red" not in html  # with boxes: see the first test
    assert "<h2>Training curves</h2>" not in html  # no run folder given


def test_up_to_three_mistaken_photos_per_pair_most_confident_first(tmp_path: Path) -> None:
    view = _view(tmp_path, with_boxes=False)
    labels = np.repeat(np.arange(4), 3)
    labels[[3, 4, 5]] = 0  # class 0 now has 6 images; 5 of them taken for class 1
    predicted = labels.copy()
    predicted[[0, 1, 3, 4, 5]] = 1
    probabilities = np.full((12, 4), 0.05)
    probabilities[np.arange(12), predicted] = np.linspace(0.5, 0.85, 12)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    result = evaluate_predictions(probabilities, labels, CLASSES)
    view = EvaluationView("t", result, view.samples, labels, probabilities)
    examples = pair_examples(view)
    assert examples[0]["count"] == 5
    assert [photo["name"] for photo in examples[0]["mistakes"]] == ["car_05.png", "car_04.png", "car_03.png"]
    assert examples[0]["reference"] is None  # no image of class 1 is left in this split
    html = write_evaluation_report(view, tmp_path / "out")["report"].read_text("utf-8")
    assert "no image of this class" in html


def test_many_classes_fold_the_full_matrix_and_keep_the_readable_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_module, "FOLD_CLASSES", 3)
    html = write_evaluation_report(_view(tmp_path), tmp_path / "out")["report"].read_text("utf-8")
    folded = html[html.index("<details>") : html.index("</details>")]
    assert "Too many classes to read" in folded and "figures/confusion.png" in folded
    assert "figures/confusion_top.png" not in folded  # the small matrix stays open


def test_training_curves_of_the_run_are_embedded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("task: classify\n", encoding="utf-8")
    (run / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss,val/acc\n0,10,2.0,,\n0,10,,1.8,0.4\n1,20,1.5,,\n1,20,,1.2,0.6\n",
        encoding="utf-8",
    )
    view = replace(_view(tmp_path, with_boxes=False), run_dir=run)
    paths = write_evaluation_report(view, tmp_path / "out")  # drawn from metrics.csv
    assert paths["curves"].read_bytes().startswith(b"\x89PNG")
    html = paths["report"].read_text("utf-8")
    assert "<h2>Training curves</h2>" in html and "figures/curves.png" in html
