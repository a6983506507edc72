"""Tests for carid.artifacts.enrolment: the arrays file and model.json change together as one pair,
bundles with the old fixed `enrolment.npz` are still read, mismatches are named, leftovers removed.

A bundle here is a model.json with a placeholder model file (`tests.artifacts.test_bundle`); the
enrolment on a real exported model is tested in tests/enroll/test_store.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import carid.artifacts.enrolment as enrolment_module
from carid.artifacts.bundle import METADATA_FILE, MODEL_FILE, Bundle, update_calibration
from carid.artifacts.enrolment import (
    ENROLMENT_FILE,
    ENROLMENT_FILE_PATTERN,
    EnrolError,
    EnrolledClass,
    Enrolment,
    enrolment_file,
    load_enrolment,
    remove_bundle_leftovers,
    save_enrolment,
)
from carid.embedding import EmbeddingSpace, ScoreCalibration
from tests.artifacts.test_bundle import make_metadata, write_bundle
from tests.test_files import dead_pid, hidden_leftovers


def empty_enrolment(dim: int = 16, k: int = 4) -> Enrolment:
    rng = np.random.default_rng(0)
    space = EmbeddingSpace(
        rng.normal(size=dim).astype(np.float32), rng.normal(size=(dim, k)).astype(np.float32)
    )
    return Enrolment(space, ScoreCalibration(scale=30.0, bias=-8.0), (), {"images": 10})


def with_class(enrolment: Enrolment, label: str, seed: int = 1) -> Enrolment:
    k = enrolment.space.projection.shape[1]
    added = EnrolledClass(label, np.random.default_rng(seed).normal(size=k), 1, "2026-01-01T00:00:00Z", "")
    return replace(enrolment, classes=(*enrolment.classes, added))


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    """A bundle with an empty enrolment, as `carid export` leaves it."""
    folder = write_bundle(tmp_path / "bundle")
    return save_enrolment(Bundle.load(folder), empty_enrolment())


def bundle_files(bundle: Bundle) -> list[str]:
    return sorted(path.name for path in bundle.path.iterdir())


def arrays(bundle: Bundle) -> Path:
    path = enrolment_file(bundle)
    assert path is not None
    return path


def loaded(bundle: Bundle) -> Enrolment:
    enrolment = load_enrolment(bundle)
    assert enrolment is not None
    return enrolment


def test_each_save_writes_a_new_arrays_file_named_in_model_json_and_deletes_the_old(bundle: Bundle) -> None:
    first = enrolment_file(bundle)
    assert first is not None and ENROLMENT_FILE_PATTERN.match(first.name)
    assert bundle_files(bundle) == sorted([METADATA_FILE, MODEL_FILE, first.name])

    grown = save_enrolment(bundle, with_class(loaded(bundle), "Lada Niva"))
    second = enrolment_file(grown)
    assert second is not None and second.name != first.name
    assert bundle_files(grown) == sorted([METADATA_FILE, MODEL_FILE, second.name])
    on_disk = Bundle.load(bundle.path)
    assert enrolment_file(on_disk) == second
    assert loaded(on_disk).labels == ("Lada Niva",)


def test_a_bundle_with_the_old_fixed_file_name_is_read_and_upgraded(tmp_path: Path) -> None:
    modern = save_enrolment(Bundle.load(write_bundle(tmp_path / "new")), with_class(empty_enrolment(), "X"))
    old = write_bundle(tmp_path / "old")
    (old / ENROLMENT_FILE).write_bytes(arrays(modern).read_bytes())
    field = dict(modern.metadata.enrolment or {}, file=ENROLMENT_FILE)
    data = json.loads((modern.path / METADATA_FILE).read_text())
    (old / METADATA_FILE).write_text(json.dumps({**data, "enrolment": field}))
    legacy = Bundle.load(old)
    assert enrolment_file(legacy) == old / ENROLMENT_FILE
    assert loaded(legacy).labels == ("X",)

    upgraded = save_enrolment(legacy, with_class(loaded(legacy), "Y", seed=2))
    assert not (old / ENROLMENT_FILE).exists()
    assert loaded(Bundle.load(old)).labels == ("X", "Y")
    assert bundle_files(upgraded) == sorted([METADATA_FILE, MODEL_FILE, arrays(upgraded).name])


def test_a_save_stopped_before_model_json_leaves_the_old_pair(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a kill between the two writes leaves: model.json still names the old arrays file, and
    the new one is removed by the next run."""

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(enrolment_module, "write_metadata", killed)
        with pytest.raises(KeyboardInterrupt):
            save_enrolment(bundle, with_class(loaded(bundle), "Lada Niva"))
    again = Bundle.load(bundle.path)
    assert loaded(again).labels == ()
    [orphan] = [name for name in bundle_files(again) if name.endswith(".npz") and name != arrays(again).name]
    [leftover] = remove_bundle_leftovers(bundle.path)
    assert leftover.path.name == orphan and "not named by model.json" in leftover.describe()
    assert bundle_files(again) == sorted([METADATA_FILE, MODEL_FILE, arrays(again).name])


def test_without_a_lock_an_unnamed_arrays_file_waits_for_the_grace_period(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the folder cannot be locked, a writer may be between its two writes: only old files go."""

    @contextlib.contextmanager
    def no_lock(folder: object) -> Iterator[bool]:
        yield False

    monkeypatch.setattr(enrolment_module, "folder_lock", no_lock)
    fresh, old = (bundle.path / f"enrolment-{'0' * 15}{digit}.npz" for digit in "12")
    fresh.write_bytes(b"x")
    old.write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert [leftover.path for leftover in remove_bundle_leftovers(bundle.path)] == [old]
    assert fresh.exists()


def test_leftovers_are_removed_only_in_a_bundle_that_names_its_arrays(bundle: Bundle) -> None:
    gone = dead_pid()
    temporary = bundle.path / f".enrolment-0123456789abcdef.npz.{gone}-abcd_123.tmp"
    temporary.write_bytes(b"half")
    unnamed = bundle.path / "enrolment-0123456789abcdef.npz"
    unnamed.write_bytes(b"x")
    legacy = bundle.path / ENROLMENT_FILE
    legacy.write_bytes(b"x")
    removed = {leftover.path for leftover in remove_bundle_leftovers(bundle.path)}
    assert removed == {temporary, unnamed, legacy} and hidden_leftovers(bundle.path) == []
    assert load_enrolment(Bundle.load(bundle.path)) is not None

    plain = write_bundle(bundle.path.parent / "plain", make_metadata())  # no enrolment field
    kept = plain / "enrolment-0123456789abcdef.npz"
    kept.write_bytes(b"x")
    assert remove_bundle_leftovers(plain) == [] and kept.exists()
    assert remove_bundle_leftovers(bundle.path.parent / "not-a-bundle") == []


def test_a_reader_that_raced_a_save_reads_the_new_pair(bundle: Bundle) -> None:
    """A reader holding model.json from before a save whose old arrays file is gone reads again."""
    stale = Bundle.load(bundle.path)
    save_enrolment(stale, with_class(loaded(stale), "Lada Niva"))
    assert not arrays(stale).exists()
    assert loaded(stale).labels == ("Lada Niva",)


def test_a_mismatch_names_both_files_and_counts(bundle: Bundle) -> None:
    grown = save_enrolment(bundle, with_class(loaded(bundle), "Lada Niva"))
    data = json.loads(grown.metadata_path.read_text())
    data["enrolment"]["classes"] = []
    grown.metadata_path.write_text(json.dumps(data))
    with pytest.raises(EnrolError) as caught:
        load_enrolment(Bundle.load(bundle.path))
    message = str(caught.value)
    assert str(grown.metadata_path) in message and str(enrolment_file(grown)) in message
    assert "0 classes in model.json but 1 prototypes and 1 counts" in message
    assert "carid export RUN --force" in (caught.value.hint or "")


def test_a_save_keeps_a_calibration_made_since_the_bundle_was_read(bundle: Bundle) -> None:
    stale = Bundle.load(bundle.path)
    update_calibration(bundle.path, temperature=2.0, unknown_threshold=0.3)
    saved = save_enrolment(stale, with_class(loaded(stale), "Lada Niva"))
    on_disk = Bundle.load(bundle.path)
    assert (on_disk.metadata.temperature, on_disk.metadata.unknown_threshold) == (2.0, 0.3)
    assert saved.metadata == on_disk.metadata and loaded(on_disk).labels == ("Lada Niva",)
