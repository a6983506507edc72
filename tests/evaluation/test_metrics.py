"""Tests for carid.evaluation.metrics: every metric on tiny hand-worked predictions, scikit-learn as an
independent check, and imports without torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as sk

from carid.evaluation.metrics import (
    as_labels,
    as_probabilities,
    box_stats,
    calibration_stats,
    confusion_matrix,
    display_order,
    evaluate_predictions,
    negative_log_likelihood,
    per_class_metrics,
    rejection_stats,
    taxonomy_level_accuracy,
    top_k_accuracy,
)
from carid.taxonomy import Taxonomy

NAMES = ("Cabrio", "Alpha", "Bravo")

# 8 samples, 3 classes. Sample 6 is unlabeled (-1) and must not change any class metric.
#            probabilities          true  argmax  right  top-1 prob  rank of true class
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # 0      0       yes    0.7         1
        [0.3, 0.6, 0.1],  # 0      1       no     0.6         2
        [0.1, 0.8, 0.1],  # 1      1       yes    0.8         1
        [0.5, 0.1, 0.4],  # 1      0       no     0.5         3
        [0.2, 0.1, 0.7],  # 2      2       yes    0.7         1
        [0.1, 0.5, 0.4],  # 2      1       no     0.5         2
        [0.9, 0.05, 0.05],  # -1   (unlabeled)
        [0.1, 0.1, 0.8],  # 2      2       yes    0.8         1
    ]
)
LABELS = np.array([0, 0, 1, 1, 2, 2, -1, 2])
# Labeled: 7. Right: samples 0, 2, 4, 7 -> top-1 = 4/7. True class in the top 2: all but sample 3 -> 6/7.
# Confusion (rows true, columns predicted):   true 0: [1, 1, 0]   true 1: [1, 1, 0]   true 2: [0, 1, 2]
# Predicted counts 2, 3, 2; supports 2, 2, 3.
# Precision: 1/2, 1/3, 2/2. Recall: 1/2, 1/2, 2/3.
# F1: 0.5; 2 * (1/3)(1/2) / (5/6) = 0.4; 2 * 1 * (2/3) / (5/3) = 0.8.
CONFUSION = [[1, 1, 0], [1, 1, 0], [0, 1, 2]]


def test_top_k_accuracy_by_hand() -> None:
    assert top_k_accuracy(PROBS, LABELS, 1) == pytest.approx(4 / 7)
    assert top_k_accuracy(PROBS, LABELS, 2) == pytest.approx(6 / 7)
    assert top_k_accuracy(PROBS, LABELS, 3) == pytest.approx(1.0)


def test_top_k_larger_than_the_number_of_classes() -> None:
    with pytest.raises(ValueError, match=r"top-4 accuracy needs 1 <= k <= the number of classes \(3\)"):
        top_k_accuracy(PROBS, LABELS, 4)
    with pytest.raises(ValueError, match="top-0"):
        top_k_accuracy(PROBS, LABELS, 0)
    result = evaluate_predictions(PROBS, LABELS, NAMES, top_k=(1, 2, 5))
    assert list(result.top_k_accuracy) == [1, 2]  # top-5 left out with 3 classes
    assert result.to_dict()["top_k_accuracy"] == {"top1": pytest.approx(4 / 7), "top2": pytest.approx(6 / 7)}


def test_top_k_ties_go_to_the_lower_class_index_like_argmax() -> None:
    tied = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2]])
    assert top_k_accuracy(tied, [0, 1], 1) == 0.5  # argmax says class 0 for both
    assert top_k_accuracy(tied, [0, 1], 2) == 1.0


def test_confusion_and_per_class_scores_by_hand() -> None:
    result = evaluate_predictions(PROBS, LABELS, NAMES)
    assert result.num_samples == 8
    assert result.num_labeled == 7
    assert result.accuracy == pytest.approx(4 / 7)
    assert result.confusion.tolist() == CONFUSION
    assert [m.precision for m in result.per_class] == pytest.approx([1 / 2, 1 / 3, 1.0])
    assert [m.recall for m in result.per_class] == pytest.approx([1 / 2, 1 / 2, 2 / 3])
    assert [m.f1 for m in result.per_class] == pytest.approx([0.5, 0.4, 0.8])
    assert [m.support for m in result.per_class] == [2, 2, 3]
    assert [m.predicted for m in result.per_class] == [2, 3, 2]
    # Macro: means of the three. Weighted by support 2, 2, 3 over 7:
    # precision (1 + 2/3 + 3) / 7 = 2/3; recall (1 + 1 + 2) / 7 = 4/7; F1 (1 + 0.8 + 2.4) / 7 = 0.6.
    assert result.macro.precision == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert result.macro.recall == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)
    assert result.macro.f1 == pytest.approx((0.5 + 0.4 + 0.8) / 3)
    assert result.weighted.precision == pytest.approx(2 / 3)
    assert result.weighted.recall == pytest.approx(4 / 7)
    assert result.weighted.f1 == pytest.approx(0.6)


def test_most_confused_pairs_sorted_by_count_then_share() -> None:
    counts = np.array([[5, 3, 0, 1], [2, 4, 0, 0], [0, 3, 9, 0], [0, 0, 1, 1]])
    labels = np.repeat(np.arange(4), counts.sum(axis=1))
    predicted = np.concatenate([np.repeat(np.arange(4), row) for row in counts])
    probabilities = np.eye(4)[predicted]
    result = evaluate_predictions(probabilities, labels, ["a", "b", "c", "d"], max_confused_pairs=4)
    assert result.confusion.tolist() == counts.tolist()
    # Off-diagonal cells: (0,1)=3 of 9, (2,1)=3 of 12, (1,0)=2 of 6, (0,3)=1 of 9, (3,2)=1 of 2.
    # Count first; on equal counts the larger share of the true class first; the 5th is cut.
    pairs = [(p.true_index, p.predicted_index, p.count, p.share) for p in result.confused_pairs]
    assert pairs == [
        (0, 1, 3, pytest.approx(3 / 9)),
        (2, 1, 3, pytest.approx(3 / 12)),
        (1, 0, 2, pytest.approx(2 / 6)),
        (3, 2, 1, pytest.approx(1 / 2)),
    ]
    assert result.confused_pairs[0].true_name == "a"
    assert result.confused_pairs[0].predicted_name == "b"


def test_hand_example_pairs_and_display_order_without_taxonomy() -> None:
    result = evaluate_predictions(PROBS, LABELS, NAMES)
    # All three confusions have count 1; shares 1/2, 1/2, 1/3; ties broken by true index.
    pairs = [(p.true_index, p.predicted_index, p.share) for p in result.confused_pairs]
    assert pairs == [(0, 1, 0.5), (1, 0, 0.5), (2, 1, pytest.approx(1 / 3))]
    assert result.display_order == (1, 2, 0)  # Alpha, Bravo, Cabrio


def test_scores_agree_with_scikit_learn_on_random_predictions() -> None:
    rng = np.random.default_rng(7)
    num_classes = 6
    logits = rng.normal(size=(300, num_classes)) * 2
    logits[:, 4] -= 100  # class 4 is never predicted: precision 0 (zero_division=0)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, num_classes, size=300)
    labels[labels == 5] = 0  # class 5 never occurs in the labels: left out of the averages
    labels[:20] = -1
    names = [f"class {i}" for i in range(num_classes)]
    result = evaluate_predictions(probabilities, labels, names)

    keep = labels >= 0
    truth, guess = labels[keep], probabilities[keep].argmax(axis=1)
    expected_confusion = sk.confusion_matrix(truth, guess, labels=list(range(num_classes)))
    assert result.confusion.tolist() == expected_confusion.tolist()
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        truth, guess, labels=list(range(num_classes)), zero_division=0
    )
    assert [m.precision for m in result.per_class] == pytest.approx(precision)
    assert [m.recall for m in result.per_class] == pytest.approx(recall)
    assert [m.f1 for m in result.per_class] == pytest.approx(f1)
    assert [m.support for m in result.per_class] == support.tolist()
    present = sorted(set(truth.tolist()))
    for average, ours in (("macro", result.macro), ("weighted", result.weighted)):
        p, r, f, _ = sk.precision_recall_fscore_support(
            truth, guess, labels=present, average=average, zero_division=0
        )
        assert (ours.precision, ours.recall, ours.f1) == pytest.approx((p, r, f))
    assert result.accuracy == pytest.approx(sk.accuracy_score(truth, guess))
    assert result.top_k_accuracy[5] == pytest.approx(
        sk.top_k_accuracy_score(truth, probabilities[keep], k=5, labels=list(range(num_classes)))
    )
    # NLL on probabilities without the near-zero column (the two clip zeros differently).
    plain = np.exp(logits[:, :4]) / np.exp(logits[:, :4]).sum(axis=1, keepdims=True)
    plain_labels = np.where(labels >= 4, -1, labels)
    assert negative_log_likelihood(plain, plain_labels) == pytest.approx(
        sk.log_loss(plain_labels[plain_labels >= 0], plain[plain_labels >= 0], labels=list(range(4)))
    )


def test_confusion_matrix_skips_unlabeled_and_checks_indices() -> None:
    assert confusion_matrix([0, -1, 1], [1, 0, 1], 2).tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match=r"predicted\[1\] = 5 is not a class index"):
        confusion_matrix([0, 1], [0, 5], 2)


def test_per_class_metrics_rejects_an_empty_confusion() -> None:
    with pytest.raises(ValueError, match="no labeled samples"):
        per_class_metrics(np.zeros((2, 2), dtype=np.int64), ["a", "b"])


def test_ece_two_bins_by_hand() -> None:
    # Bins (0, 0.5] and (0.5, 1]. Labeled top-1 probabilities and rightness:
    #   bin 0: samples 3, 5 at 0.5, both wrong -> confidence 0.5, accuracy 0, count 2
    #   bin 1: 0.7 right, 0.6 wrong, 0.8 right, 0.7 right, 0.8 right -> confidence 3.6 / 5 = 0.72,
    #          accuracy 4 / 5 = 0.8, count 5
    # ECE = 2/7 * |0 - 0.5| + 5/7 * |0.8 - 0.72| = (1 + 0.4) / 7 = 0.2
    stats = calibration_stats(PROBS, LABELS, num_bins=2)
    assert stats.ece == pytest.approx(0.2)
    assert [(b.lower, b.upper, b.count) for b in stats.bins] == [(0.0, 0.5, 2), (0.5, 1.0, 5)]
    assert [b.confidence for b in stats.bins] == pytest.approx([0.5, 0.72])
    assert [b.accuracy for b in stats.bins] == pytest.approx([0.0, 0.8])


def test_ece_fifteen_bins_by_hand() -> None:
    # Width 1/15; a confidence on an edge goes to the lower bin: 0.5 -> bin 7 (7/15, 8/15],
    # 0.6 = 9/15 -> bin 8, 0.7 -> bin 10 (10/15, 11/15], 0.8 = 12/15 -> bin 11.
    # Each bin holds one confidence value: ECE = (2 * 0.5 + 1 * 0.6 + 2 * 0.3 + 2 * 0.2) / 7 = 2.6 / 7.
    stats = evaluate_predictions(PROBS, LABELS, NAMES).calibration
    assert stats.num_bins == 15
    assert len(stats.bins) == 15
    assert stats.ece == pytest.approx(2.6 / 7)
    assert {b: stats.bins[b].count for b in range(15) if stats.bins[b].count} == {7: 2, 8: 1, 10: 2, 11: 2}
    assert stats.bins[0].confidence is None
    assert stats.bins[0].accuracy is None
    assert stats.bins[8].accuracy == 0.0


def test_nll_by_hand() -> None:
    true_class_probability = [0.7, 0.3, 0.8, 0.1, 0.7, 0.4, 0.8]  # sample 6 unlabeled
    expected = -sum(math.log(p) for p in true_class_probability) / 7
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected)
    assert calibration_stats(PROBS, LABELS).nll == pytest.approx(expected)
    # A zero probability for the true class is clipped, not infinite.
    assert negative_log_likelihood([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12))


# Boxes of the 8 samples: true box [0, 0, 10, 10] (area 100) for the samples that have one.
TRUE_BOX = [0.0, 0.0, 10.0, 10.0]
PRED_BOXES = np.array(
    [
        [0, 0, 10, 10],  # 0: IoU 1           right class -> correct and found
        [5, 0, 15, 10],  # 1: 50 / 150 = 1/3  wrong class
        [0, 0, 10, 5],  # 2: 50 / 100 = 0.5  right class -> found (IoU >= 0.5 counts)
        [0, 0, 10, 8],  # 3: 0.8             wrong class
        [20, 20, 30, 30],  # 4: 0            right class, not found
        [0, 0, 10, 10],  # 5: no true box
        [0, 0, 10, 7.5],  # 6: 0.75          unlabeled: counts for IoU, not for correct-and-found
        [0, 0, 10, 10],  # 7: no true box
    ],
    dtype=np.float64,
)
HAS_BOX = np.array([True, True, True, True, True, False, True, False])


def _true_boxes() -> np.ndarray:
    boxes = np.tile(TRUE_BOX, (8, 1))
    boxes[~HAS_BOX] = np.nan
    return boxes


def test_box_iou_stats_and_correct_and_found_by_hand() -> None:
    # IoUs over the 6 samples with a box: 1, 1/3, 0.5, 0.8, 0, 0.75.
    # mean = 3.38333 / 6; median = (0.5 + 0.75) / 2; >= 0.5: 4 of 6; >= 0.75: 3 of 6.
    # Correct and found over the 5 labeled samples with a box: samples 0 and 2 -> 2/5.
    result = evaluate_predictions(PROBS, LABELS, NAMES, pred_boxes=PRED_BOXES, true_boxes=_true_boxes())
    boxes = result.boxes
    assert boxes is not None
    assert boxes.count == 6
    assert boxes.mean_iou == pytest.approx((1 + 1 / 3 + 0.5 + 0.8 + 0 + 0.75) / 6)
    assert boxes.median_iou == pytest.approx(0.625)
    assert boxes.share_iou_50 == pytest.approx(4 / 6)
    assert boxes.share_iou_75 == pytest.approx(3 / 6)
    assert boxes.labeled_count == 5
    assert boxes.correct_and_found == pytest.approx(2 / 5)
    # An explicit has_box gives the same, whatever the rows without a box hold.
    explicit = box_stats(PRED_BOXES, np.tile(TRUE_BOX, (8, 1)), HAS_BOX, LABELS, PROBS.argmax(axis=1))
    assert explicit == boxes


def test_box_stats_errors_and_empty() -> None:
    with pytest.raises(ValueError, match="pass both pred_boxes and true_boxes"):
        evaluate_predictions(PROBS, LABELS, NAMES, pred_boxes=PRED_BOXES)
    with pytest.raises(ValueError, match="pred_boxes row 5 has a NaN"):
        bad = PRED_BOXES.copy()
        bad[5] = np.nan
        box_stats(bad, np.tile(TRUE_BOX, (8, 1)), np.ones(8, dtype=bool))
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \[N, 4\]"):
        box_stats(np.zeros((8, 3)), _true_boxes())
    empty = box_stats(PRED_BOXES, np.full((8, 4), np.nan))
    assert (empty.count, empty.mean_iou, empty.correct_and_found) == (0, None, None)
    assert evaluate_predictions(PROBS, LABELS, NAMES).boxes is None


TOY_CLASSES = ("Audi A4 Sedan 2012", "Audi TT Coupe 2012", "BMW X5 SUV 2007", "BMW M3 Coupe 2012")
# Makes: Audi, Audi, BMW, BMW. Body types (canonical order Sedan, SUV, Coupe): Sedan, Coupe, SUV, Coupe.
# Years (2007, 2012): 2012, 2012, 2007, 2012.
TOY_PROBS = np.array(
    [
        [0.4, 0.0, 0.3, 0.3],  # true BMW M3 Coupe 2012
        [0.1, 0.6, 0.1, 0.2],  # true Audi A4 Sedan 2012
        [0.1, 0.1, 0.7, 0.1],  # true BMW X5 SUV 2007
        [0.2, 0.5, 0.0, 0.3],  # true BMW X5 SUV 2007
        [1.0, 0.0, 0.0, 0.0],  # unlabeled
    ]
)
TOY_LABELS = np.array([3, 0, 2, 2, -1])
# Rolled up:            make (Audi, BMW)   body (Sedan, SUV, Coupe)   year (2007, 2012)
#   sample 0            0.4, 0.6 -> BMW ok   0.4, 0.3, 0.3 -> Sedan x   0.3, 0.7 -> 2012 ok
#   sample 1            0.7, 0.3 -> Audi ok  0.1, 0.1, 0.8 -> Coupe x   0.1, 0.9 -> 2012 ok
#   sample 2            0.2, 0.8 -> BMW ok   0.1, 0.7, 0.2 -> SUV ok    0.7, 0.3 -> 2007 ok
#   sample 3            0.7, 0.3 -> Audi x   0.2, 0.0, 0.8 -> Coupe x   0.0, 1.0 -> 2012 x
# make 3/4 (sample 0 is right although its top class, the Audi A4, is wrong), body 1/4, year 3/4.


def test_taxonomy_level_accuracy_with_a_toy_taxonomy() -> None:
    taxonomy = Taxonomy.from_class_names(TOY_CLASSES)
    levels = taxonomy_level_accuracy(TOY_PROBS, TOY_LABELS, taxonomy)
    assert [(level.level, level.num_values) for level in levels] == [
        ("make", 2),
        ("body_type", 3),
        ("year", 2),
    ]
    assert [level.accuracy for level in levels] == pytest.approx([3 / 4, 1 / 4, 3 / 4])
    result = evaluate_predictions(TOY_PROBS, TOY_LABELS, TOY_CLASSES, taxonomy=taxonomy)
    assert result.accuracy == pytest.approx(1 / 4)  # only sample 2's top class is right
    assert result.taxonomy_levels == levels
    # Display order: by make, then name: Audi A4, Audi TT, BMW M3, BMW X5.
    assert result.display_order == (0, 1, 3, 2)
    assert display_order(TOY_CLASSES) == (0, 1, 3, 2)
    assert evaluate_predictions(TOY_PROBS, TOY_LABELS, TOY_CLASSES).taxonomy_levels == ()


def test_taxonomy_display_order_groups_by_make_not_by_name() -> None:
    # Makes: AMC, AM General (a known two-word make), AM. By name alone, "AM General Hummer" sorts
    # before "AM Zeta" and splits nothing here, but by make "AM" < "AM General" < "AMC".
    names = ("AMC Eagle Wagon 1985", "AM General Hummer SUV 2000", "AM Zeta Sedan 2010")
    taxonomy = Taxonomy.from_class_names(names)
    assert taxonomy.labels("make") == ["AMC", "AM General", "AM"]
    assert display_order(names) == (1, 2, 0)
    assert display_order(names, taxonomy) == (2, 1, 0)


def test_levels_with_a_single_value_are_left_out() -> None:
    taxonomy = Taxonomy.from_class_names(["Audi A4 Sedan 2012", "Audi TT Coupe 2012"])
    levels = taxonomy_level_accuracy([[0.9, 0.1], [0.2, 0.8]], [0, 0], taxonomy)
    assert [level.level for level in levels] == ["body_type"]
    assert levels[0].accuracy == 0.5


def test_samples_whose_class_does_not_say_the_value_are_not_scored_at_that_level() -> None:
    # "Honda Jazz Hatchback" has no year: its year is "Unknown". Sample 1 (a Jazz) predicted as the
    # Jazz must not count as a right year; sample 0 (a 2012 Audi) predicted as the Jazz says year
    # "Unknown", which is wrong.
    taxonomy = Taxonomy.from_class_names(["Audi TT Coupe 2012", "Honda Jazz Hatchback", "BMW M3 Coupe 2010"])
    probabilities = [[0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]
    levels = {
        level.level: level.accuracy for level in taxonomy_level_accuracy(probabilities, [0, 1, 2], taxonomy)
    }
    assert levels["year"] == pytest.approx(1 / 2)  # samples 0 (wrong: "Unknown") and 2 (right)
    assert levels["body_type"] == pytest.approx(2 / 3)  # every body is known; sample 0 says Hatchback
    only_unknown = taxonomy_level_accuracy(probabilities[1:2], [1], taxonomy)
    assert "year" not in {level.level for level in only_unknown}


def test_taxonomy_must_match_the_classes() -> None:
    taxonomy = Taxonomy.from_class_names(TOY_CLASSES)
    with pytest.raises(ValueError, match="taxonomy classes differ from class_names"):
        evaluate_predictions(TOY_PROBS, TOY_LABELS, list(reversed(TOY_CLASSES)), taxonomy=taxonomy)
    with pytest.raises(ValueError, match="taxonomy has 4 classes but probabilities have 3 columns"):
        taxonomy_level_accuracy(PROBS, LABELS, taxonomy)


def test_rejection_stats_by_hand() -> None:
    # Threshold 0.7 answers the labeled samples with top-1 probability >= 0.7: 0, 2, 4, 7 (all right).
    # Sample 6 (0.9) is unlabeled and not counted. Coverage 4/7, rejected 3/7, accuracy answered 1.
    result = evaluate_predictions(PROBS, LABELS, NAMES, unknown_threshold=0.7)
    rejection = result.rejection
    assert rejection is not None
    assert (rejection.num_labeled, rejection.num_answered) == (7, 4)
    assert rejection.coverage == pytest.approx(4 / 7)
    assert rejection.rejected == pytest.approx(3 / 7)
    assert rejection.answered_accuracy == 1.0
    nobody = rejection_stats(PROBS, LABELS, 0.95)
    assert (nobody.coverage, nobody.answered_accuracy) == (0.0, None)
    assert evaluate_predictions(PROBS, LABELS, NAMES).rejection is None
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got 1.5"):
        rejection_stats(PROBS, LABELS, 1.5)


def test_unlabeled_samples_change_no_class_metric() -> None:
    with_unlabeled = evaluate_predictions(PROBS, LABELS, NAMES, unknown_threshold=0.6)
    keep = LABELS >= 0
    without = evaluate_predictions(PROBS[keep], LABELS[keep], NAMES, unknown_threshold=0.6)
    first, second = with_unlabeled.to_dict(), without.to_dict()
    assert first.pop("num_samples") == 8
    assert second.pop("num_samples") == 7
    assert first == second


def test_to_dict_is_json_ready_and_the_confusion_read_only() -> None:
    taxonomy = Taxonomy.from_class_names(TOY_CLASSES)
    result = evaluate_predictions(
        TOY_PROBS,
        TOY_LABELS,
        TOY_CLASSES,
        taxonomy=taxonomy,
        pred_boxes=np.tile(TRUE_BOX, (5, 1)),
        true_boxes=np.tile(TRUE_BOX, (5, 1)),
        unknown_threshold=0.5,
    )
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["confusion"] == result.confusion.tolist()
    assert data["class_names"] == list(TOY_CLASSES)
    assert data["boxes"]["mean_iou"] == 1.0
    assert data["taxonomy_levels"][0] == {"level": "make", "accuracy": 0.75, "num_values": 2}
    assert len(data["calibration"]["bins"]) == 15
    with pytest.raises(ValueError, match="read-only"):
        result.confusion[0, 0] = 99


def test_bad_inputs_name_the_row() -> None:
    with pytest.raises(ValueError, match="probabilities row 1 sums to 3, not 1: pass softmax probabilities"):
        as_probabilities([[0.5, 0.5], [1.0, 2.0]])
    with pytest.raises(ValueError, match="probabilities row 0 has a NaN"):
        as_probabilities([[np.nan, 1.0]])
    with pytest.raises(ValueError, match="probabilities row 0 has a negative value"):
        as_probabilities([[-0.5, 1.5]])
    with pytest.raises(ValueError, match=r"shape \[N, C\]"):
        as_probabilities([0.5, 0.5])
    with pytest.raises(ValueError, match=r"labels\[2\] = 3 is not a class index \(0..2\) or -1"):
        as_labels([0, 1, 3], 3, 3)
    with pytest.raises(ValueError, match=r"labels\[0\] = 0.5 is not a class index"):
        as_labels([0.5], 1, 3)
    assert as_labels([1.0, -1.0], 2, 3).tolist() == [1, -1]
    with pytest.raises(ValueError, match=r"labels must have shape \[3\]"):
        as_labels([0, 1], 3, 3)
    with pytest.raises(ValueError, match="2 class names for 3 probability columns"):
        evaluate_predictions(PROBS, LABELS, NAMES[:2])
    with pytest.raises(ValueError, match="no labeled samples"):
        evaluate_predictions(PROBS, np.full(8, -1), NAMES)


def test_modules_import_without_torch_or_scipy() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['scipy'] = None; "
        "import carid.evaluation, carid.evaluation.metrics, carid.evaluation.calibration; "
        "print(sorted(m for m in ('torch', 'scipy', 'sklearn', 'pandas') if sys.modules.get(m)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
