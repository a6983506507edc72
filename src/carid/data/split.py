"""Train/val/test splits: seeded, stratified by class and by has-box, group-aware, saved as CSV.

How `make_split` assigns samples (the reproducibility contract; changing it changes users' splits):

1. Stratum of a sample = (label, has_box), so every class and the with/without-box mix are
   represented in each split in proportion.
2. Samples are identified by a *portable key*: the path relative to the dataset root, with "/"
   separators (`portable_key`). Within a stratum, samples are sorted by that key and then shuffled
   by NumPy's PCG64 generator (`numpy.random.default_rng`, platform independent) seeded from
   (seed, sha256 of the stratum name). So the same seed gives the same split whatever the listing
   order, the operating system or the place the dataset lives, and adding a class does not
   reshuffle the others.
3. Counts: the split totals are the largest-remainder rounding of N * fraction, so they are exact;
   each stratum's count per split is its exact share rounded down or up (controlled rounding: the
   cells with the largest fractional parts are rounded up first, under the totals). All arithmetic
   is done on exact fractions, not floats.
4. Tiny strata: a stratum with fewer than `MIN_STRATUM_FOR_HOLDOUT` (3) samples goes entirely to
   train (1-2 images in val/test say nothing about a class, and would leave it untrained), and is
   not counted in the totals of step 3. Every other stratum keeps at least one sample in train.
   Hence every class with at least one sample appears in train.
5. Groups (e.g. near-duplicate groups found by the checks, see `group_ids_by_path`): all members
   of a group go to the same split (leakage guard), and so do samples of the same file (same
   portable key). A group counts in the stratum most of its members belong to (ties: the first
   stratum name); totals are then only as exact as the group sizes allow. Video frames can be
   grouped by blocks of frame numbers (`frame_block_groups`, `DataConfig.frame_block`), so that
   neighbouring frames of one video share a split.
6. Format splits: with `use_format_split`, a split the format defines (`Sample.split`, e.g. VOC
   trainval -> "train", test -> "test"; Stanford train/test) is kept. Whichever of "val" and
   "test" the format does not define is carved out of the format's train part with the configured
   ratios (e.g. val share = val / (train + val) when the format defines test; a folder tree with only
   train/ gets val and test), stratified the same way. Samples the format leaves unassigned are
   split three ways as above.

Saved splits (`save_split`): the CSV written by `SampleTable.to_csv` (path, label, split, width,
height, boxes, box_labels, source) is enough on its own to train. Paths are stored as the reader
gave them (usually absolute), so the file works as is on the machine that made it. A JSON sidecar
`<csv name>.json` (e.g. ``split.csv.json``) records what the CSV cannot: the dataset's class order,
root and format, the seed and fractions, and a fingerprint of the split computed on portable keys
(`split_fingerprint`), which is identical on every machine for the same seed. `load_split` uses the
sidecar when present (class order; `data_root=` re-roots the paths when the dataset has moved) and
falls back to sorted class names without it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import floor
from pathlib import Path
from typing import Any

import numpy as np

from carid.config import DataConfig
from carid.data.samples import Sample, SampleTable

SPLITS: tuple[str, str, str] = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2

# Strata smaller than this go entirely to train (see the module docstring, rule 4).
MIN_STRATUM_FOR_HOLDOUT = 3

SIDECAR_VERSION = 1


def portable_key(path: Path | str, root: Path | str) -> str:
    """The path relative to the dataset root with "/" separators; the path itself when outside it.

    When `root` is an annotation file rather than a folder, paths beside it are made relative to
    its folder.
    """
    path, root = Path(path), Path(root)
    for base in (root, root.parent):
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            continue
    return path.as_posix()


def _stratum_name(sample: Sample) -> str:
    # repr() keeps a missing label (None) apart from a class literally named "None".
    return f"{sample.label!r}|{'box' if sample.has_box else 'no-box'}"


def _exact_shares(
    fractions: Sequence[float] | None, val_fraction: float, test_fraction: float
) -> tuple[Fraction, Fraction, Fraction]:
    """(train, val, test) as exact fractions summing to 1; ValueError naming the bad value."""
    if fractions is None:
        val, test = Fraction(str(float(val_fraction))), Fraction(str(float(test_fraction)))
        values = [1 - val - test, val, test]
    else:
        if len(fractions) != 3:
            raise ValueError(f"fractions must be (train, val, test), got {tuple(fractions)}")
        values = [Fraction(str(float(value))) for value in fractions]
    for name, value in zip(SPLITS, values, strict=True):
        if value < 0:
            raise ValueError(f"{name} fraction must be >= 0, got {float(value):g}")
    if values[TRAIN] <= 0:
        raise ValueError(f"train fraction must be > 0, got {float(values[TRAIN]):g}")
    total = sum(values)
    if abs(total - 1) > Fraction(1, 10**6):
        raise ValueError(f"train + val + test fractions must sum to 1, got {float(total):g}")
    train, val, test = (value / total for value in values)
    return train, val, test


def _largest_remainder(total: int, shares: Sequence[Fraction]) -> list[int]:
    """Integer counts summing to `total`, each the floor or ceiling of total * share."""
    exact = [total * share for share in shares]
    counts = [floor(value) for value in exact]
    order = sorted(range(len(shares)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: total - sum(counts)]:
        counts[k] += 1
    return counts


def _round_strata(sizes: dict[str, int], shares: Sequence[Fraction]) -> dict[str, list[int]]:
    """Per-stratum split counts: rows sum to the stratum sizes, columns to the exact totals.

    Controlled rounding: start from the floors (with at least one train sample per stratum), then
    round up the cells with the largest fractional parts while their row and column still need
    samples; a train column pushed over its total by the one-in-train rule gives samples back from
    the strata that are most over their exact train share.
    """
    names = sorted(sizes)
    column_targets = _largest_remainder(sum(sizes.values()), shares)
    open_splits = [k for k in range(len(shares)) if shares[k] > 0]
    exact = {name: [sizes[name] * share for share in shares] for name in names}
    counts = {name: [floor(value) for value in exact[name]] for name in names}
    for name in names:
        if counts[name][TRAIN] == 0 and sizes[name] > 0:
            counts[name][TRAIN] = 1
    row_left = {name: sizes[name] - sum(counts[name]) for name in names}
    column_left = [column_targets[k] - sum(counts[name][k] for name in names) for k in range(len(shares))]

    def shortfall(name: str, k: int) -> Fraction:
        return exact[name][k] - counts[name][k]

    cells = sorted(((name, k) for name in names for k in open_splits), key=lambda c: (-shortfall(*c), c))
    for name, k in cells:
        if row_left[name] > 0 and column_left[k] > 0:
            counts[name][k] += 1
            row_left[name] -= 1
            column_left[k] -= 1
    for name in names:  # rows still short (possible only after the one-in-train rule)
        while row_left[name] > 0:
            candidates = [k for k in open_splits if column_left[k] > 0] or open_splits
            k = max(candidates, key=lambda k: (shortfall(name, k), -k))
            counts[name][k] += 1
            row_left[name] -= 1
            column_left[k] -= 1
    for over in range(len(shares)):
        while column_left[over] < 0:
            under = [k for k in open_splits if column_left[k] > 0]
            floor_count = 2 if over == TRAIN else 1
            donors = [name for name in names if counts[name][over] >= floor_count]
            if not under or not donors:
                break
            donor = min(donors, key=lambda name: (shortfall(name, over), name))
            receiver = max(under, key=lambda k: (shortfall(donor, k), -k))
            counts[donor][over] -= 1
            counts[donor][receiver] += 1
            column_left[over] += 1
            column_left[receiver] -= 1
    return counts


def _stratum_rng(seed: int, stratum: str) -> np.random.Generator:
    digest = hashlib.sha256(stratum.encode("utf-8", "surrogateescape")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng([seed, *words])


@dataclass(frozen=True)
class _Unit:
    """Samples that must share a split: one sample, or all members of a group."""

    key: str  # smallest portable key of the members: unique per unit, its stable sort key
    members: tuple[int, ...]  # indices into table.samples
    stratum: str


def _units(
    indices: Sequence[int], keys: Sequence[str], strata: Sequence[str], groups: Sequence[Hashable] | None
) -> list[_Unit]:
    """Samples linked by a group id or by the same file (same portable key) form one unit."""
    parent = {i: i for i in indices}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[tuple[str, Hashable], int] = {}
    for i in indices:
        tokens: list[tuple[str, Hashable]] = [("file", keys[i])]
        if groups is not None and groups[i] is not None:
            tokens.append(("group", groups[i]))
        for token in tokens:
            root_a, root_b = find(i), find(first_of.setdefault(token, i))
            parent[max(root_a, root_b)] = min(root_a, root_b)
    buckets: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        buckets[find(i)].append(i)
    units = []
    for members in buckets.values():
        members.sort(key=lambda i: (keys[i], i))
        votes = Counter(strata[i] for i in members)
        stratum = min(votes, key=lambda name: (-votes[name], name))
        units.append(_Unit(keys[members[0]], tuple(members), stratum))
    return units


def _allocate(
    indices: Sequence[int],
    shares: Sequence[Fraction],
    keys: Sequence[str],
    strata: Sequence[str],
    groups: Sequence[Hashable] | None,
    seed: int,
    assignment: list[str | None],
) -> None:
    """Assign every sample in `indices` to a split (in place), following the module's rules."""
    by_stratum: dict[str, list[_Unit]] = defaultdict(list)
    for unit in _units(indices, keys, strata, groups):
        by_stratum[unit.stratum].append(unit)
    sizes = {name: sum(len(u.members) for u in units) for name, units in by_stratum.items()}
    tiny = {name for name, size in sizes.items() if size < MIN_STRATUM_FOR_HOLDOUT}
    targets = _round_strata({n: s for n, s in sizes.items() if n not in tiny}, shares)
    for name in sorted(by_stratum):
        units = sorted(by_stratum[name], key=lambda u: u.key)
        if name in tiny:
            for unit in units:
                for i in unit.members:
                    assignment[i] = SPLITS[TRAIN]
            continue
        target = targets[name]
        filled = [0] * len(SPLITS)
        order = _stratum_rng(seed, name).permutation(len(units))
        for position, unit_index in enumerate(order):
            unit = units[int(unit_index)]
            if position == 0 and target[TRAIN] > 0:
                k = TRAIN
            else:
                k = max(range(len(SPLITS)), key=lambda k: (target[k] - filled[k], -k))
            filled[k] += len(unit.members)
            for i in unit.members:
                assignment[i] = SPLITS[k]


def make_split(
    table: SampleTable,
    fractions: Sequence[float] | None = None,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    use_format_split: bool = True,
    groups: Sequence[int | str | None] | None = None,
) -> list[str]:
    """The split ("train"/"val"/"test") of every sample, aligned with `table.samples`.

    fractions: (train, val, test) summing to 1; when None, val_fraction and test_fraction are
        used and train gets the rest.
    seed: a non-negative integer; the same seed gives the same split on any machine.
    use_format_split: keep the split the format defines and carve val from its train part.
    groups: one group id per sample (None = no group); members of a group share a split.
    Pass `table.usable()` to leave out the samples with error-level problems.
    See the module docstring for the exact rules.
    """
    shares = _exact_shares(fractions, val_fraction, test_fraction)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    samples = table.samples
    if groups is not None and len(groups) != len(samples):
        raise ValueError(f"groups has {len(groups)} entries but the table has {len(samples)} samples")
    keys = [portable_key(sample.path, table.root) for sample in samples]
    strata = [_stratum_name(sample) for sample in samples]
    assignment: list[str | None] = [None] * len(samples)
    unassigned: list[int] = []
    format_train: list[int] = []
    for i, sample in enumerate(samples):
        if not use_format_split or sample.split is None:
            unassigned.append(i)
        elif sample.split == "train":
            format_train.append(i)
        elif sample.split in SPLITS:
            assignment[i] = sample.split
        else:
            raise ValueError(f"{sample.source}: unknown split {sample.split!r}; expected train, val or test")
    _allocate(unassigned, shares, keys, strata, groups, int(seed), assignment)
    # Carve from the format's train part whichever of val/test the format does not define itself
    # (a folder tree with only train/ gets both; VOC trainval/test gets val only).
    defined = {split for split in assignment if split is not None}
    wanted = (
        shares[TRAIN],
        shares[VAL] if SPLITS[VAL] not in defined else Fraction(0),
        shares[TEST] if SPLITS[TEST] not in defined else Fraction(0),
    )
    total = sum(wanted)
    carve = tuple(share / total for share in wanted)
    _allocate(format_train, carve, keys, strata, groups, int(seed), assignment)
    return [split for split in assignment if split is not None]


def group_ids_by_path(table: SampleTable, path_groups: Iterable[Iterable[str | Path]]) -> list[int | None]:
    """One group id per sample (None = in no group) from groups of image paths, for `make_split`.

    path_groups: e.g. ``[group.paths for group in check_report.duplicate_groups]``. Groups that
    share a path are merged (an image in an exact and a near-duplicate group links both), and
    samples are matched by path, so this works on a filtered table such as ``table.usable()``.
    Ids are small integers numbered by the order of first appearance in the table.
    """
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for group in path_groups:
        members = [str(path) for path in group]
        for other in members[1:]:
            root_a, root_b = find(members[0]), find(other)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    ids: dict[str, int] = {}
    result: list[int | None] = []
    for sample in table.samples:
        key = str(sample.path)
        if key not in parent:
            result.append(None)
            continue
        result.append(ids.setdefault(find(key), len(ids)))
    return result


FRAME_STEM = re.compile(r"(?P<video>.*?)(?P<frame>\d+)")


def frame_block_groups(table: SampleTable, block: int) -> list[list[Path]]:
    """Groups of image paths (for `group_ids_by_path`): frames of one video whose frame numbers fall
    in the same block of `block` consecutive numbers (`DataConfig.frame_block`).

    A file whose stem ends in digits is a frame: the digits are its number, the rest of the stem and
    its folder name its video (vid_4_1260.jpg is frame 1260 of video "vid_4_", in block 1 for
    block 1000). Other files are in no group; block <= 0 gives no groups.
    """
    if block <= 0:
        return []
    blocks: dict[tuple[str, str, int], list[Path]] = defaultdict(list)
    for sample in table.samples:
        match = FRAME_STEM.fullmatch(sample.path.stem)
        if match is not None:
            key = (str(sample.path.parent), match["video"], int(match["frame"]) // block)
            blocks[key].append(sample.path)
    return [paths for paths in blocks.values() if len(paths) > 1]


def split_from_config(
    table: SampleTable, config: DataConfig, groups: Sequence[int | str | None] | None = None
) -> list[str]:
    """`make_split` with the fractions, seed and format-split switch of a `DataConfig`."""
    return make_split(
        table,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        use_format_split=config.use_format_split,
        groups=groups,
    )


def _check_splits(table: SampleTable, splits: Sequence[str]) -> None:
    if len(splits) != len(table.samples):
        raise ValueError(f"{len(splits)} split values for {len(table.samples)} samples")
    for sample, split in zip(table.samples, splits, strict=True):
        if split not in SPLITS:
            raise ValueError(f"{sample.source}: split {split!r} is not one of {', '.join(SPLITS)}")


def split_fingerprint(table: SampleTable, splits: Sequence[str]) -> str:
    """sha256 (hex) of the sorted lines "portable key,label,split": equal on every machine."""
    _check_splits(table, splits)
    lines = sorted(
        f"{portable_key(sample.path, table.root)},{sample.label or ''},{split}\n"
        for sample, split in zip(table.samples, splits, strict=True)
    )
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()  # a name's bytes


def split_summary(table: SampleTable, splits: Sequence[str]) -> dict[str, Any]:
    """Counts per split and per class per split, JSON-ready.

    Keys: counts {split: images, "total": N}, fractions {split: share of N}, with_box {split:
    images with at least one box}, per_class {class: {split: images}} (table class order, then any
    label not in it), classes_missing {split: [classes with images but none in that split]}.
    """
    _check_splits(table, splits)
    counts = Counter(splits)
    total = len(splits)
    with_box = Counter(split for sample, split in zip(table.samples, splits, strict=True) if sample.has_box)
    per_label: dict[str, Counter[str]] = defaultdict(Counter)
    for sample, split in zip(table.samples, splits, strict=True):
        if sample.label is not None:
            per_label[sample.label][split] += 1
    names = [name for name in table.classes if name in per_label]
    names += sorted(set(per_label) - set(names))
    return {
        "counts": {**{split: counts[split] for split in SPLITS}, "total": total},
        "fractions": {split: round(counts[split] / total, 4) if total else 0.0 for split in SPLITS},
        "with_box": {split: with_box[split] for split in SPLITS},
        "per_class": {name: {split: per_label[name][split] for split in SPLITS} for name in names},
        "classes_missing": {
            split: [name for name in names if per_label[name][split] == 0] for split in SPLITS
        },
    }


def sidecar_path(csv_path: Path | str) -> Path:
    """Where the JSON sidecar of a split CSV lives: ``split.csv`` -> ``split.csv.json``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + ".json")


def save_split(
    table: SampleTable,
    splits: Sequence[str],
    path: Path | str,
    *,
    seed: int | None = None,
    fractions: Sequence[float] | None = None,
    use_format_split: bool | None = None,
) -> Path:
    """Write the split CSV (atomically) and its JSON sidecar; returns the CSV path.

    seed, fractions and use_format_split are recorded in the sidecar for the record only (the
    CSV already holds every sample's split).
    """
    path = Path(path)
    _check_splits(table, splits)
    table.to_csv(path, splits)
    sidecar = {
        "carid_split_version": SIDECAR_VERSION,
        "csv": path.name,
        "dataset_root": str(table.root),
        "dataset_format": table.format,
        "classes": list(table.classes),
        "seed": seed,
        "fractions": None if fractions is None else dict(zip(SPLITS, map(float, fractions), strict=True)),
        "use_format_split": use_format_split,
        "fingerprint": split_fingerprint(table, splits),
        "counts": split_summary(table, splits)["counts"],
    }
    target = sidecar_path(path)
    tmp = target.with_name(target.name + ".tmp")
    text = json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n"
    tmp.write_text(text, encoding="utf-8", errors="surrogateescape")  # the root's very bytes, as the CSV
    tmp.replace(target)
    return path


def read_sidecar(csv_path: Path | str) -> dict[str, Any] | None:
    """The sidecar of a split CSV as a dict, or None when there is none."""
    target = sidecar_path(csv_path)
    if not target.exists():
        return None
    try:
        data = json.loads(target.read_text(encoding="utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{target}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{target}: expected a JSON object")
    return data


def _rerooted(path: Path, old_root: Path, new_root: Path) -> Path:
    for base in (old_root, old_root.parent):
        try:
            return new_root / path.relative_to(base)
        except ValueError:
            continue
    return path


def load_split(path: Path | str, data_root: Path | str | None = None) -> SampleTable:
    """Read a split CSV back; every sample's `split` is set.

    classes: the sidecar's order when there is a sidecar, else sorted labels.
    data_root: where the dataset lives now; paths under the root recorded in the sidecar are moved
        under it (for a split made on another machine).
    Raises ValueError naming the file and row for a bad split value or a label not in the classes.
    """
    path = Path(path)
    meta = read_sidecar(path) or {}
    classes = meta.get("classes")
    table = SampleTable.from_csv(path, classes=classes, fmt=str(meta.get("dataset_format") or "split-csv"))
    for row, sample in enumerate(table.samples, start=1):
        if sample.split not in SPLITS:
            raise ValueError(
                f"{path} data row {row} ({sample.source}): split {sample.split!r} "
                f"is not one of {', '.join(SPLITS)}"
            )
    if classes is not None:
        unknown = sorted({s.label for s in table.samples if s.label is not None} - set(classes))
        if unknown:
            raise ValueError(
                f"{path}: label(s) {unknown[:5]} are not in the classes of {sidecar_path(path).name}"
            )
    recorded_root = Path(meta["dataset_root"]) if meta.get("dataset_root") else None
    if data_root is not None:
        new_root = Path(data_root)
        if recorded_root is not None:
            table.samples = [s.with_(path=_rerooted(s.path, recorded_root, new_root)) for s in table.samples]
        table.root = new_root
    elif recorded_root is not None:
        table.root = recorded_root
    return table


def splits_of(table: SampleTable) -> list[str]:
    """The `split` field of every sample (e.g. of a table from `load_split`); ValueError if unset."""
    missing = [s.source for s in table.samples if s.split not in SPLITS]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) have no split, e.g. {missing[0]}")
    return [str(s.split) for s in table.samples]
