"""`carid predict MODEL SOURCE --engine ray`: the shards of a job predicted on a Ray cluster.

    run_ray_predict(model, ["photos/"], out="preds/", address="auto", workers=4) -> ScaleRun

The driver (this process) plans the shards (`carid.scale.sources`), keeps the ones already written
(`carid.scale.writer.finished_shard`) and hands the others to Ray Data as one item each:
`ray.data.from_items(...).map_batches(ShardPredictor, batch_size=1, compute=ActorPoolStrategy)`.
Each `ShardPredictor` actor loads the model once (`Predictor.load`: ONNX Runtime for a bundle, no
torch) and answers a shard per call; the driver writes each shard's file as its answer arrives,
so a job killed at any point keeps every shard it finished, and a rerun predicts only the rest. A
second job started on the same folder waits for the first (a lock on the folder, released by the
system even on kill -9) and then finds its shards written.

Ray is the scheduler here rather than hand-made multiprocessing because the same job then runs on
one machine or across many (`ray start --head` on one, `ray start --address HEAD:6379` on the
others), with actors restarted when a node goes away. Every node must see the model and the photos
at the same paths (a shared file system); relative paths are taken from the driver's folder. The
shard files are written by the driver only, so OUT needs to exist only where the command runs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carid.files import folder_lock, remove_stale_temporaries
from carid.runtime.predict_io import _predict_each
from carid.runtime.predictor import Predictor
from carid.runtime.results import Prediction
from carid.scale.sources import Item, ScaleError, Shard, plan_job
from carid.scale.writer import (
    JOB_FILE,
    MANIFEST_FILE,
    SHARD_FORMATS,
    ShardRecord,
    claim_folder,
    finished_shard,
    job_record,
    shard_path,
    write_manifest,
    write_shard,
)

DEFAULT_SHARD_SIZE = 256
INSTALL_HINT = 'install the Ray extra: pip install "carid[scale]"'

OnShard = Callable[[ShardRecord, int, int], None]


@dataclass(frozen=True)
class ScaleRun:
    """What a job did: every shard's record in order, those found finished from an earlier run,
    the manifest, the workers used and the time taken."""

    out: Path
    records: tuple[ShardRecord, ...]
    resumed: tuple[str, ...]
    manifest: Path
    workers: int
    seconds: float
    model: dict[str, Any]

    @property
    def photos(self) -> int:
        return sum(record.photos for record in self.records)

    @property
    def failed(self) -> int:
        return sum(record.failed for record in self.records)


class ShardPredictor:
    """The Ray Data actor: one model load, then one shard per call.

    A batch is {"shard": [index], "items": [JSON list of [path, skipped]]}; the answer is
    {"shard": [index], "predictions": [pickled list of `Prediction`]}, in the shard's order.
    """

    def __init__(
        self, model: str, backend: str, threads: int | None, tta: str, top_k: int, batch_size: int, cwd: str
    ) -> None:
        if os.path.isdir(cwd):  # the driver's folder: relative photo paths mean the same here
            os.chdir(cwd)
        self.predictor = Predictor.load(model, backend=backend, threads=threads, tta=tta)
        self.top_k = top_k
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        shards: list[int] = []
        answers: list[bytes] = []
        for index, text in zip(batch["shard"], batch["items"], strict=True):
            items = [Item(path, skipped) for path, skipped in json.loads(text)]
            shards.append(int(index))
            answers.append(pickle.dumps(predict_items(self.predictor, items, self.top_k, self.batch_size)))
        return {"shard": shards, "predictions": answers}


def predict_items(
    predictor: Predictor, items: Sequence[Item], top_k: int, batch_size: int
) -> list[Prediction]:
    """One `Prediction` per item, in order: the skipped ones as their error rows, the others as
    `carid predict` answers them (a batch that raises is retried a photo at a time)."""
    predictions: list[Prediction] = []
    run: list[Path] = []

    def flush() -> None:
        for answered in _predict_each(predictor, run, top_k, batch_size):
            predictions.extend(answered)
        run.clear()

    for item in items:
        if item.skipped is None:
            run.append(Path(item.path))
            continue
        flush()
        predictions.append(Prediction(source=item.path, error=item.skipped))
    flush()
    return predictions


def run_ray_predict(
    model: Path | str,
    inputs: Sequence[str | Path],
    out: Path | str,
    address: str | None = None,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    shard_format: str = "csv",
    top_k: int = 5,
    batch_size: int = 16,
    backend: str = "auto",
    threads: int | None = None,
    tta: str = "none",
    on_shard: OnShard | None = None,
) -> ScaleRun:
    """Predict the photos of `inputs` into shard files in `out` on Ray (see the module docstring).

    address: None starts Ray on this machine (or joins the cluster in RAY_ADDRESS), "auto" joins
        the cluster started here with `ray start`, "HOST:PORT" a cluster's head; when Ray is
        already initialised in this process, its cluster is used as it is.
    workers: actors, each with one model (default: the cluster's CPUs / threads per worker).
    threads: inference threads per actor, also the CPUs each reserves (default 1).
    on_shard(record, done, total): called after each shard is written (and for those found done).
    Raises ScaleError (Ray missing, OUT of another job), InputError / PredictorError as `carid predict`.
    """
    started = time.perf_counter()
    out = Path(out)
    if shard_format not in SHARD_FORMATS:
        raise ScaleError(f"shard format {shard_format!r} is not one of {', '.join(SHARD_FORMATS)}")
    plan = plan_job(inputs, shard_size)
    if not plan.items:
        raise ScaleError("no photos to predict")
    predictor = Predictor.load(model, backend=backend, threads=threads, tta=tta)  # checks it before Ray
    info = predictor.info()
    del predictor
    model_path = str(Path(model).resolve())
    settings = {"model": model_path, "backend": backend, "top_k": top_k, "tta": tta}
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):  # a second job on this folder waits, then finds the shards written
        claim_folder(out, job_record(plan, shard_format, settings))
        names = {shard_path(out, shard, shard_format).name for shard in plan.shards}
        remove_stale_temporaries(out, targets={*names, JOB_FILE, MANIFEST_FILE})

        records: dict[int, ShardRecord] = {}
        for shard in plan.shards:
            record = finished_shard(out, shard, shard_format)
            if record is not None:
                records[shard.index] = record
        resumed = tuple(records[index].name for index in sorted(records))
        total = len(plan.shards)
        if on_shard is not None:
            for count, index in enumerate(sorted(records), start=1):
                on_shard(records[index], count, total)
        todo = [shard for shard in plan.shards if shard.index not in records]
        used = 0
        if todo:
            per_worker = threads or 1
            constructor = {
                "model": model_path,
                "backend": backend,
                "threads": per_worker,
                "tta": tta,
                "top_k": top_k,
                "batch_size": batch_size,
                "cwd": os.getcwd(),
            }
            for shard, predictions, count in _ray_answers(todo, address, workers, per_worker, constructor):
                used = count
                record = write_shard(out, shard, predictions, shard_format)
                records[shard.index] = record
                if on_shard is not None:
                    on_shard(record, len(records), total)
        ordered = tuple(records[shard.index] for shard in plan.shards)
        seconds = time.perf_counter() - started
        details = {"engine": "ray", "workers": used, "shard_size": shard_size, "seconds": round(seconds, 3)}
        manifest = write_manifest(out, ordered, info, {**details, "resumed_shards": list(resumed)})
        return ScaleRun(out, ordered, resumed, manifest, used, seconds, info)


def _ray_answers(
    todo: Sequence[Shard],
    address: str | None,
    workers: int | None,
    per_worker: int,
    constructor: dict[str, Any],
) -> Any:
    """Yield (shard, predictions, workers) as the actors finish shards, in any order."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as exc:
            raise ScaleError(
                f"--address {address}: cannot join a Ray cluster ({exc})",
                hint="start one with `ray start --head`, or leave --address out to run Ray on this machine",
            ) from None
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // per_worker)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        by_index = {shard.index: shard for shard in todo}
        items = [
            {"shard": shard.index, "items": json.dumps([[item.path, item.skipped] for item in shard.items])}
            for shard in todo
        ]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardPredictor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))),
            fn_constructor_kwargs=constructor,
            num_cpus=per_worker,
        )
        for row in dataset.iter_rows():
            yield by_index[int(row["shard"])], pickle.loads(row["predictions"]), min(workers, len(todo))
    finally:
        if started_here:
            ray.shutdown()


def import_ray() -> Any:
    """The `ray` module with Ray Data, or a ScaleError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ScaleError(f"the Ray engine needs Ray Data ({exc})", hint=INSTALL_HINT) from None
    return ray
