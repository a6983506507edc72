"""`carid ensemble`: build an ensemble folder from exported bundles (or run folders with their
RUN/export), fitting its weights on validation data.

Members are copied into ENSEMBLE/members/ (the format is `carid.artifacts.ensemble`), the weights
are fitted on the members' validation scores (`carid.evaluation.ensemble_fit`), then the
temperature and the unknown threshold; the notes say when a member trained on the images the
weights were fitted on.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carid.artifacts.bundle import (
    ENSEMBLE_FILE,
    METADATA_FILE,
    Bundle,
    BundleError,
)
from carid.artifacts.ensemble import (
    BOX_MODES,
    MAX_LISTED,
    MEMBERS_DIR,
    MODES,
    Ensemble,
    EnsembleError,
    EnsembleMember,
    EnsembleMetadata,
    as_tuple,
    class_columns,
    few_names,
    write_ensemble_metadata,
)
from carid.artifacts.run_dir import (
    EXPORT_DIR,
    SPLIT_FILE,
    RunDir,
    bundle_run_dir,
    is_bundle_dir,
    is_ensemble_dir,
    is_run_dir,
    run_split_csv,
)
from carid.data.samples import Problem, Sample
from carid.evaluation.calibration import choose_unknown_threshold, fit_temperature
from carid.evaluation.comparison import ModelSummary, data_name, format_table, summarize
from carid.evaluation.ensemble_fit import EnsembleFit, fit_ensemble
from carid.evaluation.metrics import calibration_stats
from carid.evaluation.scoring import align_labels
from carid.evaluation.sources import BundleScoreSource, in_class_order, merged_problems
from carid.files import move_folder_into_place
from carid.runtime.calibration import apply_temperature
from carid.runtime.ensemble import combine_boxes, combine_probabilities, probabilities_to_logits

if TYPE_CHECKING:
    from carid.data.samples import SampleTable

log = logging.getLogger(__name__)


_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class MemberSource:
    """A member to be: its bundle, the run it was exported from (None when unknown) and its name."""

    bundle: Bundle
    run_dir: Path | None
    name: str


def _safe_name(text: str) -> str:
    return _NAME_CHARACTERS.sub("-", text).strip("-.") or "member"


def resolve_member(path: Path | str) -> MemberSource:
    """A bundle folder (or its model.json / model.onnx) or a run folder with an export (RUN/export).

    Raises EnsembleError for a run without an export (export it first), a checkpoint, an ensemble
    or anything else, naming the path.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise EnsembleError(f"{path}: no such file or folder (expected a bundle folder or a run folder)")
    if path.is_file() and (path.name in (METADATA_FILE, ENSEMBLE_FILE) or path.suffix == ".onnx"):
        path = path.parent
    if is_ensemble_dir(path):
        raise EnsembleError(
            f"{path}: an ensemble cannot be a member of another ensemble; give its members "
            f"({path / MEMBERS_DIR}/*) instead"
        )
    run_dir: Path | None = None
    if is_bundle_dir(path):
        folder = path
    elif path.is_dir() and (RunDir(path).best_checkpoint.is_file() or is_run_dir(path)):
        folder = RunDir(path).export
        if not is_bundle_dir(folder):
            raise EnsembleError(
                f"{path}: the run has no export ({folder}); run `carid export {path}` first, then give "
                "the run folder (or its export folder) as a member"
            )
        run_dir = path.resolve()
    elif path.suffix == ".ckpt":
        raise EnsembleError(
            f"{path}: a checkpoint cannot be a member; export it first (`carid export {path}`) and "
            "give the bundle folder"
        )
    else:
        raise EnsembleError(
            f"{path}: not a model bundle (no {METADATA_FILE}) nor a run folder with an export "
            f"({EXPORT_DIR}/{METADATA_FILE})"
        )
    try:
        bundle = Bundle.load(folder)
    except BundleError as exc:
        raise EnsembleError(str(exc)) from None
    run_dir = run_dir or bundle_run_dir(bundle)
    name = bundle.metadata.extra.get("run_name") or (run_dir.name if run_dir else None)
    if not name:
        name = folder.resolve().parent.name if folder.name == EXPORT_DIR else folder.resolve().name
    return MemberSource(bundle=bundle, run_dir=run_dir, name=_safe_name(str(name)))


def unique_member_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


@dataclass(frozen=True, eq=False)
class FitData:
    """The fit split scored by every member: kept samples (read by all), labels int64 [N] (-1:
    unknown), member probabilities float64 [M, N, C] in the ensemble's class order, member boxes
    ([N, 4] pixels or None each), true boxes [N, 4] (NaN rows) and has_box [N]."""

    samples: tuple[Sample, ...]
    labels: np.ndarray
    probabilities: np.ndarray
    boxes: tuple[np.ndarray | None, ...]
    true_boxes: np.ndarray
    has_box: np.ndarray
    problems: tuple[Problem, ...]

    def member_iou(self) -> list[float | None]:
        """Mean IoU of each member's boxes over the samples with a true box (None: no box head)."""
        from carid.boxes import paired_iou

        values: list[float | None] = []
        for boxes in self.boxes:
            if boxes is None or not self.has_box.any():
                values.append(None)
            else:
                values.append(float(paired_iou(boxes[self.has_box], self.true_boxes[self.has_box]).mean()))
        return values


def score_fit_data(
    sources: Sequence[BundleScoreSource],
    columns: Sequence[np.ndarray],
    samples: Sequence[Sample],
    class_names: Sequence[str],
    label_level: str,
    progress: bool = False,
) -> FitData:
    """Score `samples` with each member source and align labels and true boxes (see `FitData`)."""
    from carid.evaluation.scoring import target_boxes

    samples = list(samples)
    member_scores = [
        in_class_order(source.score(samples, progress=progress), column)
        for source, column in zip(sources, columns, strict=True)
    ]
    ok = np.logical_and.reduce([scores.ok for scores in member_scores])
    kept = tuple(sample for sample, good in zip(samples, ok, strict=True) if good)
    labels = align_labels(kept, class_names, label_level).labels
    sizes = member_scores[0].original_sizes[ok]
    true_boxes, has_box = target_boxes(kept, sizes)
    problems = merged_problems(member_scores)
    return FitData(
        samples=kept,
        labels=labels,
        probabilities=np.stack([scores.probabilities[ok] for scores in member_scores]).astype(np.float64),
        boxes=tuple(None if scores.boxes is None else scores.boxes[ok] for scores in member_scores),
        true_boxes=true_boxes,
        has_box=has_box,
        problems=problems,
    )


def training_overlap_notes(
    samples: Sequence[Sample], members: Sequence[MemberSource], split: str
) -> list[str]:
    """A note per member run whose training images are among `samples` (fitting on them favours
    that member): read from the run's split.csv; a refit run (`train.fit_on_val`) trained on its
    val images too."""
    from carid.data.split import load_split
    from carid.evaluation.evaluation_data import load_run_config, trained_splits

    paths = {Path(sample.path).resolve() for sample in samples}
    notes = []
    for member in members:
        split_csv = None if member.run_dir is None else member.run_dir / SPLIT_FILE
        if split_csv is None or not split_csv.is_file():
            continue
        try:
            table = load_split(split_csv)
        except (OSError, ValueError) as exc:
            notes.append(f"cannot check member {member.name}'s training images ({exc})")
            continue
        splits = trained_splits(load_run_config(member.run_dir))
        trained = {Path(s.path).resolve() for s in table.samples if s.split in splits}
        overlap = len(paths & trained)
        if overlap:
            notes.append(
                f"{overlap} of the {len(paths)} {split!r} images are training images of member "
                f"{member.name} ({split_csv}): fitted weights favour it; fit on images no member trained on"
            )
    return notes


@dataclass(frozen=True, eq=False)
class EnsembleBuild:
    """What `build_ensemble` made: the ensemble (loaded back), the fit, the scores on the fit split
    (members and ensemble; empty without fit data), notes and the duration."""

    ensemble: Ensemble
    fit: EnsembleFit
    validation: tuple[ModelSummary, ...]
    notes: tuple[str, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ensemble": str(self.ensemble.path),
            **self.ensemble.describe(),
            "fit": self.fit.to_dict(),
            "validation": [summary.to_dict() for summary in self.validation],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 2),
        }

    def summary_lines(self) -> list[str]:
        """A few lines for the terminal."""
        meta = self.ensemble.metadata
        lines = [
            f"ensemble {meta.name!r} ({meta.mode}, {len(meta.members)} members) in {self.ensemble.path}",
            f"  weights: {self.fit.method}",
        ]
        for member, weights in zip(meta.members, self.fit.weights, strict=True):
            shown = (
                f"{float(weights):.4f}"
                if np.ndim(weights) == 0
                else "per class " + " ".join(f"{w:.2f}" for w in weights)
            )
            lines.append(f"    {member.name}: {shown}")
        lines.append(
            f"  temperature {meta.temperature:.4f}, unknown threshold "
            f"{'none' if meta.unknown_threshold is None else f'{meta.unknown_threshold:.4f}'}"
        )
        if self.validation:
            split = (meta.fit or {}).get("split", "val")
            lines.append(f"  on the {split!r} split it was fitted on:")
            lines += ["    " + line for line in format_table(self.validation).splitlines()]
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def build_ensemble(
    members: Sequence[Path | str],
    out: Path | str,
    *,
    mode: str = "mean",
    data: Path | str | SampleTable | None = None,
    fit_on: str = "val",
    data_format: str | None = None,
    box_mode: str = "mean",
    calibrate: bool = True,
    target_precision: float | None = None,
    name: str | None = None,
    overwrite: bool = False,
    backend: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
) -> EnsembleBuild:
    """Build an ensemble folder `out` from member bundles (or run folders with an export).

    mode: "mean", "weighted" or "expert" (module docstring). data / fit_on: the images the weights,
    the temperature and the threshold are fitted on: the `fit_on` split ("val") of `data` by the
    rules of `carid.evaluation.evaluate` (a split CSV, a dataset, a `SampleTable`); default: the
    split.csv of the first member run that has one. "mean" with box_mode "mean" needs no data (then
    without data nothing is fitted and no validation scores are recorded).
    calibrate: fit the ensemble's temperature on the fit data. target_precision: also choose the
    "unknown" threshold reaching it (default: none stored). overwrite: replace an existing ensemble
    folder. backend: of the members' predictors while fitting. say: progress lines.
    Raises EnsembleError (a ValueError) for anything the user can fix, naming the path or value.
    """
    from carid.evaluation.evaluation_data import SPLIT_CHOICES, load_evaluation_data, load_run_config

    started = time.perf_counter()
    tell = say or log.info
    if mode not in MODES:
        raise EnsembleError(f"ensemble mode {mode!r} is not one of {', '.join(MODES)}")
    if box_mode not in BOX_MODES:
        raise EnsembleError(f"box mode {box_mode!r} is not one of {', '.join(BOX_MODES)}")
    if fit_on not in SPLIT_CHOICES:
        raise EnsembleError(f"--fit-on {fit_on!r} is not one of {', '.join(SPLIT_CHOICES)}")
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise EnsembleError(f"target precision must be in (0, 1], got {target_precision}")
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not overwrite:
        raise EnsembleError(f"{out_dir} already exists; pass --force to replace it, or --out elsewhere")
    if out_dir.exists() and not is_ensemble_dir(out_dir) and any(out_dir.iterdir()):
        raise EnsembleError(f"{out_dir} exists and is not an ensemble folder; it is not replaced")

    sources = [resolve_member(member) for member in members]
    if len(sources) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 members, got {len(sources)}")
    folders = [source.bundle.path.resolve() for source in sources]
    repeated = sorted({str(f) for f in folders if folders.count(f) > 1})
    if repeated:
        raise EnsembleError(f"the same bundle is given twice: {', '.join(repeated)}")
    if any(out_dir.resolve() in folder.parents for folder in folders):
        raise EnsembleError(f"{out_dir}: a member lives inside the ensemble folder being replaced")
    names = unique_member_names([source.name for source in sources])
    ensemble_name = _safe_name(name) if name else _safe_name(out_dir.resolve().name)
    reference = sources[0].bundle.metadata
    columns = [
        class_columns(reference.class_names, source.bundle.metadata.class_names, f"member {n} ({folder})")
        for source, n, folder in zip(sources, names, folders, strict=True)
    ]
    for source, member_name in zip(sources, names, strict=True):
        if source.bundle.metadata.label_level != reference.label_level:
            raise EnsembleError(
                f"member {member_name} ({source.bundle.path}) predicts "
                f"{source.bundle.metadata.label_level!r} classes, the first member {reference.label_level!r}"
            )
    with_box = [source.bundle.metadata.with_box for source in sources]

    run_dirs = [source.run_dir for source in sources]
    data_path = data if data is not None else run_split_csv(run_dirs)
    needs_data = mode != "mean" or (box_mode == "best" and any(with_box)) or target_precision is not None
    notes: list[str] = []
    fit_data: FitData | None = None
    fit_record: dict[str, Any] | None = None
    if data_path is None and needs_data:
        raise EnsembleError(
            f"mode {mode!r}"
            + (f" with box mode {box_mode!r}" if box_mode == "best" else "")
            + (" and a target precision" if target_precision is not None else "")
            + f" fits on the {fit_on!r} split of some data: give --data (a split CSV or a dataset), or "
            "members that are run folders (their split.csv is used)"
        )
    if data_path is None:
        notes.append("no data to fit on: equal weights, temperature 1, no validation scores recorded")
    else:
        run_dir = next((r for r in run_dirs if r is not None), None)
        evaluation_data = load_evaluation_data(
            data_path,
            fit_on,
            run_dir=run_dir,
            run_config=load_run_config(run_dir),
            data_format=data_format,
            progress=progress,
        )
        notes += training_overlap_notes(evaluation_data.samples, sources, fit_on)
        tell(f"scoring {len(evaluation_data.samples)} {fit_on!r} images with {len(sources)} members")
        member_sources = [
            BundleScoreSource(s.bundle.path, backend=backend, batch_size=batch_size) for s in sources
        ]
        fit_data = score_fit_data(
            member_sources,
            columns,
            evaluation_data.samples,
            reference.class_names,
            reference.label_level,
            progress,
        )
        labeled = int((fit_data.labels >= 0).sum())
        if not labeled:
            raise EnsembleError(
                f"none of the {len(evaluation_data.samples)} {fit_on!r} images of {data_path} has a label "
                f"the members know (classes: {few_names(list(reference.class_names))})"
            )
        notes += [str(problem) for problem in fit_data.problems[:MAX_LISTED]]
        fit_record = {
            "split": fit_on,
            "data": data_name(data_path),
            "num_samples": len(fit_data.samples),
            "num_labeled": labeled,
            "unreadable": len(evaluation_data.samples) - len(fit_data.samples),
        }

    try:
        fit = fit_ensemble(
            mode,
            None if fit_data is None else fit_data.probabilities,
            None if fit_data is None else fit_data.labels,
            with_box,
            box_mode,
            None if fit_data is None else fit_data.member_iou(),
        )
    except ValueError as exc:
        raise EnsembleError(str(exc)) from None

    temperature, threshold, calibration = 1.0, None, None
    validation: list[ModelSummary] = []
    if fit_data is not None:
        labels = fit_data.labels
        keep = labels >= 0
        logits = probabilities_to_logits(combine_probabilities(fit_data.probabilities, fit.weights))
        if calibrate:
            temperature = fit_temperature(logits[keep], labels[keep])
        final = apply_temperature(logits, temperature)
        before, after = (
            calibration_stats(apply_temperature(logits[keep], 1.0), labels[keep]),
            calibration_stats(final[keep], labels[keep]),
        )
        choice = None
        if target_precision is not None:
            choice = choose_unknown_threshold(final, labels, target_precision)
            threshold = choice.threshold
        calibration = {
            "temperature": temperature,
            "fitted": calibrate,
            "nll_before": before.nll,
            "nll_after": after.nll,
            "ece_before": before.ece,
            "ece_after": after.ece,
            "threshold": None if choice is None else choice.to_dict(),
        }
        box_pred = combine_boxes(list(fit_data.boxes), fit.box_weights)
        for member_name, index in zip(names, range(len(sources)), strict=True):
            validation.append(
                summarize(
                    member_name,
                    "member",
                    fit_data.probabilities[index],
                    labels,
                    reference.class_names,
                    fit_data.boxes[index],
                    fit_data.true_boxes,
                    fit_data.has_box,
                )
            )
        validation.append(
            summarize(
                ensemble_name,
                f"ensemble ({mode})",
                final,
                labels,
                reference.class_names,
                box_pred,
                fit_data.true_boxes,
                fit_data.has_box,
            )
        )
        assert fit_record is not None
        fit_record.update({"method": fit.method, "details": fit.details})

    metadata = EnsembleMetadata(
        name=ensemble_name,
        mode=mode,
        members=tuple(
            EnsembleMember(
                name=member_name,
                path=f"{MEMBERS_DIR}/{member_name}",
                image_size=tuple(source.bundle.metadata.preprocess_spec().image_size),  # type: ignore[arg-type]
                with_box=source.bundle.metadata.with_box,
                source=str(folder),
            )
            for source, member_name, folder in zip(sources, names, folders, strict=True)
        ),
        weights=as_tuple(np.asarray(fit.weights, dtype=np.float64)),
        class_names=reference.class_names,
        box_weights=tuple(float(w) for w in fit.box_weights),
        box_mode=box_mode,
        label_level=reference.label_level,
        taxonomy=reference.taxonomy,
        temperature=float(temperature),
        unknown_threshold=threshold,
        fit=fit_record,
        validation=None
        if not validation
        else {"split": fit_on, "models": [summary.to_dict() for summary in validation]},
        calibration=calibration,
        notes=tuple(notes),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    tell(f"writing {out_dir} (copying {len(sources)} member bundles)")
    _write_ensemble_folder(out_dir, metadata, [source.bundle.path for source in sources], overwrite)
    ensemble = Ensemble.load(out_dir)
    return EnsembleBuild(ensemble, fit, tuple(validation), tuple(notes), time.perf_counter() - started)


def _write_ensemble_folder(
    out_dir: Path, metadata: EnsembleMetadata, bundle_folders: Sequence[Path], overwrite: bool
) -> None:
    """Copy the member bundles and write ensemble.json in a staging folder beside `out_dir`, check
    it loads, then rename it into place (an existing ensemble is moved aside first)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for member, folder in zip(metadata.members, bundle_folders, strict=True):
            shutil.copytree(folder, staging / member.path, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        write_ensemble_metadata(staging, metadata)
        Ensemble.load(staging)  # what readers will see: validate before moving into place
        if out_dir.exists() and not overwrite:
            raise EnsembleError(f"{out_dir} appeared while building; pass --force to replace it")
        move_folder_into_place(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
