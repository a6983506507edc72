"""ClassHead and BoxHead: shapes, layers, and boxes that are always valid normalized xyxy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from carid.models.heads import BoxHead, ClassHead, decode_box


def test_class_head_without_hidden_layer():
    head = ClassHead(16, 5, hidden=0, dropout=0.0)
    assert isinstance(head.hidden, nn.Identity) and isinstance(head.dropout, nn.Identity)
    assert head(torch.randn(3, 16)).shape == (3, 5)
    assert head.fc.in_features == 16


def test_class_head_with_hidden_layer_and_dropout():
    head = ClassHead(16, 5, hidden=8, dropout=0.5)
    assert head.fc.in_features == 8 and head.dropout.p == 0.5
    embeddings = torch.randn(3, 16)
    head.eval()
    assert torch.equal(head(embeddings), head(embeddings))
    head.train()
    torch.manual_seed(0)
    assert not torch.equal(head(embeddings), head.eval()(embeddings))


@pytest.mark.parametrize(("args", "message"), [((16, 0), "at least one class"), ((16, 3, -1), "hidden")])
def test_class_head_rejects_bad_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        ClassHead(*args)


def test_decoded_boxes_are_valid_normalized_xyxy():
    raw = torch.randn(256, 4, generator=torch.Generator().manual_seed(0)) * 30  # many saturated
    boxes = decode_box(raw)
    assert boxes.shape == (256, 4)
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


def test_every_box_output_gets_a_gradient():
    raw = torch.randn(64, 4, generator=torch.Generator().manual_seed(1)).requires_grad_()
    decode_box(raw).sum().backward()
    assert (raw.grad != 0).all()


def test_decode_box_sorts_each_edge_pair():
    raw = torch.tensor([[2.0, -2.0, -2.0, 2.0]])  # x edges given in reverse order
    low, high = torch.sigmoid(torch.tensor(-2.0)), torch.sigmoid(torch.tensor(2.0))
    assert torch.allclose(decode_box(raw), torch.stack([low, low, high, high])[None])


@pytest.mark.parametrize("hidden", [0, 8])
def test_box_head_outputs_valid_boxes_starting_at_the_centred_box(hidden):
    head = BoxHead(16, hidden=hidden)
    centred = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    assert torch.allclose(decode_box(head.fc.bias.detach()[None]), centred, atol=1e-6)
    if hidden == 0:
        assert torch.allclose(head(torch.zeros(2, 16)), centred.expand(2, 4), atol=1e-6)
    boxes = head(torch.randn(64, 16) * 100)
    assert boxes.shape == (64, 4)
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
