"""The output folder of a scaled prediction job: one file per shard, the job's record, the manifest.

    OUT/job.json                  what the shards answer: the photos' digest, shard size, format,
                                  model and options; a rerun with other settings is refused
    OUT/shard-00042.csv|.parquet  the rows of `carid predict` for shard 42's photos
    OUT/manifest.json             written when every shard is done: the shards, their counts, the model

Rows are `carid.runtime.predict_io.prediction_rows`, the columns `CSV_COLUMNS`, so a CSV shard is
exactly what `carid predict --out x.csv` writes for those photos (it is written by the same
`write_predictions`). A Parquet shard holds the same columns typed: text columns as strings (empty
strings kept), `car` as a nullable integer, the rest as nullable float64 (an empty CSV cell is null).

Every shard is written with `carid.files.write_atomic`, so a shard file is whole or absent; a kill
leaves at most a hidden temporary, which `remove_stale_temporaries` clears on the next run. On a
rerun, a shard whose file exists and answers exactly the shard's photos is finished and skipped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from carid.files import write_atomic, write_json
from carid.runtime.predict_io import CSV_COLUMNS, prediction_rows, write_predictions
from carid.runtime.results import Prediction
from carid.scale.sources import SHARD_PREFIX, Plan, ScaleError, Shard

SHARD_FORMATS = ("csv", "parquet")
JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
JOB_FORMAT = "carid.scale-job"
MANIFEST_FORMAT = "carid.scale-predictions"
VERSION = 1
TEXT_COLUMNS = ("path", "label", "class", "make", "model", "body_type", "year", "unknown", "reason", "error")
INTEGER_COLUMNS = ("car",)
FLOAT_COLUMNS = tuple(column for column in CSV_COLUMNS if column not in (*TEXT_COLUMNS, *INTEGER_COLUMNS))


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard: its file (name in OUT), photos, rows and photos with an error."""

    name: str
    file: str
    photos: int
    rows: int
    failed: int


def shard_path(out: Path, shard: Shard, shard_format: str) -> Path:
    if shard_format not in SHARD_FORMATS:
        raise ScaleError(f"shard format {shard_format!r} is not one of {', '.join(SHARD_FORMATS)}")
    return out / f"{shard.name}.{shard_format}"


# --- the job's record --------------------------------------------------------------------------------


def job_record(plan: Plan, shard_format: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What the shards of OUT answer; `settings`: the model and the options that change rows."""
    return {
        "format": JOB_FORMAT,
        "version": VERSION,
        "photos": len(plan.items),
        "digest": plan.digest,
        "shard_size": plan.shard_size,
        "shard_format": shard_format,
        **settings,
    }


def claim_folder(out: Path, record: dict[str, Any]) -> bool:
    """Write OUT/job.json for a new job, or check that the one there is the same job; True when it
    was there (a rerun). Raises ScaleError naming what differs: shards of two jobs never mix."""
    path = out / JOB_FILE
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ScaleError(f"{path}: cannot read this job record ({exc})") from None
        differ = sorted(key for key in set(existing) | set(record) if existing.get(key) != record.get(key))
        if differ:
            raise ScaleError(
                f"{out}: holds the shards of another job (it differs in {', '.join(differ)})",
                hint="give another --out folder, or remove this one to start over",
            )
        return True
    if out.is_dir() and any(out.glob(f"{SHARD_PREFIX}*")):
        raise ScaleError(f"{out}: holds shard files but no {JOB_FILE}; give another --out folder")
    write_json(path, record, fsync=True)
    return False


# --- shard files -----------------------------------------------------------------------------------------


def write_shard(out: Path, shard: Shard, predictions: Sequence[Prediction], shard_format: str) -> ShardRecord:
    """The rows of `predictions` (one per car, as `carid predict`) to the shard's file, atomically."""
    path = shard_path(out, shard, shard_format)
    rows = [row for prediction in predictions for row in prediction_rows(prediction)]
    if shard_format == "csv":
        write_predictions(predictions, path)
    else:
        table = _parquet_table(rows)

        def write(stream: IO[bytes]) -> None:
            import pyarrow.parquet as pq

            pq.write_table(table, stream)

        write_atomic(path, write)
    failed = sum(not prediction.ok for prediction in predictions)
    return ShardRecord(shard.name, path.name, len(predictions), len(rows), failed)


def read_shard(path: Path) -> list[dict[str, str]]:
    """A shard's rows as CSV text, whichever its format (a Parquet null as an empty string)."""
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as stream:
            return list(csv.DictReader(stream))
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [{key: "" if value is None else str(value) for key, value in row.items()} for row in rows]


def finished_shard(out: Path, shard: Shard, shard_format: str) -> ShardRecord | None:
    """The record of a shard whose file is there and answers exactly its photos, in order; None
    when it must be (re)done (no file, an unreadable one, or one for other photos)."""
    path = shard_path(out, shard, shard_format)
    if not path.is_file():
        return None
    try:
        rows = read_shard(path)
    except Exception:  # whatever a damaged file raises in csv or pyarrow: predict the shard again
        return None
    photos: dict[str, bool] = {}
    for row in rows:
        photos[row.get("path", "")] = photos.get(row.get("path", ""), False) or bool(row.get("error"))
    if tuple(photos) != shard.paths:
        return None
    return ShardRecord(shard.name, path.name, len(photos), len(rows), sum(photos.values()))


def _parquet_table(rows: Sequence[dict[str, Any]]) -> Any:
    import pyarrow as pa

    fields = [
        pa.field(
            column,
            pa.string()
            if column in TEXT_COLUMNS
            else pa.int64()
            if column in INTEGER_COLUMNS
            else pa.float64(),
        )
        for column in CSV_COLUMNS
    ]

    def cell(column: str, value: Any) -> Any:
        if column in TEXT_COLUMNS:
            return str(value)
        if value == "" or value is None:
            return None
        return int(value) if column in INTEGER_COLUMNS else float(value)

    columns = {column: [cell(column, row[column]) for row in rows] for column in CSV_COLUMNS}
    return pa.table(columns, schema=pa.schema(fields))


# --- the manifest --------------------------------------------------------------------------------------


def write_manifest(
    out: Path, records: Sequence[ShardRecord], model: dict[str, Any], details: dict[str, Any]
) -> Path:
    """OUT/manifest.json: every shard in order with its counts, the totals, the model's info and
    `details` (engine, workers, seconds, ...)."""
    return write_json(
        out / MANIFEST_FILE,
        {
            "format": MANIFEST_FORMAT,
            "version": VERSION,
            "columns": list(CSV_COLUMNS),
            "photos": sum(record.photos for record in records),
            "rows": sum(record.rows for record in records),
            "failed": sum(record.failed for record in records),
            **details,
            "shards": [asdict(record) for record in records],
            "model": model,
        },
    )
