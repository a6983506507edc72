"""Batch prediction at scale: the photos of a folder, a list file or a manifest cut into fixed shards,
predicted on a Ray cluster by actors that each load the model once, each shard written atomically
so that a rerun after a failure skips the finished ones (the `carid[scale]` extra; docs/scale.md).

    sources.py     inputs -> the ordered photos -> shards with stable ids
    writer.py      a shard's file (CSV or Parquet, the columns of `carid predict`), resume checks,
                   the job's record and manifest
    ray_engine.py  the Ray Data job: actors holding a `Predictor`, one shard per call

Nothing here imports Ray at import time: `ray_engine` imports it when a job starts.
"""
