"""Scores of a model's predictions, computed from arrays (not from models).

`evaluate_predictions` takes the softmax probabilities [N, C] of N images, their true class indices
[N] (-1 = unlabeled: ignored by every class metric), optionally the predicted and true boxes, the
class names and a `Taxonomy`, and returns an `EvaluationResult` (frozen, `to_dict()` is JSON-ready):

- top-k accuracy for each requested k <= C (top-1 and top-5 by default);
- per-class precision / recall / F1 / support, their macro and support-weighted averages;
- the confusion matrix [C, C] (rows = true class, columns = predicted class), the most confused
  (true, predicted) pairs and a class order that keeps related classes together for display;
- box IoU statistics and "correct and found" accuracy (right class and IoU >= 0.5);
- calibration: expected calibration error (ECE, 15 equal-width bins), the reliability-diagram
  data per bin and the negative log-likelihood;
- accuracy at each taxonomy level (make, body type, year), from probabilities rolled up the taxonomy;
- with an "unknown" threshold: coverage, accuracy on the answered images and the share rejected.

Conventions (the same as scikit-learn's with ``zero_division=0``): a class that is never predicted
has precision 0; a class with no true samples has recall 0 and is left out of the macro average
(the averages run over the classes present in the labels). Top-k ranks classes by a stable sort,
so ties go to the lower class index, as `argmax` does for top-1. Plotting lives in the report
module; this module only returns the numbers.

The metrics are written by hand in NumPy instead of using torchmetrics or scikit-learn because this
module must import in the slim install (no torch, no scikit-learn); each is a few lines, and the
tests check them against scikit-learn and against values derived by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from carid.boxes import paired_iou
from carid.evaluation.metric_records import (
    AveragedMetrics,
    BoxStats,
    CalibrationStats,
    ClassMetrics,
    ConfusedPair,
    EvaluationResult,
    LevelAccuracy,
    RejectionStats,
    ReliabilityBin,
    _optional,
)
from carid.runtime.calibration import as_threshold
from carid.taxonomy import UNKNOWN, Taxonomy, roll_up

DEFAULT_TOP_K: tuple[int, ...] = (1, 5)


ECE_BINS = 15


FOUND_IOU = 0.5  # a box is "found" when its IoU with the true box is at least this


MAX_CONFUSED_PAIRS = 20


TAXONOMY_LEVELS: tuple[str, ...] = ("make", "body_type", "year")


NLL_FLOOR = 1e-12  # probabilities are clipped to this before the log, so one zero cannot make NLL infinite


SUM_TOLERANCE = 1e-3  # how far a probability row may sum from 1


def as_score_matrix(values: object, name: str) -> np.ndarray:
    """Validated float64 [N, C] scores (logits or probabilities): C >= 1, every value finite.

    Raises ValueError naming `name` and the first bad row.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, C] with C >= 1, got {list(array.shape)}")
    not_finite = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if not_finite.size:
        raise ValueError(f"{name} row {not_finite[0]} has a NaN or infinite value")
    return array


def as_probabilities(probabilities: object, name: str = "probabilities") -> np.ndarray:
    """Validated float64 [N, C] probabilities: finite, non-negative, each row summing to 1.

    Raises ValueError naming the first bad row; a row that does not sum to 1 usually means logits
    were passed where softmax probabilities were expected.
    """
    array = as_score_matrix(probabilities, name)
    negative = np.flatnonzero((array < 0).any(axis=1))
    if negative.size:
        raise ValueError(f"{name} row {negative[0]} has a negative value")
    sums = array.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if off.size:
        row = off[0]
        raise ValueError(
            f"{name} row {row} sums to {sums[row]:.6g}, not 1: pass softmax probabilities, not logits"
        )
    return array


def as_labels(labels: object, num_samples: int, num_classes: int, name: str = "labels") -> np.ndarray:
    """Validated int64 [N] class indices in 0..C-1, or -1 for an unlabeled sample."""
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) != num_samples:
        raise ValueError(f"{name} must have shape [{num_samples}], got {list(array.shape)}")
    if array.dtype.kind == "f":
        not_integral = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if not_integral.size:
            row = not_integral[0]
            raise ValueError(f"{name}[{row}] = {array[row].item()!r} is not a class index")
    elif array.dtype.kind not in "iu" and array.size:
        raise ValueError(f"{name} must be integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    out_of_range = np.flatnonzero((array < -1) | (array >= num_classes))
    if out_of_range.size:
        row = out_of_range[0]
        raise ValueError(
            f"{name}[{row}] = {array[row]} is not a class index (0..{num_classes - 1}) or -1 (unlabeled)"
        )
    return array


def _labeled(labels: np.ndarray) -> np.ndarray:
    """[N] bool: the samples with a class label; raises when there is none."""
    mask = labels >= 0
    if not mask.any():
        raise ValueError("no labeled samples: every label is -1")
    return mask


def top_k_accuracy(probabilities: object, labels: object, k: int) -> float:
    """Share of labeled samples whose true class is among the k most probable; needs 1 <= k <= C.

    probabilities: [N, C] softmax. labels: [N] class indices, -1 ignored.
    """
    probs = as_probabilities(probabilities)
    num_classes = probs.shape[1]
    truth = as_labels(labels, len(probs), num_classes)
    if not 1 <= k <= num_classes:
        raise ValueError(f"top-{k} accuracy needs 1 <= k <= the number of classes ({num_classes})")
    labeled = _labeled(truth)
    ranked = np.argsort(-probs[labeled], axis=1, kind="stable")[:, :k]
    return float((ranked == truth[labeled, None]).any(axis=1).mean())


def confusion_matrix(labels: object, predicted: object, num_classes: int) -> np.ndarray:
    """int64 [C, C] counts, rows = true class, columns = predicted class; labels -1 are skipped."""
    truth = as_labels(labels, len(np.asarray(labels)), num_classes)
    guess = as_labels(predicted, len(truth), num_classes, name="predicted")
    keep = truth >= 0
    if (guess[keep] < 0).any():
        raise ValueError("predicted must be a class index for every labeled sample")
    flat = truth[keep] * num_classes + guess[keep]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_metrics(
    confusion: np.ndarray, class_names: Sequence[str]
) -> tuple[tuple[ClassMetrics, ...], AveragedMetrics, AveragedMetrics]:
    """(per-class scores, macro average, weighted average) from a confusion matrix [C, C].

    Averages run over the classes with support > 0; see the module docstring for zero divisions.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    true_positives = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros_like(true_positives), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    per_class = tuple(
        ClassMetrics(
            index=index,
            name=class_names[index],
            precision=float(precision[index]),
            recall=float(recall[index]),
            f1=float(f1[index]),
            support=int(support[index]),
            predicted=int(predicted[index]),
        )
        for index in range(len(counts))
    )
    present = support > 0
    if not present.any():
        raise ValueError("no labeled samples: the confusion matrix is empty")
    macro = AveragedMetrics(
        precision=float(precision[present].mean()),
        recall=float(recall[present].mean()),
        f1=float(f1[present].mean()),
    )
    weights = support / support.sum()
    weighted = AveragedMetrics(
        precision=float(weights @ precision), recall=float(weights @ recall), f1=float(weights @ f1)
    )
    return per_class, macro, weighted


def most_confused_pairs(
    confusion: np.ndarray, class_names: Sequence[str], limit: int = MAX_CONFUSED_PAIRS
) -> tuple[ConfusedPair, ...]:
    """The `limit` largest off-diagonal cells of the confusion matrix, by count, then share of the
    true class, then true and predicted index."""
    counts = np.asarray(confusion, dtype=np.int64)
    support = counts.sum(axis=1)
    off_diagonal = counts.copy()
    np.fill_diagonal(off_diagonal, 0)
    true_index, predicted_index = np.nonzero(off_diagonal)
    pair_counts = off_diagonal[true_index, predicted_index]
    shares = pair_counts / support[true_index]
    order = np.lexsort((predicted_index, true_index, -shares, -pair_counts))[:limit]
    return tuple(
        ConfusedPair(
            true_index=int(true_index[i]),
            true_name=class_names[true_index[i]],
            predicted_index=int(predicted_index[i]),
            predicted_name=class_names[predicted_index[i]],
            count=int(pair_counts[i]),
            share=float(shares[i]),
        )
        for i in order
    )


def display_order(class_names: Sequence[str], taxonomy: Taxonomy | None = None) -> tuple[int, ...]:
    """Class indices in display order: by make (taxonomy order) then name, or by name without a
    taxonomy. Models of one make, where most confusion happens, then sit next to each other."""
    if taxonomy is None:
        return tuple(
            sorted(range(len(class_names)), key=lambda i: (class_names[i].casefold(), class_names[i]))
        )
    make_rank = taxonomy.index_matrix("make")
    return tuple(
        sorted(
            range(len(class_names)),
            key=lambda i: (int(make_rank[i]), class_names[i].casefold(), class_names[i]),
        )
    )


def box_stats(
    pred_boxes: object,
    true_boxes: object,
    has_box: object | None = None,
    labels: object | None = None,
    predicted: object | None = None,
) -> BoxStats:
    """IoU statistics and "correct and found" accuracy.

    pred_boxes, true_boxes: [N, 4] absolute xyxy pixels. has_box: [N] bool, which samples have a
    true box (default: the rows of true_boxes without NaN). labels, predicted: [N] class indices
    (-1 = unlabeled) for "correct and found"; without them that field is None.
    """
    predicted_xyxy = np.asarray(pred_boxes, dtype=np.float64)
    true_xyxy = np.asarray(true_boxes, dtype=np.float64)
    for name, array in (("pred_boxes", predicted_xyxy), ("true_boxes", true_xyxy)):
        if array.ndim != 2 or array.shape[1] != 4:
            raise ValueError(f"{name} must have shape [N, 4] (xyxy pixels), got {list(array.shape)}")
    num_samples = len(true_xyxy)
    if len(predicted_xyxy) != num_samples:
        raise ValueError(f"pred_boxes has {len(predicted_xyxy)} rows but true_boxes has {num_samples}")
    if has_box is None:
        with_box = np.isfinite(true_xyxy).all(axis=1)
    else:
        with_box = np.asarray(has_box)
        if with_box.dtype != np.bool_ or with_box.shape != (num_samples,):
            raise ValueError(f"has_box must be a bool array of shape [{num_samples}]")
    for name, array in (("true_boxes", true_xyxy), ("pred_boxes", predicted_xyxy)):
        missing = np.flatnonzero(with_box & ~np.isfinite(array).all(axis=1))
        if missing.size:
            raise ValueError(f"{name} row {missing[0]} has a NaN or infinite value but has_box is true")
    overlap = paired_iou(predicted_xyxy[with_box], true_xyxy[with_box])
    count = len(overlap)

    labeled_count = 0
    correct_and_found: float | None = None
    if labels is not None and predicted is not None:
        truth = np.asarray(labels, dtype=np.int64)
        guess = np.asarray(predicted, dtype=np.int64)
        if truth.shape != (num_samples,) or guess.shape != (num_samples,):
            raise ValueError(f"labels and predicted must have shape [{num_samples}]")
        scored = with_box & (truth >= 0)
        labeled_count = int(scored.sum())
        if labeled_count:
            found = np.zeros(num_samples, dtype=bool)
            found[with_box] = overlap >= FOUND_IOU
            correct_and_found = float(((guess == truth) & found)[scored].mean())
    if count == 0:
        return BoxStats(0, None, None, None, None, labeled_count, correct_and_found)
    return BoxStats(
        count=count,
        mean_iou=float(overlap.mean()),
        median_iou=float(np.median(overlap)),
        share_iou_50=float((overlap >= 0.5).mean()),
        share_iou_75=float((overlap >= 0.75).mean()),
        labeled_count=labeled_count,
        correct_and_found=correct_and_found,
    )


def negative_log_likelihood(probabilities: object, labels: object) -> float:
    """Mean -log p(true class) in nats over the labeled samples; p is clipped to `NLL_FLOOR`."""
    probs = as_probabilities(probabilities)
    truth = as_labels(labels, len(probs), probs.shape[1])
    labeled = _labeled(truth)
    true_probability = probs[labeled, truth[labeled]]
    return float(-np.log(np.maximum(true_probability, NLL_FLOOR)).mean())


def calibration_stats(probabilities: object, labels: object, num_bins: int = ECE_BINS) -> CalibrationStats:
    """ECE and reliability-diagram data from `num_bins` equal-width confidence bins, plus NLL.

    Bin b holds the labeled samples whose top-1 probability is in (b / num_bins, (b + 1) / num_bins]
    (the first bin also holds 0). Confidence and accuracy are the top-1 ones.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}")
    probs = as_probabilities(probabilities)
    truth = as_labels(labels, len(probs), probs.shape[1])
    labeled = _labeled(truth)
    confidence = probs[labeled].max(axis=1)
    correct = (probs[labeled].argmax(axis=1) == truth[labeled]).astype(np.float64)
    edges = np.arange(num_bins + 1) / num_bins  # k / B is correctly rounded, so 0.6 == 9 / 15 exactly
    bin_index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    counts = np.bincount(bin_index, minlength=num_bins)
    confidence_sum = np.bincount(bin_index, weights=confidence, minlength=num_bins)
    correct_sum = np.bincount(bin_index, weights=correct, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = confidence_sum / counts
        accuracy = correct_sum / counts
    gaps = np.abs(correct_sum - confidence_sum)  # = count * |accuracy - confidence|
    bins = tuple(
        ReliabilityBin(
            lower=float(edges[b]),
            upper=float(edges[b + 1]),
            count=int(counts[b]),
            confidence=_optional(mean_confidence[b]),
            accuracy=_optional(accuracy[b]),
        )
        for b in range(num_bins)
    )
    return CalibrationStats(
        num_bins=num_bins,
        ece=float(gaps.sum() / len(confidence)),
        nll=negative_log_likelihood(probs, truth),
        bins=bins,
    )


def taxonomy_level_accuracy(
    probabilities: object,
    labels: object,
    taxonomy: Taxonomy,
    levels: Sequence[str] = TAXONOMY_LEVELS,
) -> tuple[LevelAccuracy, ...]:
    """Accuracy per taxonomy level, predicting the argmax of the probabilities rolled up to the level.

    This can be right when the top class is wrong: 0.4 Audi A4 + 0.3 + 0.3 on two BMWs says BMW.
    Levels with fewer than two values (every class the same year, or all "Unknown") are left out:
    their accuracy would be 1 whatever the model does. Samples whose true class does not say its
    value ("Unknown": a name that parses partially, e.g. no year) are not scored at that level, since
    answering "Unknown" for them is no identification; answering "Unknown" for a known value is wrong.
    """
    probs = as_probabilities(probabilities)
    if taxonomy.num_classes != probs.shape[1]:
        raise ValueError(
            f"taxonomy has {taxonomy.num_classes} classes but probabilities have {probs.shape[1]} columns"
        )
    truth = as_labels(labels, len(probs), probs.shape[1])
    labeled = _labeled(truth)
    results = []
    for level in levels:
        num_values = len(taxonomy.values(level))
        if num_values < 2:
            continue
        known = labeled.copy()
        known[labeled] = np.array(taxonomy.labels(level), dtype=object)[truth[labeled]] != UNKNOWN
        if not known.any():
            continue
        rolled = roll_up(probs[known], taxonomy, level)
        true_value = taxonomy.index_matrix(level)[truth[known]]
        accuracy = float((rolled.argmax(axis=1) == true_value).mean())
        results.append(LevelAccuracy(level=level, accuracy=accuracy, num_values=num_values))
    return tuple(results)


def rejection_stats(probabilities: object, labels: object, threshold: float) -> RejectionStats:
    """Coverage and accuracy when images whose top-1 probability is below `threshold` are answered
    "unknown" (the rule of `carid.evaluation.calibration.apply_unknown`), over the labeled samples."""
    value = as_threshold(threshold)
    probs = as_probabilities(probabilities)
    truth = as_labels(labels, len(probs), probs.shape[1])
    labeled = _labeled(truth)
    answered = probs[labeled].max(axis=1) >= value
    correct = probs[labeled].argmax(axis=1) == truth[labeled]
    num_answered = int(answered.sum())
    coverage = num_answered / int(labeled.sum())
    return RejectionStats(
        threshold=value,
        num_labeled=int(labeled.sum()),
        num_answered=num_answered,
        coverage=coverage,
        rejected=1.0 - coverage,
        answered_accuracy=float(correct[answered].mean()) if num_answered else None,
    )


def evaluate_predictions(
    probabilities: object,
    labels: object,
    class_names: Sequence[str],
    *,
    pred_boxes: object | None = None,
    true_boxes: object | None = None,
    has_box: object | None = None,
    taxonomy: Taxonomy | None = None,
    unknown_threshold: float | None = None,
    top_k: Sequence[int] = DEFAULT_TOP_K,
    num_bins: int = ECE_BINS,
    max_confused_pairs: int = MAX_CONFUSED_PAIRS,
) -> EvaluationResult:
    """Every score of one set of predictions (see the module docstring).

    probabilities: [N, C] softmax probabilities, columns in class-index order.
    labels: [N] true class indices; -1 marks an unlabeled sample, ignored by the class metrics
    (its box still counts in the IoU statistics).
    class_names: C names in class-index order; taxonomy, when given, must have the same classes.
    pred_boxes, true_boxes: [N, 4] absolute xyxy pixels (both or neither); has_box: [N] bool
    (default: the true_boxes rows without NaN).
    unknown_threshold: top-1 probability below which the answer is "unknown" (rejection stats).
    top_k: the k of the top-k accuracies; k larger than C is left out.
    """
    probs = as_probabilities(probabilities)
    num_samples, num_classes = probs.shape
    names = tuple(class_names)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} probability columns")
    if taxonomy is not None and taxonomy.classes != names:
        raise ValueError("taxonomy classes differ from class_names (names or order)")
    if (pred_boxes is None) != (true_boxes is None):
        raise ValueError("pass both pred_boxes and true_boxes, or neither")
    truth = as_labels(labels, num_samples, num_classes)
    labeled = _labeled(truth)
    predicted = probs.argmax(axis=1)

    top_k_accuracy_by_k = {
        k: top_k_accuracy(probs, truth, k) for k in sorted(set(top_k)) if 1 <= k <= num_classes
    }
    if 1 not in top_k_accuracy_by_k:
        top_k_accuracy_by_k = {1: top_k_accuracy(probs, truth, 1), **top_k_accuracy_by_k}
    confusion = confusion_matrix(truth[labeled], predicted[labeled], num_classes)
    confusion.setflags(write=False)
    per_class, macro, weighted = per_class_metrics(confusion, names)
    boxes = None
    if pred_boxes is not None:
        boxes = box_stats(pred_boxes, true_boxes, has_box, labels=truth, predicted=predicted)
    return EvaluationResult(
        num_samples=num_samples,
        num_labeled=int(labeled.sum()),
        class_names=names,
        top_k_accuracy=top_k_accuracy_by_k,
        per_class=per_class,
        macro=macro,
        weighted=weighted,
        confusion=confusion,
        confused_pairs=most_confused_pairs(confusion, names, max_confused_pairs),
        display_order=display_order(names, taxonomy),
        calibration=calibration_stats(probs, truth, num_bins),
        boxes=boxes,
        taxonomy_levels=() if taxonomy is None else taxonomy_level_accuracy(probs, truth, taxonomy),
        rejection=None if unknown_threshold is None else rejection_stats(probs, truth, unknown_threshold),
    )
