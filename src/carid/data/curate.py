"""`carid data curate`: find the photos a dataset is better without, show them, and write a cleaned manifest.

Reasons a photo is flagged (one `Flag` per photo and reason):

- unusable (not_an_image, truncated_image, unreadable_image, missing_file, too_many_pixels) and
  tiny_image: from `carid.data.checks.run_checks`, the same verdicts as `carid data check`;
- exact_duplicate / near_duplicate: of each duplicate group of the checks, the first file in path
  order is kept and the others are flagged (score = the group's largest phash distance);
- no_car: car score below `CurateConfig.no_car_threshold` (score = car score) from the `CarScorer`
  the caller passes in (`carid.models.nocar.ImageNetCarScorer` for `carid data curate`);
- likely_mislabelled: with a model, its top-1 class differs from the label with probability at
  least `CurateConfig.mislabel_threshold` (score = that probability).

Outputs in `out_dir`: kept.csv (the kept samples as a carid samples CSV, read back by
`SampleTable.from_csv`), flagged.csv (every flag: path, reason, score, detail, action),
summary.json and review.html (thumbnails per reason, self-contained). Nothing is deleted or moved
unless `action` is "delete" or "move", and then only flagged files, each recorded in flagged.csv
and summary.json.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from carid.config import CheckConfig, CurateConfig, DataConfig
from carid.data.check_report import CheckReport
from carid.data.checks import run_checks
from carid.data.readers import read_dataset
from carid.data.samples import Sample, Severity
from carid.data.text import file_text, safe_for_files
from carid.errors import CaridError
from carid.files import write_atomic, write_json
from carid.images import ImageError, load_rgb
from carid.reporting import data_uri, jpeg_bytes, render_page

UNUSABLE_KINDS = ("missing_file", "not_an_image", "truncated_image", "unreadable_image", "too_many_pixels")
REASONS = ("unusable", "tiny_image", "exact_duplicate", "near_duplicate", "no_car", "likely_mislabelled")
Action = Literal["none", "delete", "move"]


class CurateError(CaridError, ValueError):
    """Curation cannot run as asked (bad option combination, a model without classes ...)."""


class CarScorer(Protocol):
    """What the no-car filter needs (`carid.models.nocar.ImageNetCarScorer` fits; tests pass a function).

    Called with image paths, returns a car score per path [N] in [0, 1], NaN for a file that cannot
    be decoded.
    """

    def __call__(self, paths: Sequence[Path], /) -> np.ndarray: ...


class LabelModel(Protocol):
    """What mislabel detection needs of a model (`carid.runtime.predictor.Predictor` fits)."""

    def predict(self, images: Sequence[Path], top_k: int = 5, batch_size: int = 16) -> list[Any]: ...


@dataclass
class Flag:
    """One reason to drop one photo. score: see the module docstring (None for check verdicts)."""

    path: str
    reason: str
    detail: str
    score: float | None = None
    action: str = "kept"  # "kept" (flag only), "removed from manifest", "deleted", "moved to <path>"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = None if self.score is None else round(self.score, 4)
        return data


@dataclass
class Curation:
    """What `curate` found and wrote. `skipped`: section -> why it did not run."""

    samples: int
    kept: list[Sample]
    flags: list[Flag]
    skipped: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    config: CurateConfig = field(default_factory=CurateConfig)

    def counts(self) -> dict[str, int]:
        return {reason: sum(flag.reason == reason for flag in self.flags) for reason in REASONS}

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "kept": len(self.kept),
            "removed": self.samples - len(self.kept),
            "flag_counts": self.counts(),
            "skipped": self.skipped,
            "config": asdict(self.config),
            "files": {name: str(path) for name, path in self.paths.items()},
            "actions": [
                flag.to_dict() for flag in self.flags if flag.action not in ("kept", "removed from manifest")
            ],
        }


# --- finding ---------------------------------------------------------------------------------------


def check_flags(report: CheckReport, keep_one_duplicate: bool) -> list[Flag]:
    """Unusable and tiny images, and the duplicates beyond the first of each group."""
    flags: list[Flag] = []
    for problem in report.problems:
        if problem.path and problem.severity is Severity.ERROR:
            if problem.kind in UNUSABLE_KINDS:
                flags.append(Flag(problem.path, "unusable", f"{problem.kind}: {problem.message}"))
            elif problem.kind == "tiny_image":
                flags.append(Flag(problem.path, "tiny_image", problem.message))
    if keep_one_duplicate:
        for group in report.duplicate_groups:
            paths = sorted(set(group.paths))
            for path in paths[1:]:
                detail = f"{group.kind} duplicate of {paths[0]}"
                flags.append(Flag(path, f"{group.kind}_duplicate", detail, float(group.max_distance)))
    return flags


def no_car_flags(paths: Sequence[str], scorer: CarScorer, threshold: float) -> tuple[list[Flag], np.ndarray]:
    """Photos whose car score is below `threshold` (NaN scores, unreadable files, are not flagged here)."""
    scores = np.asarray(scorer([Path(path) for path in paths]), dtype=np.float64)
    if scores.shape != (len(paths),):
        raise CurateError(f"the car scorer returned shape {scores.shape} for {len(paths)} photos")
    flags = [
        Flag(path, "no_car", f"car score {score:.3f} < no_car_threshold {threshold:g}", float(score))
        for path, score in zip(paths, scores, strict=True)
        if np.isfinite(score) and score < threshold
    ]
    return flags, scores


def mislabel_flags(
    samples: Sequence[Sample], model: LabelModel, threshold: float, batch_size: int
) -> list[Flag]:
    """Labelled photos whose label differs from the model's top-1 class at probability >= threshold."""
    labelled = [sample for sample in samples if sample.label is not None]
    predictions = model.predict([sample.path for sample in labelled], top_k=1, batch_size=batch_size)
    flags: list[Flag] = []
    for sample, prediction in zip(labelled, predictions, strict=True):
        top1 = prediction.top1 if prediction.error is None else None
        if top1 is not None and top1.label != sample.label and top1.probability >= threshold:
            detail = f"labelled {sample.label!r}, the model says {top1.label!r} ({top1.probability:.1%})"
            flags.append(Flag(str(sample.path), "likely_mislabelled", detail, float(top1.probability)))
    return flags


# --- the job ---------------------------------------------------------------------------------------


def curate(
    path: Path,
    out_dir: Path,
    data: DataConfig | None = None,
    check: CheckConfig | None = None,
    config: CurateConfig | None = None,
    car_scorer: CarScorer | None = None,
    model: LabelModel | None = None,
    action: Action = "none",
    move_to: Path | None = None,
    progress: bool = True,
) -> Curation:
    """Read and check the dataset at `path`, flag photos, write the outputs, act only if asked.

    car_scorer: None skips the no-car filter (the summary says so); model: None skips mislabels.
    action: "none" (default: nothing on disk changes but out_dir), "delete" or "move" (to `move_to`,
        keeping paths relative to the dataset root) the flagged files.
    """
    config = config or CurateConfig()
    if action == "move" and move_to is None:
        raise CurateError("action 'move' needs a folder to move the flagged files to")
    table = read_dataset(path, (data or DataConfig()).format)
    report = run_checks(table, check, progress=progress)
    samples = report.table.samples
    flags = check_flags(report, config.keep_one_duplicate)
    skipped: dict[str, str] = {}
    usable = [sample for sample in report.usable().samples]
    usable_paths = list(dict.fromkeys(str(sample.path) for sample in usable))
    if car_scorer is None:
        skipped["no_car"] = "no car scorer (the no-car filter was turned off)"
    else:
        flags.extend(no_car_flags(usable_paths, car_scorer, config.no_car_threshold)[0])
    if model is None:
        skipped["likely_mislabelled"] = "no model given (--model); mislabel detection skipped"
    elif not any(sample.label is not None for sample in usable):
        skipped["likely_mislabelled"] = "the dataset has no labels; mislabel detection skipped"
    else:
        flags.extend(mislabel_flags(usable, model, config.mislabel_threshold, config.batch_size))

    flagged = {flag.path for flag in flags}
    kept = [sample for sample in samples if str(sample.path) not in flagged]
    for flag in flags:
        flag.action = "removed from manifest"
    curation = Curation(len(samples), kept, flags, skipped, config=config)
    out_dir.mkdir(parents=True, exist_ok=True)
    if action != "none":
        _act(flags, action, move_to, _root(report))
    curation.paths["kept"] = out_dir / "kept.csv"
    report.table.with_samples(kept).to_csv(curation.paths["kept"])
    curation.paths["flagged"] = out_dir / "flagged.csv"
    write_flags_csv(flags, curation.paths["flagged"])
    curation.paths["review"] = out_dir / "review.html"
    write_review(curation, curation.paths["review"], title=f"carid curation: {Path(path).name}")
    curation.paths["summary"] = out_dir / "summary.json"
    write_json(curation.paths["summary"], safe_for_files(curation.to_dict()))
    return curation


def _root(report: CheckReport) -> Path:
    root = Path(report.table.root)
    return root.parent if root.is_file() else root


def _act(flags: Sequence[Flag], action: Action, move_to: Path | None, root: Path) -> None:
    """Delete or move each flagged file once; every flag of the file records what happened."""
    done: dict[str, str] = {}
    for flag in flags:
        if flag.path not in done:
            source = Path(flag.path)
            if not source.exists():
                done[flag.path] = "absent (nothing to do)"
            elif action == "delete":
                source.unlink()
                done[flag.path] = "deleted"
            else:
                assert move_to is not None
                try:
                    relative = source.resolve().relative_to(root.resolve())
                except ValueError:
                    relative = Path(source.name)
                target = move_to / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(source), target)
                done[flag.path] = f"moved to {target}"
        flag.action = done[flag.path]


# --- writing ---------------------------------------------------------------------------------------


def write_flags_csv(flags: Sequence[Flag], path: Path) -> None:
    """flagged.csv: path, reason, score, detail, action; one row per flag, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("path", "reason", "score", "detail", "action"))
    writer.writeheader()
    for flag in flags:
        row = flag.to_dict()
        row["score"] = "" if row["score"] is None else row["score"]
        writer.writerow(row)
    write_atomic(path, file_text(buffer.getvalue()).encode("utf-8"))


def _thumbnail(path: str, side: int) -> str | None:
    try:
        image = load_rgb(Path(path), min_side=side)
    except (ImageError, OSError):
        return None
    image.thumbnail((side, side))
    return data_uri(jpeg_bytes(image), "image/jpeg")


def write_review(curation: Curation, path: Path, title: str) -> None:
    """review.html: every flagged photo (thumbnail, score, decision) grouped by reason."""
    side = curation.config.thumbnail_side
    groups = []
    for reason in REASONS:
        flags = [flag for flag in curation.flags if flag.reason == reason]
        items = [{"flag": flag, "thumbnail": _thumbnail(flag.path, side)} for flag in flags]
        groups.append({"reason": reason, "photos": items, "skipped": curation.skipped.get(reason)})
    html = render_page(
        "carid.data", "curate.html", title=title, summary=curation.to_dict(), groups=groups, side=side
    )
    write_atomic(path, file_text(html).encode("utf-8"))
