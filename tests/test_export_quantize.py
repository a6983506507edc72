"""Tests for carid.export_quantize: int8 bundles from a run and from a bundle, their check, and the
refusal when int8 changes more top-1 answers than the tolerance allows.

They reuse the tiny trained run and its bundle of tests/test_export.py (built once per session).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import carid.export_quantize as export_quantize
from carid.artifacts.bundle import METADATA_FILE, MODEL_FILE, Bundle, write_metadata
from carid.cli.app import app
from carid.config import Config, ExportConfig, from_dict
from carid.data.split import load_split
from carid.export import ExportError, ExportResult
from carid.export_quantize import (
    QUANTIZATION_KEY,
    PrecisionCheck,
    QuantizationError,
    QuantizeOptions,
    compare_graphs,
    precision_of,
    quantize_bundle,
)
from carid.runtime.backends import OnnxBackend
from carid.runtime.predictor import Predictor
from carid.serve.api import create_app
from tests.test_export import tiny_bundle, tiny_run  # noqa: F401  (the session-scoped fixtures)


class ForcedAnswers:
    """Another backend's outputs, except that every photo's top-1 is its label (shift 0) or the next
    class (shift 1: always wrong); `labels` in the order the photos are run."""

    def __init__(self, inner: OnnxBackend, labels: list[int], shift: int) -> None:
        self.inner, self.name, self.output_names = inner, "forced", inner.output_names
        self.labels, self.shift = labels, shift

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = {name: value.copy() for name, value in self.inner.run(batch).items()}
        logits = outputs["logits"]
        for row, label in zip(range(len(batch)), self.labels, strict=False):
            logits[row] = 0.0
            logits[row, (label + self.shift) % logits.shape[1]] = 10.0
        self.labels = self.labels[len(batch) :]
        return outputs


def _photos(bundle: Path) -> list[Path]:
    return sorted((bundle.parents[2] / "data" / "images").glob("*.png"))


def _op_types(model: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(model)).graph.node}


@pytest.mark.slow
def test_an_int8_copy_of_a_bundle_predicts_and_serves_unchanged(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "int8"
    lines: list[str] = []
    result = quantize_bundle(
        tiny_bundle, out, max_top1_drop=100.0, calibration_images=8, check_images=8, say=lines.append
    )
    assert result.bundle.path == out and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    fp32, int8 = Bundle.load(tiny_bundle).metadata, Bundle.load(out).metadata
    assert precision_of(fp32) == "fp32" and precision_of(int8) == "int8"
    assert int8.summary()["precision"] == "int8" and fp32.summary()["precision"] == "fp32"
    assert int8.class_names == fp32.class_names and int8.enrolment == fp32.enrolment
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_bundle.iterdir())
    assert "QLinearConv" in _op_types(out / MODEL_FILE)
    assert "QLinearConv" not in _op_types(tiny_bundle / MODEL_FILE)

    record = int8.extra[QUANTIZATION_KEY]
    assert record["precision"] == "int8" and record["format"] == "qoperator" and record["per_channel"]
    assert record["calibration"]["images"] == 8 and "(train)" in record["calibration"]["data"]
    check = record["check"]
    val = [s for s in load_split(tiny_bundle.parent / "split.csv").samples if s.split == "val"]
    assert check["passed"] and check["num_images"] == min(8, len(val)) and check["tolerance_points"] == 100.0
    assert 0.0 <= check["top1_agreement"] <= 1.0 and 0.0 <= check["max_probability_diff"] <= 1.0
    assert check["max_box_diff_px"] is not None and check["embedding_cosine_mean"] is not None
    assert check["accuracy_fp32"] is not None and check["num_labelled"] == check["num_images"]
    assert int8.parity == fp32.parity  # the fp32 graph's parity with PyTorch
    assert any(line.startswith("int8 check: top-1 accuracy on") for line in lines)

    photos = _photos(tiny_bundle)[:3]
    predictor = Predictor.load(out)
    assert predictor.info()["precision"] == "int8"
    answers = predictor.predict(photos, top_k=3)
    assert all(answer.error is None and answer.box is not None for answer in answers)
    client = TestClient(create_app(out))
    assert client.get("/model").json()["precision"] == "int8"
    response = client.post("/predict", files={"file": (photos[0].name, photos[0].read_bytes())})
    assert response.status_code == 200 and response.json()["label"] == answers[0].label

    with pytest.raises(ExportError, match="already exists"):
        quantize_bundle(tiny_bundle, out)
    with pytest.raises(ExportError, match="already int8"):
        quantize_bundle(out, tmp_path / "again")
    with pytest.raises(ExportError, match="its own folder"):
        quantize_bundle(tiny_bundle, tiny_bundle, overwrite=True)


@pytest.mark.slow
def test_an_int8_export_that_changes_too_many_answers_is_refused(
    tiny_bundle: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = export_quantize.compare_graphs

    def every_answer_lost(fp32, int8, photos, spec, class_names, *args):  # fp32 all right, int8 all wrong
        labels = [list(class_names).index(label) for _, label in photos]
        right, wrong = ForcedAnswers(fp32, labels, 0), ForcedAnswers(int8, labels, 1)
        return real(right, wrong, photos, spec, class_names, *args)

    monkeypatch.setattr(export_quantize, "compare_graphs", every_answer_lost)
    out = tmp_path / "int8"
    with pytest.raises(QuantizationError) as failure:
        quantize_bundle(tiny_bundle, out, max_top1_drop=10.0, calibration_images=4, check_images=4)
    check = failure.value.check
    assert (check.accuracy_fp32, check.accuracy_int8) == (1.0, 0.0) and check.num_labelled == check.num_images
    assert check.top1_drop_points == pytest.approx(100.0) and check.top1_agreement == 0.0 and not check.passed
    assert check.num_images <= 4 and check.worst_image
    message = str(failure.value)
    assert "MORE than the tolerance of 10" in message and "points lost" in message
    assert str(out) in message and "--max-top1-drop" in message
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_compare_graphs_of_a_graph_with_itself(tiny_bundle: Path) -> None:  # noqa: F811
    bundle = Bundle.load(tiny_bundle)
    backend = OnnxBackend(bundle.model_path)
    photos = [(path, path.stem.split("_")[0]) for path in _photos(tiny_bundle)[:5]]
    check = compare_graphs(
        backend, backend, photos, bundle.metadata.preprocess_spec(), bundle.metadata.class_names, "x", 0.0
    )
    assert check.passed and check.num_images == 5 and check.top1_agreement == 1.0
    assert check.max_probability_diff == 0.0 and check.max_box_diff_px == 0.0
    assert check.embedding_cosine_min == pytest.approx(1.0)
    assert check.accuracy_fp32 == check.accuracy_int8
    assert json.loads(json.dumps(check.to_dict()))["top1_agreement_loss_points"] == 0.0


def test_the_tolerance_is_on_accuracy_lost_and_on_agreement_only_without_labels() -> None:
    """int8 may change many answers while the accuracy holds: with labels, accuracy decides."""
    figures = {
        "data": "val", "num_images": 200, "top1_agreement": 0.84, "max_probability_diff": 0.3,
        "mean_probability_diff": 0.01, "max_box_diff_px": None, "embedding_cosine_min": 0.8,
        "embedding_cosine_mean": 0.95, "num_labelled": 200, "seconds_fp32": 2.0, "seconds_int8": 1.0,
        "tolerance_points": 1.0, "worst_image": "a.jpg",
    }  # fmt: skip
    held = PrecisionCheck(**figures, accuracy_fp32=0.690, accuracy_int8=0.685)
    assert held.top1_drop_points == pytest.approx(0.5) and held.passed
    assert "0.5 points lost, within the tolerance of 1" in held.describe()
    assert "top-1 agrees with fp32 on 84.0 %" in held.describe()
    assert held.to_dict()["judged_on"] == "accuracy"
    lost = PrecisionCheck(**figures, accuracy_fp32=0.690, accuracy_int8=0.645)
    assert lost.top1_drop_points == pytest.approx(4.5) and not lost.passed
    assert "MORE than the tolerance of 1" in lost.describe()
    unlabelled = PrecisionCheck(**{**figures, "num_labelled": 0}, accuracy_fp32=None, accuracy_int8=None)
    assert unlabelled.top1_drop_points == pytest.approx(16.0) and not unlabelled.passed
    assert "no labelled photos" in unlabelled.describe() and unlabelled.to_dict()["judged_on"] == "agreement"


def test_the_tolerance_comes_from_the_run_config_unless_given(tmp_path: Path) -> None:
    assert from_dict(Config, {}).export == ExportConfig()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"export": {"quantize_max_top1_drop": 2.5}}))
    assert QuantizeOptions.resolve(run).max_top1_drop == 2.5
    assert QuantizeOptions.resolve(run, max_top1_drop=0.5, calibration_images=7).calibration_images == 7
    assert QuantizeOptions.resolve(None) == QuantizeOptions()
    with pytest.raises(ExportError, match="between 0 and 100"):
        QuantizeOptions.resolve(None, max_top1_drop=-1)
    with pytest.raises(ValueError, match="quantize_max_top1_drop"):
        from_dict(Config, {"export": {"quantize_max_top1_drop": "a lot"}})


def test_carid_export_quantize_int8_of_a_bundle(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "int8"
    arguments = ["export", str(tiny_bundle), "--quantize", "int8", "--out", str(out)]
    result = CliRunner().invoke(app, [*arguments, "--calibration-images", "6", "--max-top1-drop", "100"])
    assert result.exit_code == 0, result.output
    assert "int8 check" in result.output and f"bundle: {out}" in result.output
    record = json.loads((out / METADATA_FILE).read_text())["extra"][QUANTIZATION_KEY]
    assert record["calibration"]["images"] == 6 and record["check"]["tolerance_points"] == 100.0
    assert "QLinearConv" in _op_types(out / MODEL_FILE)

    refused = CliRunner().invoke(app, [*arguments[:-2], "--quantize", "fp16", "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "expected one of int8" in refused.output


def test_an_int8_export_of_a_run_quantizes_before_model_json_is_written(
    tiny_run: Path,  # noqa: F811
    tiny_bundle: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run path: `export_bundle` (tested in test_export.py) gets a `finish` that swaps the graph
    in its staging folder; here a stand-in export hands it a copy of the tiny bundle."""
    calls: list[dict] = []

    def stand_in_export(source, say=None, finish=None, **options):
        calls.append({"source": source, **options})
        staging = tmp_path / "staging"
        shutil.copytree(tiny_bundle, staging)
        metadata = finish(staging, Bundle.load(staging).metadata)
        write_metadata(staging, metadata)
        return ExportResult(Bundle.load(staging), None, 0.0)

    monkeypatch.setattr(export_quantize, "export_bundle", stand_in_export)
    arguments = ["export", str(tiny_run), "--quantize", "int8", "--out", str(tmp_path / "int8")]
    arguments += ["--enrol-images", "0", "--calibration-images", "5", "--max-top1-drop", "100"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert calls == [{"source": tiny_run, "out": tmp_path / "int8", "overwrite": False, "enrol_images": 0}]
    metadata = Bundle.load(tmp_path / "staging").metadata
    assert precision_of(metadata) == "int8"
    assert metadata.extra[QUANTIZATION_KEY]["calibration"]["images"] == 5
    assert "QLinearConv" in _op_types(tmp_path / "staging" / MODEL_FILE)
