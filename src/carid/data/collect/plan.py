"""Planning a collection run: the input's distinct URLs as jobs, and which of them this run fetches.

The manifest of earlier runs is read first; URLs collected earlier whose file is still there are
skipped, failed ones too unless ``retry_failed``. A label changed in the input since the earlier
run moves the file to the new label's folder without downloading it again (`relabel`). Also here:
the index of the images already stored (for duplicates) and the clean-up of unfinished downloads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from carid.data.collect.manifest import (
    FolderNames,
    ManifestRecord,
    ManifestState,
    ManifestWriter,
    Outcome,
    timestamp_now,
)
from carid.data.collect.sources import Candidate
from carid.data.samples import Problem, Severity

PART_SUFFIX = ".part"  # temporary downloads end so; `remove_partial_files` deletes leftovers


@dataclass(frozen=True)
class Job:
    """One distinct URL of the input, with its label, safe folder and where it came from."""

    url: str
    label: str
    folder: str
    origin: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """What `plan_run` decided: every job of the input, those to fetch now, label -> folder."""

    jobs: list[Job]  # every distinct URL of the input, in input order
    todo: list[Job]  # those to fetch in this run
    folders: dict[str, str]


def jobs_from_candidates(
    candidates: Iterable[Candidate], folders: FolderNames, problems: list[Problem]
) -> list[Job]:
    """Distinct, complete candidates as jobs; empty fields and repeated URLs become problems."""
    jobs: list[Job] = []
    first: dict[str, Job] = {}
    for candidate in candidates:
        url, label = candidate.url.strip(), candidate.label.strip()
        where = candidate.origin or "input"
        if not url:
            problems.append(Problem("missing_url", f"no URL (label {label!r}); skipped", source=where))
            continue
        if not label:
            problems.append(Problem("missing_label", f"no label for {url}; skipped", source=where))
            continue
        earlier = first.get(url)
        if earlier is not None:
            if earlier.label == label:
                problems.append(
                    Problem(
                        "repeated_url",
                        f"{url} is listed again (first at {earlier.origin}); fetched once",
                        source=where,
                        severity=Severity.INFO,
                    )
                )
            else:
                problems.append(
                    Problem(
                        "conflicting_label",
                        f"{url} is labelled {label!r} here but {earlier.label!r} at {earlier.origin}; "
                        f"kept {earlier.label!r}",
                        source=where,
                        severity=Severity.WARNING,
                    )
                )
            continue
        job = Job(url, label, folders.folder(label), where, dict(candidate.meta))
        first[url] = job
        jobs.append(job)
    return jobs


def relabel(
    previous: ManifestRecord, job: Job, out_dir: Path, writer: ManifestWriter, problems: list[Problem]
) -> ManifestRecord | None:
    """Move an earlier run's file to the folder of the URL's new label (no download).

    Returns the new record (already written), or None when the file cannot be moved (a WARNING
    problem ``relabel_failed`` says why, and the URL is to be fetched again).
    """
    path = previous.path
    message = f"label changed from {previous.label!r} to {job.label!r}"
    if previous.outcome is Outcome.OK and path is not None:
        new_path = f"{job.folder}/{Path(path).name}"
        target = out_dir / new_path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out_dir / path, target)
        except OSError as exc:
            problems.append(
                Problem(
                    "relabel_failed",
                    f"{job.url}: cannot move {path} to {new_path} ({exc}); fetching it again",
                    source=job.origin,
                    severity=Severity.WARNING,
                )
            )
            return None
        message += f"; moved from {path}"
        path = new_path
    record = replace(
        previous, label=job.label, folder=job.folder, path=path, message=message, fetched_at=timestamp_now()
    )
    writer.write(record)
    problems.append(Problem("relabelled", f"{job.url}: {message}", source=job.origin, severity=Severity.INFO))
    return record


def plan_run(
    candidates: Iterable[Candidate],
    state: ManifestState,
    out_dir: Path,
    writer: ManifestWriter,
    retry_failed: bool,
    problems: list[Problem],
) -> Plan:
    """The input's jobs and those this run fetches: new URLs, collected ones whose file is gone, failed
    ones when `retry_failed` or relabelled; files of relabelled URLs are moved (recorded in `writer`)."""
    folders = FolderNames(state.folders())
    jobs = jobs_from_candidates(candidates, folders, problems)
    todo: list[Job] = []
    for job in jobs:
        previous = state.latest.get(job.url)
        if previous is None:
            todo.append(job)
        elif previous.succeeded:
            if previous.path is None or not (out_dir / previous.path).is_file():
                todo.append(job)  # collected earlier, but the file is gone
            elif previous.label != job.label:
                moved = relabel(previous, job, out_dir, writer, problems)
                if moved is None:
                    todo.append(job)
                else:
                    state.latest[job.url] = moved
        elif retry_failed or previous.label != job.label:
            todo.append(job)
    return Plan(jobs, todo, {job.label: job.folder for job in jobs})


def sha_index(state: ManifestState, out_dir: Path) -> dict[str, tuple[str, str, str]]:
    """sha256 -> (path, url, label) of every stored image the manifest knows and the disk still has."""
    index: dict[str, tuple[str, str, str]] = {}
    for record in state.latest.values():
        if (
            record.outcome is Outcome.OK
            and record.sha256
            and record.path
            and (out_dir / record.path).is_file()
        ):
            index.setdefault(record.sha256, (record.path, record.url, record.label))
    return index


def remove_partial_files(out_dir: Path, problems: list[Problem]) -> None:
    """Delete ``.<name>.part`` files an earlier run left when it was killed mid-write."""
    leftovers = [path for path in out_dir.glob("*/.*.part") if path.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers:
        problems.append(
            Problem(
                "partial_files_removed",
                f"removed {len(leftovers)} unfinished download(s) left by an interrupted run",
                source=str(out_dir),
                severity=Severity.INFO,
            )
        )
