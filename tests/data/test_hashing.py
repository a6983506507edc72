"""Tests for carid.data.hashing: the Hamming search over perceptual hashes and its popcount fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carid.data import hashing
from carid.data.hashing import ProbeFailure, fingerprint_file
from tests.data.bad_entries import fifo


def test_close_pairs_matches_a_python_reference():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, size=(40, 3)).astype(np.uint64)
    near = base ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]  # each within 3 bits of its base
    hashes = np.concatenate([base, near])
    for distance in (0, 3, 20):
        pairs, distances = hashing.close_pairs(hashes, distance)
        expected = [
            (i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
            for i in range(len(hashes))
            for j in range(i + 1, len(hashes))
            if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= distance
        ]
        assert [(i, j, d) for (i, j), d in zip(pairs.tolist(), distances.tolist(), strict=True)] == expected


def test_close_pairs_spans_blocks(monkeypatch):
    monkeypatch.setattr(hashing, "HAMMING_BLOCK", 3)
    hashes = np.array([5, 99, 7, 1 << 40, 5, 12345, 7], dtype=np.uint64)
    pairs, _ = hashing.close_pairs(hashes, 0)
    assert pairs.tolist() == [[0, 4], [2, 6]]


def test_popcount_fallback_agrees_with_numpy(monkeypatch):
    values = np.random.default_rng(1).integers(0, 2**63, size=(5, 7), dtype=np.uint64)
    fast = hashing.popcount64(values)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(hashing.popcount64(values), fast)


@pytest.mark.timeout(60)
def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    pipe = fifo(tmp_path / "x.jpg")  # reading it would wait for a writer forever
    outcome = fingerprint_file(pipe)
    assert isinstance(outcome, ProbeFailure) and outcome.kind == "not_a_regular_file"
    assert "FIFO" in outcome.reason
