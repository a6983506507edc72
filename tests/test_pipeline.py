"""The main job end to end on a tiny synthetic boxed dataset: check → train → evaluate → export → predict."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from carid.cli import app
from carid.config import Config, from_dict
from carid.pipeline import answer_text, example_summary, operating_point_text, quickstart_config, run_main_job
from carid.runtime.results import ClassScore, Prediction
from tests.training.conftest import draw_boxed_dataset, tiny_config_tree


def test_quickstart_recipe_trains_the_last_stages_from_the_stage_cache() -> None:
    config = quickstart_config(None, ["train.epochs=5"])
    assert config.train.freeze == "blocks.5" and config.train.cache_features
    assert config.model.pretrained == "offline" and config.train.epochs == 5


def test_main_job_runs_every_stage(tmp_path: Path) -> None:
    data = draw_boxed_dataset(tmp_path / "cars", per_class=8)
    tree = tiny_config_tree(data, tmp_path / "unused-runs", train={"epochs": 2})
    config = from_dict(Config, tree)
    lines: list[str] = []
    result = run_main_job(data, tmp_path / "out", config, say=lines.append, progress=False)

    for name in ("data_report", "split", "run", "evaluation", "bundle"):
        assert Path(result.paths[name]).exists(), name
    assert (Path(result.paths["bundle"]) / "model.onnx").is_file()
    assert set(result.seconds) == {"check", "train", "evaluate", "export", "predict"}
    assert 0.0 <= result.metrics["test/acc"] <= 1.0
    # predictions on held-out photos, with a box in the photo's pixels
    assert result.predictions and all(p.error is None for p in result.predictions)
    assert all(p.box is not None and p.box.x2 <= 64 and p.box.y2 <= 48 for p in result.predictions)
    stages = [line.split(":")[0] for line in lines]
    assert stages[:4] == ["check", "train", "evaluate", "export"] and "predict" in stages


def test_run_command_with_a_config(tmp_path: Path, monkeypatch) -> None:
    data = draw_boxed_dataset(tmp_path / "cars", per_class=6)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_config_tree(data, tmp_path / "runs")))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--config", str(recipe), "--data", str(data), "--out", "job"])
    assert result.exit_code == 0, result.output
    assert "evaluate: test accuracy" in result.output and "bundle:" in result.output


def test_answer_text_names_the_best_guess_and_the_threshold_it_missed() -> None:
    best = ClassScore(index=3, label="Audi TTS Coupe 2012", probability=0.41)
    known = Prediction(source="a.jpg", label=best.label, probability=0.87, top_k=(best,))
    unknown = Prediction(source="b.jpg", label="unknown", probability=0.41, unknown=True, top_k=(best,))
    broken = Prediction(source="c.jpg", error="c.jpg: not an image")

    assert answer_text(known, 0.5) == "Audi TTS Coupe 2012 (87.0%)"
    assert answer_text(unknown, 0.96) == (
        "not sure: best guess Audi TTS Coupe 2012 at 41.0%, below the 96.0% threshold"
    )
    assert answer_text(broken, None) == "error: c.jpg: not an image"


def test_the_summary_counts_right_answers_and_right_best_guesses() -> None:
    audi = ClassScore(index=3, label="Audi TTS Coupe 2012", probability=0.41)
    bmw = ClassScore(index=4, label="BMW M3 Coupe 2012", probability=0.9)
    answers = [
        Prediction(source="a.jpg", label=bmw.label, probability=0.9, top_k=(bmw,)),
        Prediction(source="b.jpg", label=bmw.label, probability=0.9, top_k=(bmw,)),
        Prediction(source="c.jpg", label="unknown", probability=0.41, unknown=True, top_k=(audi,)),
        Prediction(source="d.jpg", label="unknown", probability=0.41, unknown=True, top_k=(audi,)),
    ]
    labels = [bmw.label, audi.label, audi.label, bmw.label]
    assert example_summary(answers, labels) == [
        "examples: 1 of 2 answers right; 2 not sure, 1 of them with the right best guess"
    ]
    rejection = {"coverage": 0.641, "threshold": 0.412, "answered_accuracy": 0.913}
    assert operating_point_text(rejection) == (
        "operating point: answers 64.1% of the test photos (threshold 41.2%); 91.3% of those answers right"
    )
