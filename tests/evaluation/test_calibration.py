"""Tests for carid.evaluation.calibration: temperature scaling and the unknown threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import softmax

from carid.evaluation.calibration import choose_unknown_threshold, fit_temperature, temperature_nll
from carid.evaluation.metrics import rejection_stats
from carid.runtime.calibration import UNKNOWN_INDEX, apply_temperature, apply_unknown


def _calibrated_logits(num_samples: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated model: each label is drawn from softmax(logits) itself."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_samples, num_classes)) * 2.5
    probabilities = softmax(logits, axis=1)
    cumulative = probabilities.cumsum(axis=1)
    labels = (rng.random((num_samples, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, num_classes - 1)


# ----------------------------------------------------------------------------------------------
# Temperature


@pytest.mark.parametrize("true_temperature", [3.0, 1 / 3])
def test_fit_temperature_recovers_a_known_temperature(true_temperature: float) -> None:
    logits, labels = _calibrated_logits(4000, 10, seed=1)
    # Over-confident (x3) or under-confident (/3) copies of a calibrated model: T undoes the scaling.
    fitted = fit_temperature(logits * true_temperature, labels)
    assert isinstance(fitted, float)
    assert fitted == pytest.approx(true_temperature, rel=0.10)


def test_fit_temperature_matches_scipy_bounded_search() -> None:
    logits, labels = _calibrated_logits(1000, 5, seed=2)
    logits = logits * 2.0
    labels[:50] = -1  # unlabeled rows are ignored by both
    ours = fit_temperature(logits, labels)
    reference = minimize_scalar(
        lambda t: temperature_nll(logits, labels, t),
        bounds=(0.05, 20.0),
        method="bounded",
        options={"xatol": 1e-7},
    )
    assert ours == pytest.approx(reference.x, rel=1e-3)
    assert temperature_nll(logits, labels, ours) <= temperature_nll(logits, labels, 1.0)


def test_fit_temperature_stops_at_a_bound_when_nll_keeps_falling() -> None:
    # Every sample right by a wide margin: sharper is always better, down to the lower bound.
    logits = np.array([[5.0, 0.0], [0.0, 5.0]] * 10)
    labels = np.array([0, 1] * 10)
    assert fit_temperature(logits, labels) == pytest.approx(0.05)
    assert fit_temperature(logits, labels, bounds=(0.5, 2.0)) == pytest.approx(0.5)


def test_fit_temperature_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no labeled samples"):
        fit_temperature([[1.0, 2.0]], [-1])
    with pytest.raises(ValueError, match="logits row 1 has a NaN"):
        fit_temperature([[1.0, 2.0], [np.nan, 0.0]], [0, 1])
    with pytest.raises(ValueError, match=r"labels\[0\] = 2 is not a class index"):
        fit_temperature([[1.0, 2.0]], [2])
    with pytest.raises(ValueError, match="bounds must be increasing"):
        fit_temperature([[1.0, 2.0]], [0], bounds=(2.0, 1.0))


def test_apply_temperature_is_a_stable_softmax() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
    assert apply_temperature(logits, 1.0) == pytest.approx(softmax(logits, axis=1))
    assert apply_temperature(logits, 2.0) == pytest.approx(softmax(logits / 2, axis=1))
    huge = apply_temperature(np.array([1e6, 1e6 - 1.0]), 0.5)  # [C] works too; no overflow
    assert np.isfinite(huge).all()
    assert huge == pytest.approx(softmax([0.0, -2.0]))
    assert apply_temperature(logits.astype(np.float32), 3.0).dtype == np.float32
    assert apply_temperature(logits, 3.0).sum(axis=1) == pytest.approx([1.0, 1.0])
    for bad in (0.0, -1.0, float("nan"), float("inf"), "warm"):
        with pytest.raises(ValueError, match="temperature must be a positive"):
            apply_temperature(logits, bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Unknown threshold

# Seven labeled validation samples (one unlabeled, ignored). Top-1 probability and rightness:
#   0.8 right, 0.8 right, 0.7 right, 0.7 right, 0.6 wrong, 0.5 wrong, 0.5 wrong
# Precision answering >= 0.8: 2/2; >= 0.7: 4/4; >= 0.6: 4/5 = 0.8; >= 0.5: 4/7.
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.6, 0.1],
        [0.1, 0.8, 0.1],
        [0.5, 0.1, 0.4],
        [0.2, 0.1, 0.7],
        [0.1, 0.5, 0.4],
        [0.9, 0.05, 0.05],
        [0.1, 0.1, 0.8],
    ]
)
LABELS = np.array([0, 0, 1, 1, 2, 2, -1, 2])


def test_threshold_by_hand() -> None:
    choice = choose_unknown_threshold(PROBS, LABELS, target_precision=0.8)
    assert (choice.threshold, choice.achievable) == (0.6, True)
    assert choice.precision == pytest.approx(0.8)
    assert choice.coverage == pytest.approx(5 / 7)
    assert choice.num_labeled == 7
    assert (choice.num_ood, choice.ood_accepted) == (0, None)

    strict = choose_unknown_threshold(PROBS, LABELS, target_precision=0.9)
    assert (strict.threshold, strict.precision, strict.achievable) == (0.7, 1.0, True)
    assert strict.coverage == pytest.approx(4 / 7)
    assert "0.7" in strict.message

    # Everything answered already reaches 0.5: the smallest threshold is 0 (never "unknown").
    lenient = choose_unknown_threshold(PROBS, LABELS, target_precision=0.5)
    assert (lenient.threshold, lenient.coverage, lenient.achievable) == (0.0, 1.0, True)
    assert lenient.precision == pytest.approx(4 / 7)


def test_ood_samples_raise_the_threshold() -> None:
    # Two OOD photos with top-1 probability 0.75 and 0.65, each a wrong answer when accepted:
    # >= 0.8: 2/2; >= 0.75: 2/3; >= 0.7: 4/5; >= 0.65: 4/6; ... so 0.9 needs 0.8 now (was 0.7).
    ood = np.array([[0.75, 0.2, 0.05], [0.1, 0.65, 0.25]])
    choice = choose_unknown_threshold(PROBS, LABELS, target_precision=0.9, ood_probabilities=ood)
    assert (choice.threshold, choice.precision, choice.achievable) == (0.8, 1.0, True)
    assert choice.coverage == pytest.approx(2 / 7)
    assert (choice.num_ood, choice.ood_accepted) == (2, 0.0)
    without = choose_unknown_threshold(PROBS, LABELS, target_precision=0.9)
    assert choice.threshold > without.threshold


def test_unreachable_precision_reports_the_best_threshold() -> None:
    # An OOD photo at 0.95 is the most confident answer and wrong: >= 0.95: 0/1; >= 0.8: 2/3;
    # >= 0.7: 4/5 = 0.8 (the best); >= 0.6: 4/6; >= 0.5: 4/8. Precision 0.9 cannot be reached.
    ood = np.array([[0.95, 0.03, 0.02]])
    choice = choose_unknown_threshold(PROBS, LABELS, target_precision=0.9, ood_probabilities=ood)
    assert choice.achievable is False
    assert choice.threshold == 0.7
    assert choice.precision == pytest.approx(0.8)
    assert choice.ood_accepted == 1.0
    assert "no threshold reaches precision 0.9000; the best is 0.8000" in choice.message


def test_min_coverage_makes_a_reachable_precision_unachievable() -> None:
    # Precision 0.9 needs threshold 0.7, which answers 4/7 = 57% of the images.
    choice = choose_unknown_threshold(PROBS, LABELS, target_precision=0.9, min_coverage=0.6)
    assert (choice.threshold, choice.achievable) == (0.7, False)
    assert "below min_coverage 60.0%" in choice.message
    assert choose_unknown_threshold(PROBS, LABELS, 0.9, min_coverage=0.5).achievable


def test_threshold_on_synthetic_data_is_the_smallest_that_reaches_the_target() -> None:
    logits, labels = _calibrated_logits(3000, 8, seed=3)
    probabilities = softmax(logits, axis=1)
    choice = choose_unknown_threshold(probabilities, labels, target_precision=0.9)
    assert choice.achievable
    assert choice.precision >= 0.9
    stats = rejection_stats(probabilities, labels, choice.threshold)
    assert stats.answered_accuracy == pytest.approx(choice.precision)
    assert stats.coverage == pytest.approx(choice.coverage)
    # Brute force: every observed confidence below the threshold gives precision < 0.9.
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    lower = np.unique(confidence[confidence < choice.threshold])
    assert len(lower) > 0
    assert all(right[confidence >= t].mean() < 0.9 for t in lower)
    # A calibrated model answers far from everything at 90 % precision, but more than nothing.
    assert 0.05 < choice.coverage < 0.95


def test_threshold_choice_to_dict_and_input_checks() -> None:
    choice = choose_unknown_threshold(PROBS, LABELS, 0.8)
    data = json.loads(json.dumps(choice.to_dict(), allow_nan=False))
    assert data["threshold"] == 0.6
    assert data["achievable"] is True
    assert type(data["threshold"]) is float
    with pytest.raises(ValueError, match=r"target_precision must be in \(0, 1\]"):
        choose_unknown_threshold(PROBS, LABELS, 1.5)
    with pytest.raises(ValueError, match="no labeled samples"):
        choose_unknown_threshold(PROBS, np.full(8, -1), 0.9)
    with pytest.raises(ValueError, match="ood_probabilities have 2 columns but probabilities have 3"):
        choose_unknown_threshold(PROBS, LABELS, 0.9, ood_probabilities=[[0.5, 0.5]])
    with pytest.raises(ValueError, match="ood_probabilities row 0 sums to 2"):
        choose_unknown_threshold(PROBS, LABELS, 0.9, ood_probabilities=[[1.0, 0.5, 0.5]])


def test_apply_unknown() -> None:
    indices, top = apply_unknown(PROBS, 0.7)
    assert indices.tolist() == [0, -1, 1, -1, 2, -1, 0, 2]
    assert top == pytest.approx([0.7, 0.6, 0.8, 0.5, 0.7, 0.5, 0.9, 0.8])
    assert UNKNOWN_INDEX == -1
    assert apply_unknown(PROBS, 0.0)[0].tolist() == PROBS.argmax(axis=1).tolist()
    single, single_top = apply_unknown(np.array([0.2, 0.8]), 0.9)
    assert (int(single), float(single_top)) == (-1, 0.8)
    # The same rule as the rejection stats: answered share == share not unknown (labeled samples).
    stats = rejection_stats(PROBS, LABELS, 0.7)
    assert stats.coverage == pytest.approx((indices[LABELS >= 0] != UNKNOWN_INDEX).mean())
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        apply_unknown(PROBS, -0.1)


def test_keep_coverage_answers_the_least_accepted_share_when_precision_would_answer_fewer() -> None:
    # 10 images, confidence falling; right, right, wrong, right, wrong, right, wrong, wrong, right, wrong
    confidence = np.linspace(0.95, 0.5, 10)
    correct = np.array([1, 1, 0, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.where(correct, 0, 1)
    strict = choose_unknown_threshold(probabilities, labels, 0.9, min_coverage=0.6)
    assert not strict.achievable and strict.coverage == pytest.approx(0.2)  # answers only the top 2
    kept = choose_unknown_threshold(probabilities, labels, 0.9, min_coverage=0.6, keep_coverage=True)
    assert not kept.achievable and kept.coverage == pytest.approx(0.6)
    assert kept.threshold == pytest.approx(confidence[5]) and kept.precision == pytest.approx(4 / 6)
    assert "keeping that coverage" in kept.message
    reachable = choose_unknown_threshold(probabilities, labels, 0.6, min_coverage=0.6, keep_coverage=True)
    assert reachable.achievable and reachable.coverage >= 0.6  # the precision target wins when it can
