"""Open every image once, in parallel, and fingerprint it; find exact and near duplicates.

`fingerprint_files` reads each file's bytes once and, from them:
- `probe_image(..., decode=False)` gives the header facts (format, mode, size after EXIF
  orientation, extension that promises another format);
- `load_rgb` decodes every pixel, which is what catches truncated and corrupt files (its
  `ImageError.kind` says which), and the same decoded pixels give the perceptual hash;
- the MD5 of the bytes identifies exact copies.
So each image is decoded exactly once (a full `probe_image` decode followed by `load_rgb` would
decode it twice for the same verdict). Failures come back as `ProbeFailure` records, never as
exceptions, so one bad file never stops the others.

Work is spread over a process pool (decoding is CPU-bound and holds the GIL), in chunks of
files so the per-task overhead stays small, with a rich progress bar. Small inputs are done in
process: starting a pool costs more than it saves below `POOL_MIN_IMAGES` images. The pool uses
the "forkserver" start method where it exists (else "spawn"): forking a parent that runs
threads (the progress bar's refresh thread, torch's thread pools) can deadlock the child. As
with any non-fork pool, a script that calls this at import level needs the usual
`if __name__ == "__main__":` guard.

Near duplicates: `imagehash.phash` gives a 64-bit DCT hash, held here as uint64. Pairs within a
Hamming distance are found by brute force, vectorized: a block of rows XOR all later hashes, then
a popcount (`np.bitwise_count` in numpy 2, a byte lookup table before). That is n²/2 cheap
operations, about 0.3 s for 10,000 images on one core, exact, and needs no tree. A BK-tree would
visit nodes one by one in Python; at 64 bits with radius 4 it still touches a large share of the
tree per query, so at this size it is both slower and more code. Past ~100k images the
pigeonhole trick (split the 64 bits into radius+1 bands; a close pair agrees exactly on one band)
would be the next step. Pairs become groups by union-find (connected components), so a chain
a~b~c is one group even if a and c are further apart than the threshold.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from carid.data.listing import not_regular
from carid.images import ImageError, load_rgb, probe_image

# Below this many files the pool's start-up (a fresh interpreter per worker importing numpy,
# Pillow and imagehash, about 0.5 s) costs more than it saves on two cores.
POOL_MIN_IMAGES = 400
# Files per pool task: large enough to amortise the inter-process round trip, small enough for
# a smooth progress bar and an even share of work between workers.
MAX_CHUNK = 128
MIN_CHUNK = 8
# Rows of the hash matrix XORed at once: BLOCK x N uint64 values (20 MB at 10k images); smaller
# blocks stay in cache better (measured: 256 rows ~0.2-0.3 s for 10k hashes, 1024 rows ~0.35 s).
HAMMING_BLOCK = 256


@dataclass(frozen=True)
class ImageFacts:
    """What opening and decoding one image file told us.

    width/height: pixels, after EXIF orientation (what training sees).
    format: Pillow's name for what the bytes hold ("JPEG", "PNG", "GIF", ...).
    mode: Pillow mode of the file ("RGB", "L", "CMYK", "P", ...).
    md5: hex digest of the file bytes (32 characters).
    phash: 64-bit perceptual hash as 16 hex characters (`imagehash.phash`).
    file_bytes: file size in bytes.
    format_mismatch: the file extension promises another format than the bytes hold.
    """

    width: int
    height: int
    format: str
    mode: str
    md5: str
    phash: str
    file_bytes: int
    format_mismatch: bool

    @property
    def phash_int(self) -> int:
        return int(self.phash, 16)

    def to_dict(self) -> dict[str, object]:
        return {
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "mode": self.mode,
            "md5": self.md5,
            "phash": self.phash,
            "file_bytes": self.file_bytes,
            "format_mismatch": self.format_mismatch,
        }


@dataclass(frozen=True)
class ProbeFailure:
    """A file that cannot be used. kind: `ImageError.kind` (missing_file, not_an_image,
    truncated_image, unreadable_image, too_many_pixels), or not_a_regular_file (a FIFO, a socket,
    a device: never opened); reason: the message without the path."""

    kind: str
    reason: str


ProbeOutcome = ImageFacts | ProbeFailure


def fingerprint_file(path: Path | str) -> ProbeOutcome:
    """Read, fully decode and fingerprint one image file; never raises for a bad file."""
    name = str(path)
    special = not_regular(Path(path))  # reading a FIFO waits for a writer forever: never open one
    if special is not None:
        return ProbeFailure(special.kind, special.reason)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return ProbeFailure("missing_file", "file not found")
    except OSError as exc:
        return ProbeFailure("unreadable_image", f"cannot read the file ({exc.strerror or exc})")
    if not data:
        return ProbeFailure("not_an_image", "empty file (0 bytes)")
    try:
        info = probe_image(data, name, decode=False)
        rgb = load_rgb(data, name)
    except ImageError as exc:
        return ProbeFailure(exc.kind, exc.reason)
    except (SyntaxError, ValueError, TypeError) as exc:  # Pillow raises these for some corrupt files
        return ProbeFailure("unreadable_image", f"cannot decode ({exc})")
    with rgb:
        perceptual = str(imagehash.phash(rgb))
    return ImageFacts(
        width=info.width,
        height=info.height,
        format=info.format,
        mode=info.mode,
        md5=hashlib.md5(data).hexdigest(),
        phash=perceptual,
        file_bytes=len(data),
        format_mismatch=info.suffix_mismatch,
    )


def _fingerprint_chunk(paths: list[str]) -> list[ProbeOutcome]:
    """Pool task: fingerprint a chunk of files (module-level so that it pickles by name). Pillow's
    warnings about odd files are not shown (the file's problem says what is wrong with it)."""
    warnings.filterwarnings("ignore", module="PIL")
    return [fingerprint_file(path) for path in paths]


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one, else os.cpu_count())."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int) -> int:
    """`CheckConfig.workers` -> a process count: 0 means one per available CPU."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per CPU), got {workers}")
    return workers or available_cpus()


def chunk_size(n_files: int, workers: int) -> int:
    """About 16 tasks per worker, clamped to [MIN_CHUNK, MAX_CHUNK] files."""
    return max(MIN_CHUNK, min(MAX_CHUNK, n_files // max(1, workers * 16)))


def planned_processes(n_files: int, workers: int) -> int:
    """How many processes `fingerprint_files` uses for `n_files`: 1 (in process) below
    `POOL_MIN_IMAGES` files or for one worker, else `workers` (0 = one per CPU) capped at the
    number of chunks."""
    processes = resolve_workers(workers)
    if processes <= 1 or n_files < POOL_MIN_IMAGES:
        return 1
    chunks = -(-n_files // chunk_size(n_files, processes))
    return max(1, min(processes, chunks))


def _pool_context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # The server imports these once; every worker forked from it starts with them loaded
    # (scipy.fftpack alone, which imagehash.phash imports, takes ~0.4 s per process).
    # No effect once a forkserver is running.
    context.set_forkserver_preload(["carid.data.hashing", "scipy.fftpack"])
    return context


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def fingerprint_files(
    paths: Sequence[Path | str],
    workers: int = 0,
    progress: bool = True,
    description: str = "Checking images",
) -> list[ProbeOutcome]:
    """`fingerprint_file` for every path, in order; in a process pool of `workers` (0 = one per
    CPU) unless there are fewer than `POOL_MIN_IMAGES` files or a single worker."""
    names = [str(path) for path in paths]
    processes = planned_processes(len(names), workers)
    outcomes: list[ProbeOutcome | None] = [None] * len(names)
    with _progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(names))
        if processes == 1:
            for index, name in enumerate(names):
                outcomes[index] = fingerprint_file(name)
                bar.advance(task)
        else:
            _run_pool(names, processes, outcomes, lambda done: bar.advance(task, done))
    missing = [names[i] for i, outcome in enumerate(outcomes) if outcome is None]
    if missing:  # cannot happen unless a pool task lost results; never return a misaligned list
        raise RuntimeError(f"no result for {len(missing)} file(s), e.g. {missing[0]}")
    return outcomes  # type: ignore[return-value]


def _run_pool(
    names: list[str], processes: int, outcomes: list[ProbeOutcome | None], advance: Callable[[int], None]
) -> None:
    size = chunk_size(len(names), processes)
    starts = range(0, len(names), size)
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=_pool_context())
    try:
        futures: dict[Future[list[ProbeOutcome]], int] = {
            pool.submit(_fingerprint_chunk, names[start : start + size]): start for start in starts
        }
        for future in as_completed(futures):
            start = futures[future]
            chunk = future.result()
            outcomes[start : start + len(chunk)] = chunk
            advance(len(chunk))
    except BaseException:  # Ctrl-C or a dead worker: do not wait for the queued chunks
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# --- near-duplicate search --------------------------------------------------------------------

_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64, same shape, uint8."""
    values = np.ascontiguousarray(values, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


def hashes_to_uint64(hex_hashes: Sequence[str]) -> np.ndarray:
    """16-hex-character hashes -> uint64 array [N]."""
    return np.array([int(value, 16) for value in hex_hashes], dtype=np.uint64)


def close_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) whose 64-bit hashes differ in at most `max_distance` bits.

    hashes: uint64 [N]. Returns (pairs int64 [P, 2], distances int64 [P]), pairs sorted by i then j.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    found_pairs: list[np.ndarray] = []
    found_distances: list[np.ndarray] = []
    for start in range(0, len(hashes), HAMMING_BLOCK):
        rows = hashes[start : start + HAMMING_BLOCK]
        later = hashes[start:]  # columns from `start` on: the upper triangle and the diagonal block
        distances = popcount64(rows[:, None] ^ later[None, :])
        row, column = np.nonzero(distances <= max_distance)
        keep = column > row  # drop self pairs and the lower half of the diagonal block
        row, column = row[keep], column[keep]
        found_pairs.append(np.stack([row + start, column + start], axis=1))
        found_distances.append(distances[row, column].astype(np.int64))
    if not found_pairs:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(found_pairs).astype(np.int64), np.concatenate(found_distances)


def connected_groups(n_items: int, pairs: np.ndarray) -> list[list[int]]:
    """Union-find over `pairs` [P, 2]: the components with at least two items, each sorted,
    ordered by their smallest item."""
    parent = list(range(n_items))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for first, second in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
        a, b = root(first), root(second)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for item in range(n_items):
        members.setdefault(root(item), []).append(item)
    return sorted((group for group in members.values() if len(group) > 1), key=lambda group: group[0])
