"""`evaluate` on a tiny trained run: outputs, accuracy against a direct computation, data rules."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from carid.artifacts.run_dir import locate
from carid.config import Config, from_dict
from carid.data.samples import Sample, SampleTable
from carid.data.split import load_split
from carid.evaluation.calibration import TEMPERATURE_BOUNDS
from carid.evaluation.evaluate import EvaluationError, default_out_dir, evaluate
from carid.evaluation.evaluation_data import is_split_csv, load_evaluation_data, load_run_config
from carid.models.checkpoint import load_for_inference
from carid.preprocess import load_and_preprocess
from carid.training.fit import train
from tests.training.conftest import draw_boxed_dataset, tiny_config_tree


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of the tiny VGG on 24 drawn images (3 classes x 8, one box each)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = draw_boxed_dataset(root / "data")
    config = from_dict(Config, tiny_config_tree(data, root / "runs", name="tiny", train={"epochs": 2}))
    return train(config, progress=False).run_dir


def _direct_predictions(run_dir: Path, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class index [N], true class index [N]) from the checkpoint, without carid.evaluation."""
    network, metadata = load_for_inference(run_dir / "checkpoints" / "best.ckpt")
    spec = metadata.preprocess_spec()
    batch = np.stack([load_and_preprocess(sample.path, spec)[0] for sample in samples])
    with torch.inference_mode():
        logits = network(torch.from_numpy(batch)).logits.numpy()
    truth = np.array([metadata.class_names.index(sample.label) for sample in samples])
    return logits.argmax(axis=1), truth


def test_evaluating_a_run_writes_json_html_figures_and_predictions(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    report = evaluate(tiny_run, out_dir=out)

    test_samples = [s for s in load_split(tiny_run / "split.csv").samples if s.split == "test"]
    predicted, truth = _direct_predictions(tiny_run, test_samples)
    assert report.accuracy == pytest.approx(float((predicted == truth).mean()))
    assert report.data["origin"] == "run split"
    assert report.counts["samples"] == len(test_samples) == report.result.num_labeled

    saved = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert saved["split"] == "test"
    assert saved["result"]["top_k_accuracy"]["top1"] == pytest.approx(report.accuracy)
    assert saved["model"]["backbone"] == "carid_vgg"
    assert saved["counts"]["scored"] == len(test_samples)
    assert set(saved["timing"]) >= {"load_model", "load_data", "scoring", "metrics", "report", "total"}
    assert saved["result"]["boxes"]["count"] == len(test_samples)  # every drawn image has a box

    for name in ("confusion", "confusion_top", "reliability", "per_class_f1", "iou"):
        if name == "confusion_top" and report.accuracy == 1.0:
            continue  # nothing confused, nothing to zoom into
        assert (out / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and 'src="figures/' not in html  # self-contained
    for name in report.result.class_names:
        assert name in html

    with (out / "predictions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == [str(s.path) for s in test_samples]
    names = report.result.class_names
    assert [row["predicted"] for row in rows] == [names[i] for i in predicted]
    assert all(row["iou"] for row in rows)


def test_an_unknown_class_in_the_data_is_reported_and_left_out_of_the_class_metrics(
    tiny_run: Path, tmp_path: Path
) -> None:
    split = load_split(tiny_run / "split.csv")
    known = [s for s in split.samples if s.split == "test"]
    extra = Sample(known[0].path, "purple", boxes=known[0].boxes, split="test", source="extra row 1")
    table = SampleTable([*known, extra], [*split.classes, "purple"], split.root, "test")

    report = evaluate(tiny_run, table, out_dir=tmp_path / "eval")
    assert report.counts["unknown_label"] == 1
    assert report.result.num_samples == len(known) + 1
    assert report.result.num_labeled == len(known)
    predicted, truth = _direct_predictions(tiny_run, known)
    assert report.accuracy == pytest.approx(float((predicted == truth).mean()))
    assert report.result.boxes.count == len(known) + 1  # its box is still scored
    notes = [note for note in report.notes if note.kind == "unknown_class"]
    assert len(notes) == 1 and "'purple' (1)" in notes[0].message
    assert [p.source for p in report.sample_problems] == ["extra row 1"]
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text(encoding="utf-8"))
    assert saved["sample_problems"][0]["kind"] == "unknown_class"
    assert "purple" in (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")


def test_data_of_a_subset_of_classes_is_fine(tiny_run: Path) -> None:
    split = load_split(tiny_run / "split.csv")
    reds = SampleTable([s for s in split.samples if s.label == "red"], ["red"], split.root, "test")
    report = evaluate(tiny_run, reds, split="all", write=False)
    assert report.result.num_labeled == len(reds)
    assert report.result.num_classes == 3  # the model's classes, not the data's
    assert any(note.kind == "class_without_samples" for note in report.notes)


def test_no_label_the_model_knows_is_an_error_naming_the_labels(tiny_run: Path) -> None:
    sample = load_split(tiny_run / "split.csv").samples[0]
    table = SampleTable([sample.with_(label="cat")], ["cat"], sample.path.parent, "test")
    with pytest.raises(EvaluationError, match=r"model classes: .*red.*data labels: cat"):
        evaluate(tiny_run, table, split="all", write=False)


def test_fit_calibration_uses_the_validation_split_and_writes_calibration_json(
    tiny_run: Path, tmp_path: Path
) -> None:
    report = evaluate(tiny_run, out_dir=tmp_path / "eval", fit_calibration=True, target_precision=0.9)
    calibration = report.calibration
    val = [s for s in load_split(tiny_run / "split.csv").samples if s.split == "val"]
    assert calibration is not None and calibration.num_val == len(val)
    assert TEMPERATURE_BOUNDS[0] <= calibration.temperature <= TEMPERATURE_BOUNDS[1]
    assert calibration.val_nll_after <= calibration.val_nll_before + 1e-9
    assert calibration.threshold.target_precision == 0.9
    assert calibration.evaluated is not None
    saved = json.loads((tmp_path / "eval" / "calibration.json").read_text(encoding="utf-8"))
    assert saved["temperature"] == pytest.approx(calibration.temperature)
    assert saved["unknown_threshold"] == pytest.approx(calibration.threshold.threshold)


def test_scores_on_the_val_split_of_a_refit_run_are_flagged(tiny_run: Path, caplog) -> None:
    run_config = load_run_config(tiny_run)
    refit = replace(run_config, train=replace(run_config.train, fit_on_val=True))
    data = Path(run_config.data.path)
    with caplog.at_level(logging.WARNING, logger="carid.evaluation.evaluate"):
        load_evaluation_data(data, "test", run_dir=tiny_run, run_config=refit)
        load_evaluation_data(data, "val", run_dir=tiny_run, run_config=run_config)
        assert not caplog.records
        load_evaluation_data(data, "val", run_dir=tiny_run, run_config=refit)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tiny_run} was trained on its val images too (train.fit_on_val): scores on 'val', and a "
        "calibration or ensemble weights fitted on val, are optimistic"
    ]


def test_the_data_rules(tiny_run: Path, tmp_path: Path) -> None:
    location = locate(tiny_run)
    split_csv = tiny_run / "split.csv"
    assert is_split_csv(split_csv) and not is_split_csv(tiny_run / "config.yaml")
    counts = {name: sum(s.split == name for s in load_split(split_csv).samples) for name in ("val", "test")}

    from_csv = load_evaluation_data(split_csv, "val")
    assert from_csv.origin == "split csv" and len(from_csv.samples) == counts["val"]

    run_config = load_run_config(location.run_dir)
    same_dataset = load_evaluation_data(
        Path(run_config.data.path), "test", run_dir=location.run_dir, run_config=run_config
    )
    assert same_dataset.origin == "run split" and len(same_dataset.samples) == counts["test"]

    other = draw_boxed_dataset(tmp_path / "other", per_class=4, seed=3)
    everything = load_evaluation_data(other, "all", run_dir=location.run_dir, run_config=run_config)
    assert everything.origin == "dataset" and len(everything.samples) == 12
    test_part = load_evaluation_data(other, "test", run_dir=location.run_dir, run_config=run_config)
    assert 0 < len(test_part.samples) < 12 and {s.split for s in test_part.samples} == {"test"}

    with pytest.raises(EvaluationError, match="split 'dev' is not one of"):
        load_evaluation_data(split_csv, "dev")
    with pytest.raises(EvaluationError, match="no evaluation data"):
        load_evaluation_data(None, "test")
    unsplit = SampleTable(list(load_split(split_csv).samples[:2]), ["red"], tmp_path, "test")
    unsplit.samples = [s.with_(split=None) for s in unsplit.samples]
    with pytest.raises(EvaluationError, match=r"no 'test' samples \(it has: none 2\)"):
        load_evaluation_data(unsplit, "test")


def test_default_output_folders(tiny_run: Path) -> None:
    location = locate(tiny_run)
    assert default_out_dir(location, "test", None) == location.run_dir / "evaluation" / "test"
    cars = default_out_dir(location, "all", Path("/data/cars"))
    assert cars == location.run_dir / "evaluation" / "cars-all"


def test_a_new_dataset_is_read_once_for_all_its_images_and_the_validation_calibration(
    tiny_run: Path, tmp_path: Path
) -> None:
    other = draw_boxed_dataset(tmp_path / "other", per_class=4, seed=5)
    report = evaluate(tiny_run, other, split="all", fit_calibration=True, write=False)
    assert report.data["origin"] == "dataset" and report.counts["samples"] == 12
    val = load_evaluation_data(other, "val", run_config=load_run_config(tiny_run))
    assert report.calibration is not None and report.calibration.num_val == len(val.samples) > 0
