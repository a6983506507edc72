"""Download candidate images into class folders, with a manifest that makes every run resumable.

`collect` (queries -> source -> candidates) and `collect_images` (candidates -> files) are the
entry points. A run: read the manifest, plan the jobs (`plan`: what to fetch, relabelled files
moved), fetch them (`engine`: HTTP, checks, storage; what happens to one URL is described there)
with a progress bar (`progress`), then write the summary.

Resuming: the manifest (`manifest.py`) is read first; URLs collected earlier whose file is still
there are skipped, failed ones too unless ``retry_failed``. A label changed in the input since
the earlier run moves the file to the new label's folder without downloading it again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from carid.data.collect.config import CollectConfig
from carid.data.collect.engine import Engine
from carid.data.collect.manifest import (
    MANIFEST_NAME,
    SUMMARY_NAME,
    CollectError,
    CollectSummary,
    ManifestRecord,
    ManifestWriter,
    count_outcomes,
    read_manifest,
)
from carid.data.collect.plan import plan_run, remove_partial_files, sha_index
from carid.data.collect.progress import ProgressBar
from carid.data.collect.sources import Candidate, SourceError, detect_source, get_source, search_all
from carid.data.samples import Problem
from carid.files import write_json


def collect_images(
    candidates: Iterable[Candidate],
    out_dir: Path | str,
    config: CollectConfig | None = None,
    *,
    retry_failed: bool = False,
    max_new: int | None = None,
    progress: bool = True,
    on_record: Callable[[ManifestRecord], None] | None = None,
    problems: Iterable[Problem] = (),
) -> CollectSummary:
    """Download `candidates` into ``out_dir/<folder>/``, resuming from the manifest already there.

    retry_failed: fetch again the URLs an earlier run failed on (by default they keep their outcome).
    max_new: fetch at most this many URLs in this run (the rest stay pending for the next run).
    on_record: called with each record right after it is written to the manifest.
    problems: input problems found before (by the sources), carried into the summary.

    Ctrl-C (KeyboardInterrupt, also when raised by `on_record`) stops the run cleanly: unfinished
    downloads are cancelled, finished ones are recorded, and the summary is returned with
    ``interrupted=True``. Writes manifest.jsonl (appended) and summary.json (atomically).
    Raises CollectError when `out_dir` cannot be used.
    """
    started = time.monotonic()
    config = config or CollectConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CollectError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    all_problems = list(problems)
    manifest_path = out_dir / MANIFEST_NAME
    interrupted = False
    with ManifestWriter(manifest_path) as writer:
        state = read_manifest(manifest_path)
        all_problems.extend(state.problems)
        plan = plan_run(candidates, state, out_dir, writer, retry_failed, all_problems)
        todo = plan.todo if max_new is None else plan.todo[: max(0, max_new)]
        remove_partial_files(out_dir, all_problems)
        with ProgressBar(len(todo), progress) as bar:
            engine = Engine(config, out_dir, writer, state.latest, sha_index(state, out_dir), on_record, bar)
            try:
                asyncio.run(engine.run(todo))
            except KeyboardInterrupt:
                interrupted = True
    counts, labels = count_outcomes(((job.url, job.label) for job in plan.jobs), state.latest)
    fetched = sum(engine.this_run.values())
    summary = CollectSummary(
        out_dir=str(out_dir),
        manifest=str(manifest_path),
        total=len(plan.jobs),
        fetched=fetched,
        skipped=len(plan.jobs) - len(plan.todo),
        counts=counts,
        this_run=dict(engine.this_run),
        labels=labels,
        folders=plan.folders,
        problems=tuple(all_problems),
        interrupted=interrupted,
        seconds=time.monotonic() - started,
    )
    write_json(out_dir / SUMMARY_NAME, summary.to_dict(), fsync=True)
    return summary


def collect(
    queries: Sequence[str],
    out_dir: Path | str,
    *,
    source: str | None = None,
    per_query: int = 0,
    source_options: Mapping[str, Any] | None = None,
    config: CollectConfig | None = None,
    retry_failed: bool = False,
    max_new: int | None = None,
    progress: bool = True,
    on_record: Callable[[ManifestRecord], None] | None = None,
) -> CollectSummary:
    """Ask `source` for candidates for each query, then `collect_images` them into `out_dir`.

    source: a registered or plugin source name; None picks "csv" for .csv files and "list" for
        .txt files or folders (every query must pick the same one).
    per_query: the `limit` handed to `ImageSource.search` (0 = all; per label for csv and list).
    Raises SourceError (unknown source, unreadable input) or CollectError (unusable out_dir).
    """
    queries = [str(query) for query in queries]
    if not queries:
        raise SourceError("nothing to collect from: give a CSV file, a URL list or search queries")
    if source is None:
        detected = {detect_source(query) for query in queries}
        if len(detected) > 1:
            raise SourceError(
                f"the inputs need different sources ({', '.join(sorted(detected))}); run once per kind"
            )
        source = detected.pop()
    image_source = get_source(source, **dict(source_options or {}))
    candidates, problems = search_all(image_source, queries, per_query)
    return collect_images(
        candidates,
        out_dir,
        config,
        retry_failed=retry_failed,
        max_new=max_new,
        progress=progress,
        on_record=on_record,
        problems=problems,
    )
