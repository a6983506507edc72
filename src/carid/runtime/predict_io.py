"""The file side of `carid predict`: gather photos, run a `Predictor` with progress, write results.

    gather_images(["photos/", "more/*.jpg", "one.png"]) -> sorted, de-duplicated image paths
    gather_inputs([...]) -> Gathered: the image paths and the entries skipped (`carid.data.listing`)
    run_predict(model, inputs, ...) -> PredictRun (predictions + what was written)
    write_predictions(predictions, "out.csv" | "out.json")

Annotated copies and the console table: `carid.runtime.annotate`.

CSV: one row per car, columns `CSV_COLUMNS`: car is its number in the photo (1 = the largest box;
a single-model bundle answers each photo as car 1), detection_score the detector's score (empty
without a detector); a photo in which the detector found no car, or that could not be used, has
one row with an empty car column and the reason or the error. label is the answer ("unknown" below
the bundle's threshold; reason says why an answer is unknown); class, model and probability are the
top-1 class's; make, body_type and year are the rolled-up taxonomy values with their own probabilities;
x1..y2 the box in original pixels; the timing columns are milliseconds; error is empty unless the
image could not be used.
JSON: {"format": "carid.predictions", "version": 1, "model": Predictor.info(), "predictions":
[Prediction.to_dict(), ...]}. In both, bytes of a file name that are not UTF-8 show as \\xNN.

Nothing among the inputs stops a run: a FIFO, socket or device named like a photo (never opened:
reading a FIFO waits forever), a folder that cannot be listed, a link loop named like a photo each
get a row whose error says what it is. Rows are written as they finish to ``<out>.partial`` (CSV
rows for a .csv, one JSON object per line for a .json), which becomes --out at the end: a run that
dies keeps what it finished there. A batch that raises is predicted again a photo at a time, and a
photo that still raises gets an error row naming the exception.

Like `carid.runtime.predictor`, this module imports without torch.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from carid.data.listing import Skipped, unusable_entry, walk_files
from carid.data.text import file_text, safe_for_files
from carid.errors import CaridError
from carid.files import write_atomic, write_json
from carid.images import IMAGE_SUFFIXES, is_image_file
from carid.runtime.annotate import write_annotated
from carid.runtime.predictor import Predictor
from carid.runtime.results import Prediction

PREDICTIONS_FORMAT = "carid.predictions"
PREDICTIONS_VERSION = 1
OUTPUT_SUFFIXES = (".csv", ".json")
CSV_COLUMNS: tuple[str, ...] = (
    "path",
    "car",
    "detection_score",
    "label",
    "probability",
    "class",
    "make",
    "make_probability",
    "model",
    "body_type",
    "body_type_probability",
    "year",
    "year_probability",
    "unknown",
    "reason",
    "x1",
    "y1",
    "x2",
    "y2",
    "decode_ms",
    "preprocess_ms",
    "inference_ms",
    "total_ms",
    "error",
)
_GLOB_CHARACTERS = frozenset("*?[")


class InputError(CaridError, ValueError):
    """Inputs or outputs of `carid predict` that cannot be used; the message names the path."""


# --- gathering photos -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Gathered:
    """What `gather_inputs` found: the image files to predict, in order, and the entries skipped
    (a FIFO named like a photo, a folder that cannot be listed, ...), each to become an error row."""

    images: list[Path]
    skipped: list[Skipped] = field(default_factory=list)


def gather_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files of `gather_inputs` (what it skipped left out)."""
    return gather_inputs(inputs).images


def gather_inputs(inputs: Sequence[str | Path]) -> Gathered:
    """Files as given, folders searched recursively for image suffixes, globs expanded (`**` too).

    A file named explicitly is kept whatever its suffix (a non-image then gets a per-image error).
    Order: inputs in the order given, each folder's or glob's files sorted; duplicates dropped.
    Skipped, never opened: an input that is no regular file (a FIFO, a link loop, ...), and in a
    folder the entries named like photos that are not regular files and the sub-folders that
    cannot be listed. Raises InputError naming a path that does not exist, a glob that matches
    nothing, or a folder with neither images nor skipped entries.
    """
    if not inputs:
        raise InputError("no photos given: pass files, folders or glob patterns")
    found: list[Path] = []
    skipped: list[Skipped] = []
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        unusable = unusable_entry(path)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            images, passed = _folder_images(path)
            if not images and not passed:
                raise InputError(
                    f"{path}: no images in this folder (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            found.extend(images)
            skipped.extend(passed)
        elif unusable is not None:
            skipped.append(unusable)
        elif _GLOB_CHARACTERS & set(text):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            images = [p for p in matches if p.is_file() and is_image_file(p)]
            passed = [e for p in matches if is_image_file(p) and (e := unusable_entry(p)) is not None]
            for folder in (p for p in matches if p.is_dir()):
                folder_images, folder_passed = _folder_images(folder)
                images += folder_images
                passed += folder_passed
            if not images and not passed:
                raise InputError(f"{text}: no image files match this pattern")
            found.extend(images)
            skipped.extend(passed)
        else:
            raise InputError(f"{path}: no such file or folder")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(str(path.resolve()), path)
    seen_skipped: dict[Path, Skipped] = {}
    for entry in skipped:
        seen_skipped.setdefault(entry.path, entry)
    return Gathered(list(unique.values()), list(seen_skipped.values()))


def _folder_images(folder: Path) -> tuple[list[Path], list[Skipped]]:
    """The image files below `folder`, sorted (linked folders not walked into, hidden files kept),
    and the entries worth a row: unreadable folders, and what is named like a photo but is none."""
    listing = walk_files(folder, hidden=True, follow_links=False)
    images = sorted(file for file in listing.files if is_image_file(file))
    passed = [
        entry for entry in listing.skipped if entry.kind == "unreadable_folder" or is_image_file(entry.path)
    ]
    return images, passed


def skipped_prediction(entry: Skipped) -> Prediction:
    """The error row of an input entry that was skipped."""
    return Prediction(source=str(entry.path), error=f"{entry.path}: {entry.reason}; skipped")


# --- writing results -------------------------------------------------------------------------------


def prediction_rows(prediction: Prediction) -> list[dict[str, Any]]:
    """The CSV rows of one photo: one per car (see the module docstring); one row without a car
    number for a photo with no car or an error."""
    cars = prediction.all_cars
    if not cars:
        return [_row(prediction, None)]
    return [_row(car, number) for number, car in enumerate(cars, start=1)]


def _row(prediction: Prediction, car: int | None) -> dict[str, Any]:
    """One CSV row; empty strings for missing values, and every text valid UTF-8 (a file name's
    other bytes as \\xNN)."""
    top1 = prediction.top1
    box = prediction.box
    timing = prediction.timing

    def level(score: Any) -> tuple[Any, Any]:
        return ("", "") if score is None else (score.value, round(score.probability, 6))

    make, make_probability = level(prediction.make)
    body_type, body_type_probability = level(prediction.body_type)
    year, year_probability = level(prediction.year)
    score = prediction.detection_score
    row = {
        "path": prediction.source,
        "car": "" if car is None else car,
        "detection_score": "" if score is None else round(score, 6),
        "label": prediction.label or "",
        "probability": "" if prediction.probability is None else round(prediction.probability, 6),
        "class": "" if top1 is None else top1.label,
        "make": make,
        "make_probability": make_probability,
        "model": "" if top1 is None or top1.model is None else top1.model,
        "body_type": body_type,
        "body_type_probability": body_type_probability,
        "year": year,
        "year_probability": year_probability,
        "unknown": "" if not prediction.ok or prediction.label is None else str(prediction.unknown).lower(),
        "reason": prediction.reason or "",
        "decode_ms": round(timing.decode_ms, 3),
        "preprocess_ms": round(timing.preprocess_ms, 3),
        "inference_ms": round(timing.inference_ms, 3),
        "total_ms": round(timing.total_ms, 3),
        "error": prediction.error or "",
    }
    for name, value in zip(("x1", "y1", "x2", "y2"), box.to_list() if box else ("",) * 4, strict=True):
        row[name] = "" if value == "" else round(float(value), 2)
    return {
        column: file_text(row[column]) if isinstance(row[column], str) else row[column]
        for column in CSV_COLUMNS
    }


def write_predictions(
    predictions: Sequence[Prediction], path: Path | str, model: dict[str, Any] | None = None
) -> Path:
    """Write CSV or JSON by the file's suffix, atomically. model: `Predictor.info()` for the JSON."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {path}: expected a .csv or .json file name")
    if suffix == ".json":
        write_json(
            path,
            safe_for_files(
                {
                    "format": PREDICTIONS_FORMAT,
                    "version": PREDICTIONS_VERSION,
                    "model": model,
                    "predictions": [prediction.to_dict() for prediction in predictions],
                }
            ),
        )
        return path
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(row for prediction in predictions for row in prediction_rows(prediction))
    write_atomic(path, buffer.getvalue())
    return path


def partial_path(out: Path | str) -> Path:
    """Where `run_predict` writes the rows of --out `out` as they finish: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


class PartialRows:
    """Rows written as they finish to `partial_path(out)`, flushed after each batch: CSV rows (with
    the header) for a .csv, one `Prediction.to_dict()` per line for a .json. `finish` writes --out
    itself (atomically) and removes the partial file; a run that dies before leaves it behind."""

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)
        self.path = partial_path(self.out)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._handle: IO[str] = self.path.open("w", encoding="utf-8", newline="")
        self._csv: csv.DictWriter[str] | None = None
        if self.out.suffix.lower() == ".csv":
            self._csv = csv.DictWriter(self._handle, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
            self._csv.writeheader()

    def add(self, predictions: Sequence[Prediction]) -> None:
        for prediction in predictions:
            if self._csv is not None:
                self._csv.writerows(prediction_rows(prediction))
            else:
                self._handle.write(
                    json.dumps(safe_for_files(prediction.to_dict()), ensure_ascii=False) + "\n"
                )
        self._handle.flush()
        self.rows += len(predictions)

    def finish(self, predictions: Sequence[Prediction], model: dict[str, Any] | None) -> Path:
        self._handle.close()
        written = write_predictions(predictions, self.out, model=model)
        self.path.unlink(missing_ok=True)
        return written

    def close(self) -> None:
        """Stop writing, keeping the partial file (the run did not finish)."""
        self._handle.close()


# --- the whole command ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictRun:
    """What `carid predict` did: the predictions, the files written and how long it took."""

    predictions: tuple[Prediction, ...]
    output: Path | None
    annotated: tuple[Path, ...]
    seconds: float
    model: dict[str, Any]

    @property
    def num_failed(self) -> int:
        return sum(not p.ok for p in self.predictions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": len(self.predictions),
            "num_failed": self.num_failed,
            "output": None if self.output is None else str(self.output),
            "annotated": [str(path) for path in self.annotated],
            "seconds": round(self.seconds, 3),
            "model": self.model,
        }


def run_predict(
    model: Path | str,
    inputs: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 16,
    backend: str = "auto",
    out: Path | str | None = None,
    annotate_dir: Path | str | None = None,
    threads: int | None = None,
    progress: bool = True,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    tta: str = "none",
) -> PredictRun:
    """Load the model, gather the photos, predict in batches (with a progress bar), write results.

    tta: "none" or "hflip" (`carid.runtime.tta`: each photo and its mirror image, averaged).
    Rows come in input order, those of skipped entries first; with `out`, each batch is written to
    `partial_path(out)` as it finishes (see the module docstring), so an interrupted run keeps them.

    Raises InputError (paths, output name), PredictorError / BundleError (the model).
    """
    started = time.perf_counter()
    if out is not None and Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {out}: expected a .csv or .json file name")
    gathered = gather_inputs(inputs)
    predictor = Predictor.load(model, backend=backend, threads=threads, tta=tta)
    info = predictor.info()
    predictions: list[Prediction] = []
    rows = None if out is None else PartialRows(out)
    try:
        with _progress_bar(progress, len(gathered.images) + len(gathered.skipped)) as advance:
            if gathered.skipped:
                skipped = [skipped_prediction(entry) for entry in gathered.skipped]
                _finished(skipped, predictions, rows, advance, on_batch)
            for batch in _predict_each(predictor, gathered.images, top_k, batch_size):
                _finished(batch, predictions, rows, advance, on_batch)
    except BaseException as exc:
        if rows is not None:
            rows.close()
            exc.add_note(f"the {rows.rows} rows finished before this are in {rows.path}")
        raise
    output = None if rows is None else rows.finish(predictions, info)
    annotated = [] if annotate_dir is None else write_annotated(predictions, annotate_dir)
    return PredictRun(
        predictions=tuple(predictions),
        output=output,
        annotated=tuple(annotated),
        seconds=time.perf_counter() - started,
        model=info,
    )


def _finished(
    batch: list[Prediction],
    predictions: list[Prediction],
    rows: PartialRows | None,
    advance: Callable[[int], None],
    on_batch: Callable[[list[Prediction]], None] | None,
) -> None:
    predictions.extend(batch)
    if rows is not None:
        rows.add(batch)
    advance(len(batch))
    if on_batch is not None:
        on_batch(batch)


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A transient "predicting" bar; yields advance(count)."""
    if not enabled:
        yield lambda count: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("predict", total=total)
        yield lambda count: bar.advance(task, count)


def _predict_each(
    predictor: Predictor, paths: Sequence[Path], top_k: int, batch_size: int
) -> Iterator[list[Prediction]]:
    """`predictor.predict_batches`, but a batch that raises (whatever Pillow or the runtime throws
    for one odd file) is predicted again a photo at a time; a photo that still raises gets an error
    row naming the exception, and the batches after it go on."""
    done = 0
    while done < len(paths):
        try:
            for batch in predictor.predict_batches(paths[done:], top_k=top_k, batch_size=batch_size):
                done += len(batch)
                yield batch
        except Exception:  # one bad file must not end the run: each photo of the batch says why
            chunk = paths[done : done + batch_size]
            yield [_predict_one(predictor, path, top_k) for path in chunk]
            done += len(chunk)


def _predict_one(predictor: Predictor, path: Path, top_k: int) -> Prediction:
    try:
        return predictor.predict([path], top_k=top_k)[0]
    except Exception as exc:  # reported in the photo's row
        return Prediction(
            source=str(path), error=f"{path}: cannot use this image ({type(exc).__name__}: {exc})"
        )
