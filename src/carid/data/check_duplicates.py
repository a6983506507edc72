"""The data checks' duplicate groups and their problems: exact and near copies, leakage, label conflicts.

`duplicate_groups` links the images `carid.data.hashing` fingerprinted (same MD5, or perceptual
hashes within a distance); `duplicate_path_problems` and `group_problems` turn one file listed in
several rows, and each group, into ``duplicate_path``, ``exact_duplicate``, ``near_duplicate``,
``split_leakage`` and ``conflicting_labels`` problems (see `carid.data.checks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from carid.data.check_rules import name_list, sample_problem
from carid.data.hashing import ImageFacts, close_pairs, connected_groups, hashes_to_uint64
from carid.data.samples import Problem, Sample, Severity


@dataclass(frozen=True)
class DuplicateGroup:
    """Samples showing the same photo.

    kind: "exact" (same file bytes) or "near" (perceptual hashes within the threshold).
    indices: sample indices into `CheckReport.table.samples`, ascending.
    max_distance: largest phash Hamming distance (bits of 64) between linked members; 0 for exact.
    """

    kind: str
    indices: tuple[int, ...]
    paths: tuple[str, ...]
    labels: tuple[str | None, ...]
    splits: tuple[str | None, ...]
    max_distance: int

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "max_distance": self.max_distance,
            "members": [
                {"index": index, "path": path, "label": label, "split": split}
                for index, path, label, split in zip(
                    self.indices, self.paths, self.labels, self.splits, strict=True
                )
            ],
        }


def duplicate_groups(
    samples: Sequence[Sample],
    facts: Sequence[ImageFacts | None],
    split_of: Sequence[str | None],
    max_distance: int,
) -> list[DuplicateGroup]:
    """Exact groups (same MD5, at least two distinct paths or rows), then near groups (distinct
    files whose phashes link within `max_distance`; each member file brings all its exact copies)."""
    by_md5: dict[str, list[int]] = {}
    for index, fact in enumerate(facts):
        if fact is not None:
            by_md5.setdefault(fact.md5, []).append(index)

    def group(kind: str, indices: Iterable[int], distance: int) -> DuplicateGroup:
        members = tuple(sorted(indices))
        return DuplicateGroup(
            kind=kind,
            indices=members,
            paths=tuple(str(samples[i].path) for i in members),
            labels=tuple(samples[i].label for i in members),
            splits=tuple(split_of[i] for i in members),
            max_distance=distance,
        )

    groups = [group("exact", indices, 0) for indices in by_md5.values() if len(indices) > 1]
    representatives = [indices[0] for indices in by_md5.values()]
    md5s = list(by_md5)
    hashes = hashes_to_uint64([facts[i].phash for i in representatives])  # type: ignore[union-attr]
    pairs, distances = close_pairs(hashes, max_distance)
    largest: dict[int, int] = {}
    components = connected_groups(len(representatives), pairs)
    component_of = {member: number for number, members in enumerate(components) for member in members}
    for (first, _), distance in zip(pairs.tolist(), distances.tolist(), strict=True):
        number = component_of[first]
        largest[number] = max(largest.get(number, 0), distance)
    for number, members in enumerate(components):
        indices = [i for member in members for i in by_md5[md5s[member]]]
        groups.append(group("near", indices, largest.get(number, 0)))
    return groups


def duplicate_path_problems(
    samples: Sequence[Sample], names: Sequence[str], split_of: Sequence[str | None]
) -> list[Problem]:
    """One file listed in several rows: duplicate_path, plus split_leakage / conflicting_labels
    when those rows disagree on the split / the label."""
    rows: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        rows.setdefault(str(sample.path), []).append(index)
    problems: list[Problem] = []
    for indices in rows.values():
        if len(indices) < 2:
            continue
        first, name = samples[indices[0]], names[indices[0]]
        sources = name_list([samples[i].source for i in indices])
        message = f"{name} is listed {len(indices)} times ({sources})"
        problems.append(sample_problem(first, "duplicate_path", Severity.WARNING, message))
        splits = [split_of[i] for i in indices]
        if len({split for split in splits if split is not None}) > 1:
            leaking = next(i for i, split in zip(indices, splits, strict=True) if split != splits[0])
            where = name_list(
                [
                    f"{split or 'no split'} ({samples[i].source})"
                    for i, split in zip(indices, splits, strict=True)
                ]
            )
            message = f"{name} is listed in several splits: {where}; evaluation would score a training photo"
            problems.append(sample_problem(samples[leaking], "split_leakage", Severity.WARNING, message))
        if len({samples[i].label for i in indices if samples[i].label is not None}) > 1:
            labels = name_list([f"{samples[i].label!r} ({samples[i].source})" for i in indices])
            message = f"{name} is listed with different labels: {labels}"
            problems.append(sample_problem(first, "conflicting_labels", Severity.WARNING, message))
    return problems


def _spread(values_by_file: dict[str, set[str]]) -> bool:
    """True when two *different files* carry different values (splits or labels): at least two
    files have a value and, together, more than one value. Copies of one file listed in several
    rows are the duplicate_path/exact case and are not counted twice by near groups."""
    with_values = [values for values in values_by_file.values() if values]
    return len(with_values) >= 2 and len(set().union(*with_values)) >= 2


def group_problems(
    group: DuplicateGroup,
    samples: Sequence[Sample],
    facts: Sequence[ImageFacts | None],
    names: Sequence[str],
    max_distance: int,
) -> list[Problem]:
    """The group's exact_duplicate / near_duplicate problem, and split_leakage / conflicting_labels
    when its files disagree on the split / the label."""
    first = samples[group.indices[0]]
    if group.kind == "exact":
        # Rows of one path are copies of themselves; the per-"file" unit is the path.
        unit = [str(samples[i].path) for i in group.indices]
        how = "identical files (same MD5)"
    else:
        unit = [facts[i].md5 for i in group.indices]  # type: ignore[union-attr]
        how = f"near duplicates (perceptual-hash distance up to {group.max_distance} of 64 bits)"
    problems: list[Problem] = []
    distinct_files = len(set(unit))
    if group.kind == "exact" and distinct_files > 1:
        listing = name_list([names[i] for i in group.indices])
        message = f"{distinct_files} files are identical (MD5 {facts[group.indices[0]].md5[:12]}…): {listing}"  # type: ignore[union-attr]
        problems.append(sample_problem(first, "exact_duplicate", Severity.WARNING, message))
    elif group.kind == "near":
        listing = name_list([names[i] for i in group.indices])
        message = (
            f"{len(group.indices)} images look alike (perceptual-hash distance <= {max_distance}, "
            f"largest {group.max_distance}): {listing}"
        )
        problems.append(sample_problem(first, "near_duplicate", Severity.INFO, message))

    if group.kind == "exact" and distinct_files == 1:
        return problems  # one path in several rows: reported by duplicate_path_problems
    splits_by_file: dict[str, set[str]] = {key: set() for key in unit}
    labels_by_file: dict[str, set[str]] = {key: set() for key in unit}
    for key, split, label in zip(unit, group.splits, group.labels, strict=True):
        if split is not None:
            splits_by_file[key].add(split)
        if label is not None:
            labels_by_file[key].add(label)
    if _spread(splits_by_file):
        members = list(zip(group.indices, group.splits, strict=True))
        leaking = next(index for index, split in members if split != group.splits[0])
        listing = name_list([f"{names[index]} ({split or 'no split'})" for index, split in members])
        message = f"{listing} are {how} in different splits: evaluation would score photos seen in training"
        problems.append(sample_problem(samples[leaking], "split_leakage", Severity.WARNING, message))
    if _spread(labels_by_file):
        listing = name_list([f"{names[i]} ({samples[i].label!r})" for i in group.indices])
        message = f"{listing} are {how} with different labels"
        problems.append(sample_problem(first, "conflicting_labels", Severity.WARNING, message))
    return problems
