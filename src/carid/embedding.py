"""The maths of enrolment: the embedding space new classes live in, their prototypes, their scores.

A new class is its *prototype*: the mean of its photos' embeddings in an `EmbeddingSpace`, compared
with an image's embedding by cosine similarity (nearest class mean). To rank it among the trained
classes, its cosine becomes a logit, `scale * cos + bias` (`ScoreCalibration`), appended to the
trained logits before the temperature and the softmax; every trained class keeps its own logit.

Why this design (measured on 20 Stanford classes held out of a 176-class model, see
benchmarks/RESULTS.md):
- The raw pooled backbone features are post-ReLU and every pair of photos has a high cosine, so the
  space is centred on the mean training embedding and *whitened by the within-class covariance* of
  the training classes (shrunk towards its average variance: `shrinkage`). That is the
  linear-discriminant metric; on 5-shot enrolment it lifted nearest-mean accuracy among the new
  classes from 0.55 (centred cosine) to 0.68.
- Trained logits come from a classifier fitted to the training photos and are on their own scale;
  `fit_calibration` chooses `scale` and `bias` by *simulating enrolment on the validation photos*:
  some trained classes are masked out of the logits and enrolled from a few of their own photos, and
  the pair that best balances "the enrolled class wins on its other photos" against "the known
  photos keep their right answer" is kept.

Written by hand with NumPy (a few matrix products; scikit-learn's LDA does not expose a shrunk
whitening of this form and would add a dependency to the slim install).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_SHRINKAGE = 1.0  # weight of the average variance added to the within-class covariance
SCALES = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 60.0, 80.0, 100.0, 150.0)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class EmbeddingSpace:
    """Embeddings [N, D] -> unit rows [N, K]: centre on `mean` [D], project by `projection` [D, K]."""

    mean: np.ndarray
    projection: np.ndarray

    def __post_init__(self) -> None:
        if self.mean.ndim != 1 or self.projection.ndim != 2 or self.projection.shape[0] != self.mean.shape[0]:
            raise ValueError(
                f"embedding space: mean {list(self.mean.shape)} and projection {list(self.projection.shape)} "
                "do not fit (expected [D] and [D, K])"
            )

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(embeddings, dtype=np.float64)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"embeddings of shape {list(embeddings.shape)} do not fit an embedding space "
                f"of dimension {self.dim}"
            )
        return unit_rows((embeddings - self.mean) @ self.projection)


def fit_space(
    embeddings: np.ndarray, labels: Sequence[str] | np.ndarray, shrinkage: float = DEFAULT_SHRINKAGE
) -> EmbeddingSpace:
    """Centring and within-class whitening fitted on labelled training embeddings [N, D].

    The within-class covariance S (each photo minus its class mean) is shrunk to
    S + shrinkage * mean(diag S) * I and the projection is S^-1/2 (its eigenvectors scaled by
    1/sqrt(eigenvalue)). Classes with a single photo add nothing to S; with no class having two,
    the space is the centred cosine (identity projection).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(labels) or len(x) == 0:
        raise ValueError(f"fit_space: {len(labels)} labels for embeddings of shape {list(x.shape)}")
    if shrinkage <= 0:
        raise ValueError(f"fit_space: shrinkage must be > 0, got {shrinkage}")
    mean = x.mean(axis=0)
    residuals = []
    for label in np.unique(labels):
        rows = x[labels == label]
        if len(rows) > 1:
            residuals.append(rows - rows.mean(axis=0))
    if not residuals:
        return EmbeddingSpace(mean.astype(np.float32), np.eye(x.shape[1], dtype=np.float32))
    within = np.concatenate(residuals)
    covariance = within.T @ within / len(within)
    covariance += (
        shrinkage * max(float(np.trace(covariance)) / len(covariance), 1e-12) * np.eye(len(covariance))
    )
    values, vectors = np.linalg.eigh(covariance)
    projection = vectors / np.sqrt(values)
    return EmbeddingSpace(mean.astype(np.float32), projection.astype(np.float32))


def prototype_sum(features: np.ndarray) -> np.ndarray:
    """The sum of transformed unit rows [N, K] -> [K]; a class stores this and its photo count, so
    photos can be added later (`prototypes` divides and normalizes)."""
    return np.asarray(features, dtype=np.float64).sum(axis=0)


def prototypes(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Unit prototypes [M, K] from stored sums [M, K] and photo counts [M]."""
    return unit_rows(np.asarray(sums, dtype=np.float64) / np.maximum(np.asarray(counts)[:, None], 1))


@dataclass(frozen=True)
class ScoreCalibration:
    """cosine -> logit: `scale * cos + bias`, and how it was chosen (for model.json and the docs)."""

    scale: float
    bias: float
    new_accuracy: float | None = None
    known_retained: float | None = None
    simulated_classes: int = 0
    shots: int = 0

    def logits(self, cosines: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(cosines, dtype=np.float64) + self.bias


def fit_calibration(
    logits: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    shots: int = 5,
    enrolled: int = 20,
    repeats: int = 8,
    seed: int = 0,
    scales: Sequence[float] = SCALES,
) -> ScoreCalibration:
    """Choose `scale` and `bias` by simulated enrolment on held-out photos of the trained classes.

    logits [N, C]: the trained logits of validation photos; features [N, K]: their transformed
    embeddings; labels [N]: their class indices in 0..C-1. Each of `repeats` rounds picks
    `enrolled` classes (at most a quarter of those with 2+ photos, at least 1), masks their logits,
    builds each one's prototype from up to `shots` of its photos and scores:
      new: the class's other photos must rank its prototype first among all classes;
      known: the photos of the other classes that the trained logits got right must stay right.
    The (scale, bias) maximizing the mean of the two rates wins (bias from a fine grid over the
    range where decisions change).
    """
    logits = np.asarray(logits, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, classes = logits.shape
    if len(features) != n or len(labels) != n:
        raise ValueError(
            f"fit_calibration: {n} logits rows, {len(features)} feature rows, {len(labels)} labels"
        )
    counts = np.bincount(labels, minlength=classes)
    eligible = np.flatnonzero(counts >= 2)
    if len(eligible) < 2:
        raise ValueError(
            "fit_calibration: needs at least 2 classes with 2 or more validation photos "
            f"(found {len(eligible)})"
        )
    take = int(max(1, min(enrolled, len(eligible) // 4 or 1)))
    rng = np.random.default_rng(seed)
    correct = logits.argmax(axis=1) == labels
    true_logit = logits[np.arange(n), labels]
    new_cos, new_best, known_cos, known_true = [], [], [], []
    used_shots = 0
    for _ in range(repeats):
        chosen = rng.choice(eligible, size=take, replace=False)
        masked = logits.copy()
        masked[:, chosen] = -np.inf
        protos, queries, query_class = [], [], []
        for k, cls in enumerate(chosen):
            rows = rng.permutation(np.flatnonzero(labels == cls))
            count = min(shots, len(rows) - 1)
            used_shots = max(used_shots, count)
            protos.append(unit_rows(features[rows[:count]].sum(axis=0)[None, :])[0])
            queries.extend(rows[count:])
            query_class.extend([k] * (len(rows) - count))
        proto = np.stack(protos)
        q = np.asarray(queries)
        cos = features[q] @ proto.T  # [Q, take]
        own = cos[np.arange(len(q)), query_class]
        rival = cos.copy()
        rival[np.arange(len(q)), query_class] = -np.inf
        # An enrolled class that loses to another enrolled class is wrong whatever scale and bias.
        wins_among_new = own > rival.max(axis=1)
        new_cos.append(np.where(wins_among_new, own, -np.inf))
        new_best.append(masked[q].max(axis=1))
        known = np.flatnonzero(correct & ~np.isin(labels, chosen))
        known_cos.append((features[known] @ proto.T).max(axis=1))
        known_true.append(true_logit[known])
    new_cos_all, new_best_all = np.concatenate(new_cos), np.concatenate(new_best)
    known_cos_all, known_true_all = np.concatenate(known_cos), np.concatenate(known_true)
    best: tuple[float, float, float, float, float] | None = None
    for scale in scales:
        # Decisions change where bias = logit - scale * cos for some photo: search that range.
        finite = np.isfinite(new_cos_all)
        edges = np.concatenate(
            [new_best_all[finite] - scale * new_cos_all[finite], known_true_all - scale * known_cos_all]
        )
        low, high = np.percentile(edges, [0.5, 99.5]) if len(edges) else (-10.0, 10.0)
        for bias in np.linspace(low, high, 201):
            new_rate = float(np.mean(scale * new_cos_all + bias > new_best_all)) if len(new_cos_all) else 0.0
            known_rate = (
                float(np.mean(scale * known_cos_all + bias < known_true_all)) if len(known_cos_all) else 1.0
            )
            value = 0.5 * (new_rate + known_rate)
            if best is None or value > best[0] + 1e-12:
                best = (value, float(scale), float(bias), new_rate, known_rate)
    assert best is not None
    _, scale, bias, new_rate, known_rate = best
    return ScoreCalibration(
        scale=scale,
        bias=bias,
        new_accuracy=round(new_rate, 4),
        known_retained=round(known_rate, 4),
        simulated_classes=take,
        shots=used_shots,
    )
