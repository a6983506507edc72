"""CarLoss on tiny hand-checked tensors: smoothed cross-entropy, L1, GIoU, masking and weighting."""

from __future__ import annotations

import math

import pytest
import torch

from carid.config import TrainConfig
from carid.models.losses import CarLoss

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
LABELS = torch.tensor([0, 2])


def manual_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> float:
    total = 0.0
    for row, label in zip(logits.tolist(), labels.tolist(), strict=True):
        log_norm = math.log(sum(math.exp(v) for v in row))
        nll = [log_norm - v for v in row]
        total += (1 - smoothing) * nll[label] + smoothing * sum(nll) / len(row)
    return total / len(labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_classification_loss_is_smoothed_cross_entropy(smoothing):
    parts = CarLoss(label_smoothing=smoothing)(LOGITS, None, LABELS)
    assert parts["cls"].item() == pytest.approx(manual_smoothed_ce(LOGITS, LABELS, smoothing), rel=1e-6)
    assert parts["loss"].item() == pytest.approx(parts["cls"].item())
    assert parts["box_l1"].item() == 0 and parts["box_giou"].item() == 0


def test_box_losses_by_hand_with_masking():
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.1, 0.1, 0.2, 0.2]])
    target = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.9, 0.9, 1.0, 1.0]])
    has_box = torch.tensor([True, False])
    parts = CarLoss(box_weight=2.0, l1_weight=3.0, giou_weight=5.0)(LOGITS, pred, LABELS, target, has_box)
    # Only sample 0 counts: every coordinate is off by 0.25.
    assert parts["box_l1"].item() == pytest.approx(0.25)
    intersection = 0.25 * 0.25
    union = 0.25 + 0.25 - intersection
    hull = 0.75 * 0.75
    giou = intersection / union - (hull - union) / hull
    assert parts["box_giou"].item() == pytest.approx(1 - giou, rel=1e-5)
    expected = parts["cls"].item() + 2.0 * (3.0 * 0.25 + 5.0 * (1 - giou))
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-5)
    # The unboxed sample's target does not matter.
    target[1] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    again = CarLoss(box_weight=2.0, l1_weight=3.0, giou_weight=5.0)(LOGITS, pred, LABELS, target, has_box)
    assert again["loss"].item() == pytest.approx(parts["loss"].item())


def test_has_box_defaults_to_all_samples():
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 1.0]])
    parts = CarLoss()(LOGITS, pred, LABELS, target)
    assert parts["box_l1"].item() == pytest.approx(0.5 / 8)
    assert parts["box_giou"].item() == pytest.approx((0 + (1 - 0.5)) / 2)


def test_batch_without_boxes_has_zero_box_terms_but_keeps_the_graph():
    pred = torch.rand(2, 4, requires_grad=True)
    parts = CarLoss()(LOGITS, pred, LABELS, torch.zeros(2, 4), torch.tensor([False, False]))
    assert parts["box_l1"].item() == 0 and parts["box_giou"].item() == 0
    parts["loss"].backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


def test_target_boxes_without_a_box_head_is_an_error():
    with pytest.raises(ValueError, match="no box head"):
        CarLoss()(LOGITS, None, LABELS, torch.zeros(2, 4))


def test_from_config_takes_the_train_settings():
    loss = CarLoss.from_config(
        TrainConfig(label_smoothing=0.2, box_weight=3.0, box_l1_weight=4.0, box_giou_weight=0.5)
    )
    assert (loss.label_smoothing, loss.box_weight, loss.l1_weight, loss.giou_weight) == (0.2, 3.0, 4.0, 0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        CarLoss(label_smoothing=1.0)


def test_class_weights_weight_the_training_cross_entropy_only():
    loss = CarLoss(class_weights=torch.tensor([1.0, 1.0, 3.0]))
    nll = [
        math.log(sum(math.exp(v) for v in row)) - row[label]
        for row, label in zip(LOGITS.tolist(), LABELS.tolist(), strict=True)
    ]
    assert loss.training
    assert loss(LOGITS, None, LABELS)["cls"].item() == pytest.approx((nll[0] + 3 * nll[1]) / 4, rel=1e-6)
    loss.eval()  # validation and test: unweighted, comparable with an unbalanced run
    assert loss(LOGITS, None, LABELS)["cls"].item() == pytest.approx(sum(nll) / 2, rel=1e-6)
    assert "class_weights" not in loss.state_dict()  # checkpoints are unchanged
    with pytest.raises(ValueError, match="class_weights"):
        loss.set_class_weights(torch.tensor([1.0, -1.0, 1.0]))
