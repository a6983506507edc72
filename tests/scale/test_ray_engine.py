"""Tests for carid.scale.ray_engine: on a Ray cluster on this machine (2 CPUs, loopback), the shards
hold exactly the rows `carid predict` writes, and a job killed with SIGKILL half-way resumes without
redoing finished shards or repeating a photo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from carid.runtime.predict_io import run_predict
from carid.runtime.predictor import Predictor
from carid.scale.ray_engine import predict_items, run_ray_predict
from carid.scale.sources import Item
from carid.scale.writer import MANIFEST_FILE, read_shard
from tests.scale.conftest import write_photos

TIMING_COLUMNS = ("decode_ms", "preprocess_ms", "inference_ms", "total_ms")
PHOTOS = 300
REPO = Path(__file__).resolve().parents[2]


def test_predict_items_keeps_order_and_error_rows(tmp_path: Path, scale_bundle: Path) -> None:
    photos = [str(path) for path in write_photos(tmp_path, 4)]
    items = [Item(photos[0]), Item("pipe.jpg", "pipe.jpg: a FIFO; skipped"), *map(Item, photos[1:])]
    answers = predict_items(Predictor.load(scale_bundle), items, top_k=2, batch_size=2)
    assert [answer.source for answer in answers] == [item.path for item in items]
    assert answers[1].error == "pipe.jpg: a FIFO; skipped" and all(
        a.ok for a in answers if a is not answers[1]
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray cluster on this machine with 2 CPUs; yields the address other drivers join it by."""
    ray = pytest.importorskip(
        "ray", reason="the Ray engine needs the scale extra: pip install 'carid[scale]'"
    )
    pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install 'carid[scale]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, scale_bundle: Path) -> tuple[Path, list[dict[str, str]]]:
    """A folder of photos (one broken, one FIFO) and the rows local `carid predict` writes for it."""
    root = tmp_path_factory.mktemp("ray-job")
    write_photos(root / "photos", PHOTOS - 2)
    (root / "photos" / "part0" / "broken.jpg").write_text("not a photo", encoding="utf-8")
    os.mkfifo(root / "photos" / "part1" / "pipe.jpg")
    local = run_predict(scale_bundle, [root / "photos"], out=root / "local.csv", progress=False)
    assert local.output is not None
    return root / "photos", read_shard(local.output)


def rows_of(out: Path) -> list[dict[str, str]]:
    """Every shard's rows in shard order."""
    return [row for path in sorted(out.glob("shard-*")) for row in read_shard(path)]


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS} for row in rows]


def test_rows_equal_carid_predict(cluster: str, job, scale_bundle: Path, tmp_path: Path) -> None:
    photos, local = job
    run = run_ray_predict(scale_bundle, [photos], tmp_path / "out", workers=2, shard_size=40)
    assert run.workers == 2 and run.resumed == () and run.photos == PHOTOS and run.failed == 2
    assert [record.file for record in run.records] == [f"shard-{i:05d}.csv" for i in range(8)]
    rows = rows_of(tmp_path / "out")
    assert list(rows[0]) == list(local[0]) and without_timing(rows) == without_timing(local)
    assert (tmp_path / "out" / MANIFEST_FILE).is_file()


KILLED_JOB = """
import sys, time
import ray
from carid.scale.ray_engine import run_ray_predict

address, bundle, photos, out = sys.argv[1:]
ray.init(address=address, log_to_driver=False, configure_logging=False)

def on_shard(record, done, total):
    if done == 3:
        print("three shards written", flush=True)
        time.sleep(600)  # killed here

run_ray_predict(bundle, [photos], out, workers=1, shard_size=32, shard_format="parquet", on_shard=on_shard)
"""


def test_a_killed_job_resumes_without_redoing_or_repeating(
    cluster: str, job, scale_bundle: Path, tmp_path: Path
) -> None:
    photos, local = job
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(KILLED_JOB),
            cluster,
            str(scale_bundle),
            str(photos),
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "three shards written", "the job died before 3 shards"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and what it started, not the cluster
        process.wait(timeout=30)
    written = {path.name: path.stat().st_mtime_ns for path in out.glob("shard-*")}
    assert len(written) == 3 and not (out / MANIFEST_FILE).exists()
    stale = out / f".shard-00009.parquet.{process.pid}-abcd1234.tmp"
    stale.write_bytes(b"half a shard")  # what a kill during a write leaves

    time.sleep(0.01)
    run = run_ray_predict(scale_bundle, [photos], out, workers=2, shard_size=32, shard_format="parquet")
    assert sorted(run.resumed) == sorted(name.removesuffix(".parquet") for name in written)
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written, "finished shards redone"
    assert not stale.exists() and len(list(out.glob("shard-*"))) == 10
    rows = rows_of(out)
    assert Counter(row["path"] for row in rows).most_common(1)[0][1] == 1, "a photo answered twice"
    assert without_timing(rows) == without_timing(local)
