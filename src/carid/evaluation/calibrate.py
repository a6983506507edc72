"""`carid calibrate`: fit the temperature and the "unknown" threshold of a bundle or an ensemble on
validation data and store them in its model.json / ensemble.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any

from carid.artifacts.bundle import (
    ENSEMBLE_FILE,
    METADATA_FILE,
    Bundle,
    BundleError,
    update_calibration,
)
from carid.artifacts.ensemble import Ensemble, update_ensemble_calibration
from carid.artifacts.run_dir import RunDir, bundle_run_dir, is_bundle_dir, is_ensemble_dir, run_split_csv
from carid.evaluation.scoring import EvaluationError, align_labels
from carid.evaluation.sources import open_score_source
from carid.evaluation.val_calibration import DEFAULT_TARGET_PRECISION

if TYPE_CHECKING:
    from carid.data.samples import SampleTable
    from carid.evaluation.val_calibration import CalibrationFit


@dataclass(frozen=True, eq=False)
class CalibrationUpdate:
    """A temperature and "unknown" threshold fitted on validation data and stored into a model.

    kind: "bundle" (model.json) or "ensemble" (ensemble.json). before / after: the stored
    temperature and unknown_threshold. fit: `carid.evaluation.evaluate.CalibrationFit`.
    threshold_stored: whether the fitted threshold was stored (asked for, and reaching the target).
    """

    path: Path
    kind: str
    data: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    fit: CalibrationFit
    threshold_stored: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "data": self.data,
            "before": self.before,
            "after": self.after,
            "fit": self.fit.to_dict(),
            "threshold_stored": self.threshold_stored,
        }

    def summary_lines(self) -> list[str]:
        fit = self.fit
        threshold = self.after["unknown_threshold"]
        return [
            f"{self.kind} {self.path}: temperature {self.before['temperature']:.4f} -> "
            f"{self.after['temperature']:.4f}, unknown threshold "
            f"{self.before['unknown_threshold']} -> {threshold}",
            f"  fitted on {fit.num_val} {self.data.get('split')!r} images: NLL {fit.val_nll_before:.4f} -> "
            f"{fit.val_nll_after:.4f}, ECE {fit.val_ece_before:.4f} -> {fit.val_ece_after:.4f}",
            f"  threshold: {fit.threshold.message}"
            + ("" if self.threshold_stored else "; not stored (the model keeps its threshold)"),
        ]


def _calibration_target(model: Path | str) -> tuple[str, Path, Path | None]:
    """(kind "bundle" or "ensemble", folder, run folder for the default data or None)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise EvaluationError(f"{path}: no such file or folder")
    if path.is_file() and path.name in (METADATA_FILE, ENSEMBLE_FILE):
        path = path.parent
    if is_ensemble_dir(path):
        try:
            ensemble = Ensemble.load(path)
        except BundleError as exc:
            raise EvaluationError(str(exc)) from exc
        runs = [bundle_run_dir(bundle) for bundle in ensemble.bundles]
        split_csv = run_split_csv(runs)
        return "ensemble", ensemble.path, None if split_csv is None else split_csv.parent
    if is_bundle_dir(path):
        try:
            return "bundle", path, bundle_run_dir(Bundle.load(path))
        except BundleError as exc:
            raise EvaluationError(str(exc)) from exc
    run = RunDir(path)
    if run.best_checkpoint.is_file():
        if run.has_export():
            return "bundle", run.export, path
        raise EvaluationError(
            f"{path}: the run has no export ({run.export}); calibration is stored in a bundle: run "
            f"`carid export {path}` first"
        )
    raise EvaluationError(
        f"{path}: not a bundle, an ensemble or a run folder with an export; calibration is stored in a "
        "bundle's model.json (export a checkpoint first with `carid export`)"
    )


def calibrate_model(
    model: Path | str,
    data: Path | str | SampleTable | None = None,
    *,
    split: str = "val",
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_coverage: float = 0.0,
    set_threshold: bool = True,
    data_format: str | None = None,
    backend: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> CalibrationUpdate:
    """Fit a temperature and an "unknown" threshold on validation data and store them in the model.

    model: a bundle folder, a run folder (its RUN/export bundle) or an ensemble folder.
    data / split: the images, by the rules of `carid.evaluation.evaluate` (default: the run's
    split.csv, its "val" part). The temperature is fitted on the raw logits (the network's, or an
    ensemble's log combined probabilities), so it replaces the stored one rather than stacking on
    it; the threshold is the smallest top-1 probability whose answers reach `target_precision` on
    the temperature-scaled probabilities (`fit_val_calibration`); it is stored only when it reaches
    the target (else the stored threshold is kept and the summary says why), or, with `min_coverage`,
    the highest one still answering that share when the target would answer fewer. set_threshold False
    stores the temperature only. Written atomically with `carid.artifacts.bundle.update_calibration` (or
    `update_ensemble_calibration`).
    """
    from carid.evaluation.evaluation_data import load_evaluation_data, load_run_config
    from carid.evaluation.val_calibration import fit_val_calibration

    if not 0.0 < target_precision <= 1.0:
        raise EvaluationError(f"target precision must be in (0, 1], got {target_precision}")
    kind, path, run_dir = _calibration_target(model)
    source = open_score_source(path, backend=backend, batch_size=batch_size)
    evaluation_data = load_evaluation_data(
        data,
        split,
        run_dir=run_dir,
        run_config=load_run_config(run_dir),
        data_format=data_format,
        progress=progress,
    )
    scores = source.score(evaluation_data.samples, progress=progress)
    kept = [sample for sample, ok in zip(evaluation_data.samples, scores.ok, strict=True) if ok]
    labels = align_labels(kept, source.class_names, source.label_level).labels
    fit = fit_val_calibration(scores.logits[scores.ok], labels, target_precision, min_coverage=min_coverage)
    # with a least coverage, the threshold keeping it is the choice even below the precision target
    stored_threshold = set_threshold and (fit.threshold.achievable or min_coverage > 0)
    threshold: float | EllipsisType = fit.threshold.threshold if stored_threshold else ...
    if kind == "ensemble":
        previous = Ensemble.load(path).metadata
        before = {"temperature": previous.temperature, "unknown_threshold": previous.unknown_threshold}
        stored = update_ensemble_calibration(
            path, fit.temperature, threshold, calibration=fit.to_dict()
        ).metadata
        after = {"temperature": stored.temperature, "unknown_threshold": stored.unknown_threshold}
    else:
        previous_bundle = Bundle.load(path).metadata
        before = {
            "temperature": previous_bundle.temperature,
            "unknown_threshold": previous_bundle.unknown_threshold,
        }
        stored_bundle = update_calibration(path, fit.temperature, threshold).metadata
        after = {
            "temperature": stored_bundle.temperature,
            "unknown_threshold": stored_bundle.unknown_threshold,
        }
    return CalibrationUpdate(path, kind, evaluation_data.to_dict(), before, after, fit, stored_threshold)
