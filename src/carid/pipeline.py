"""The main job, `carid run`: check → train (a short CPU schedule) → evaluate → export → predict.

Each stage is the library function its own command calls (`inspect_dataset`, `train`, `evaluate`,
`export_bundle`, `Predictor`), run in order on one dataset with one split, so the main job is a
worked example of the whole tool and its outputs are the same files the commands write. The
training recipe is `carid/recipes/quickstart.yaml` (a frozen backbone trained from cached
features); `--config` replaces it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from carid.config import Config, load_config

if TYPE_CHECKING:
    from carid.runtime.results import Prediction

QUICKSTART = "quickstart.yaml"
PREDICT_EXAMPLES = 5
# The main job's "unknown" threshold: the lowest one whose validation answers are 90 % right, unless
# that answers fewer than 60 % of the photos; then the one that still answers 60 % (an answer a user
# can act on beats a "not sure"). Both figures go into the bundle (model.json extra.operating_point).
TARGET_PRECISION = 0.90
MIN_COVERAGE = 0.60


@dataclass
class MainJobResult:
    """What `carid run` produced: file paths per stage, seconds per stage, example predictions."""

    paths: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    predictions: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "paths": {name: str(path) for name, path in self.paths.items()},
            "seconds": {name: round(value, 2) for name, value in self.seconds.items()},
            "metrics": self.metrics,
            "predictions": [prediction.to_dict() for prediction in self.predictions],
        }


def quickstart_config(config_path: Path | None, overrides: Sequence[str] | None) -> Config:
    """The training recipe of the main job: the packaged quickstart unless a config is given."""
    if config_path is not None:
        return load_config(config_path, list(overrides or []))
    recipe = resources.files("carid.recipes").joinpath(QUICKSTART)
    with resources.as_file(recipe) as path:
        return load_config(path, list(overrides or []))


def run_main_job(
    data_path: Path,
    out_dir: Path,
    config: Config,
    say: Callable[[str], None] = print,
    progress: bool = True,
    console: Console | None = None,
) -> MainJobResult:
    """Run every stage on `data_path`, writing under `out_dir`; `say` reports each stage's result
    and `console`, when given, also shows the data-check table."""
    from carid.config import save_config
    from carid.data.inspect import inspect_dataset, splits_of_all, write_data_report
    from carid.evaluation.evaluate import evaluate
    from carid.export import export_bundle
    from carid.runtime.predictor import Predictor
    from carid.training.fit import train

    result = MainJobResult()
    out_dir.mkdir(parents=True, exist_ok=True)

    def stage(name: str) -> Callable[[], None]:
        started = time.perf_counter()

        def done() -> None:
            result.seconds[name] = time.perf_counter() - started

        return done

    done = stage("check")
    inspection = inspect_dataset(
        data_path, config.data, config.check, out_dir=out_dir / "data", progress=progress
    )
    if console is not None:
        inspection.report.print_summary(console)
    result.paths["data_report"] = write_data_report(
        inspection, out_dir / "data", title=f"carid data report: {data_path.name}"
    )
    result.paths["split"] = inspection.paths["split"]
    done()
    usable = len(inspection.report.usable())
    say(f"check: {len(inspection.table)} images, {usable} usable; report {result.paths['data_report']}")

    done = stage("train")
    train_config = _with_data(config, data_path, inspection.paths["split"], out_dir / "runs")
    save_config(train_config, out_dir / "train-config.yaml")
    if train_config.train.cache_features:  # the one long step: its progress lines follow this one
        frozen = train_config.train.freeze
        trained = "the heads" if frozen == "backbone" else f"the layers from {frozen} on and the heads"
        say(
            f"train: the frozen layers' output for the train and val images comes first (a few "
            f"minutes on a CPU, once per dataset), then {train_config.train.epochs} epochs of {trained}"
        )
    run = train(train_config, default_name="quickstart", progress=progress)
    result.paths["run"] = run.run_dir
    done()
    result.metrics.update({k: float(v) for k, v in run.metrics.items() if isinstance(v, int | float)})
    say(f"train: {run.run_dir} (val acc {run.metrics.get('val/acc', float('nan')):.3f})")

    done = stage("evaluate")
    report = evaluate(
        run.run_dir,
        split="test",
        out_dir=out_dir / "evaluation",
        fit_calibration=True,
        target_precision=TARGET_PRECISION,
        min_coverage=MIN_COVERAGE,
        progress=progress,
    )
    result.paths["evaluation"] = report.paths["report"]
    result.metrics["test/acc"] = float(report.accuracy)
    done()
    say(f"evaluate: test accuracy {report.accuracy:.3f}; report {report.paths['report']}")

    done = stage("export")
    exported = export_bundle(run.run_dir, out=out_dir / "bundle", overwrite=True, say=lambda line: None)
    if report.calibration is not None:
        from carid.artifacts.bundle import update_calibration

        choice = report.calibration.threshold
        update_calibration(
            exported.bundle.path,
            temperature=report.calibration.temperature,
            unknown_threshold=choice.threshold,
            operating_point={
                "target_precision": choice.target_precision,
                "min_coverage": choice.min_coverage,
                "val_precision": choice.precision,
                "val_coverage": choice.coverage,
                "reached": choice.achievable,
                "message": choice.message,
            },
        )
    result.paths["bundle"] = exported.bundle.path
    done()
    say(f"export: {exported.bundle.path} (parity checked on real images)")

    done = stage("predict")
    splits = splits_of_all(inspection)
    held_out = [
        sample for sample, split in zip(inspection.table.samples, splits, strict=True) if split == "test"
    ][:PREDICT_EXAMPLES]
    predictor = Predictor.load(exported.bundle.path)
    result.predictions = predictor.predict([sample.path for sample in held_out], top_k=3)
    done()
    threshold = predictor.metadata.unknown_threshold
    for sample, prediction in zip(held_out, result.predictions, strict=True):
        box = "" if prediction.box is None else f", box {prediction.box.to_dict()}"
        say(f"predict: {Path(prediction.source).name}: {answer_text(prediction, threshold)}{box}")
        say(f"         its label in the dataset: {sample.label}")
    for line in example_summary(result.predictions, [sample.label for sample in held_out]):
        say(line)
    rejection = (report.calibration.evaluated or {}).get("rejection") if report.calibration else None
    if rejection:
        result.metrics["test/coverage"] = float(rejection["coverage"])
        if rejection.get("answered_accuracy") is not None:
            result.metrics["test/answered_accuracy"] = float(rejection["answered_accuracy"])
        say(operating_point_text(rejection))
    say(STRONGER_MODEL)
    return result


# Where a user goes for accuracy after the main job (the figure is measured: benchmarks/RESULTS.md).
STRONGER_MODEL = (
    "stronger model: `carid train configs/stanford-cars.yaml` fine-tunes every layer (16 epochs of "
    "about 6 min each on 2 CPU cores; 0.866 top-1 on its test split; see benchmarks/RESULTS.md)"
)


def example_summary(predictions: Sequence[Prediction], labels: Sequence[str | None]) -> list[str]:
    """How many example answers were right, and how many "not sure" answers had the right best guess."""
    answered = [(p, label) for p, label in zip(predictions, labels, strict=True) if p.ok and not p.unknown]
    unsure = [(p, label) for p, label in zip(predictions, labels, strict=True) if p.ok and p.unknown]
    right = sum(p.label == label for p, label in answered)
    guessed = sum(p.top1 is not None and p.top1.label == label for p, label in unsure)
    line = f"examples: {right} of {len(answered)} answers right"
    if unsure:
        line += f"; {len(unsure)} not sure, {guessed} of them with the right best guess"
    return [line]


def operating_point_text(rejection: dict[str, Any]) -> str:
    """ "operating point: answers 64.1% of the test photos (threshold 41.2%); 91.3% of those right"."""
    text = (
        f"operating point: answers {rejection['coverage']:.1%} of the test photos "
        f"(threshold {rejection['threshold']:.1%})"
    )
    accuracy = rejection.get("answered_accuracy")
    return text if accuracy is None else f"{text}; {accuracy:.1%} of those answers right"


def answer_text(prediction: Prediction, unknown_threshold: float | None) -> str:
    """ "Audi TTS Coupe 2012 (87.0%)", or for an unknown answer the best guess, its probability and the
    threshold it missed: "not sure: best guess Audi TTS Coupe 2012 at 41.0%, below the 96.0% threshold"."""
    if not prediction.ok:
        return f"error: {prediction.error}"
    probability = prediction.probability or 0.0
    if prediction.unknown and prediction.top1 is not None:
        limit = "the threshold" if unknown_threshold is None else f"the {unknown_threshold:.1%} threshold"
        return f"not sure: best guess {prediction.top1.label} at {probability:.1%}, below {limit}"
    return f"{prediction.label} ({probability:.1%})"


def _with_data(config: Config, data_path: Path, split_csv: Path, run_dir: Path) -> Config:
    from dataclasses import replace

    data = replace(config.data, path=str(data_path), split_csv=str(split_csv))
    # the evaluate stage scores the test split (with calibration), so training does not do it twice
    train_settings = replace(config.train, test_after_fit=False)
    return replace(config, data=data, train=train_settings, run_dir=str(run_dir))
