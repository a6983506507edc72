"""ClassHead, BoxHead, SpatialBoxHead and CellBoxHead: shapes, layers, and boxes that are always
valid normalized xyxy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from carid.models.heads import BoxHead, CellBoxHead, ClassHead, SpatialBoxHead, decode_box


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


@pytest.mark.parametrize("hidden", [0, 8])
def test_spatial_box_head_shapes_and_centred_start(hidden):
    head = SpatialBoxHead(12, grid=(3, 4), channels=5, hidden=hidden)
    assert head.reduce[0].in_channels == 12 and head.reduce[0].out_channels == 5
    assert (head.hidden[0].in_features if hidden else head.fc.in_features) == 5 * 3 * 4
    centred = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    assert torch.allclose(decode_box(head.fc.bias.detach()[None]), centred, atol=1e-6)
    assert torch.allclose(head(torch.rand(2, 12, 3, 4)), centred.expand(2, 4), atol=0.02)
    boxes = head(torch.randn(64, 12, 3, 4) * 100)
    assert boxes.shape == (64, 4)
    assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] >= boxes[:, :2]).all()


def test_spatial_box_head_sees_where_a_feature_is():
    """The same feature in two different cells gives two different boxes (pooling could not tell)."""
    torch.manual_seed(0)
    head = SpatialBoxHead(4, grid=(3, 3), channels=8, hidden=16)
    nn.init.normal_(head.fc.weight, std=1.0)
    left, right = torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3, 3)
    left[..., 1, 0], right[..., 1, 2] = 5.0, 5.0
    assert torch.equal(left.mean((2, 3)), right.mean((2, 3)))
    assert not torch.allclose(head(left), head(right), atol=1e-3)


def test_spatial_box_head_trains_every_layer():
    head = SpatialBoxHead(6, grid=(2, 2), channels=4, hidden=8)
    loss = (head(torch.rand(8, 6, 2, 2)) - torch.tensor([0.1, 0.2, 0.6, 0.9])).abs().mean()
    loss.backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 0}, "channels and grid"),
        ({"grid": (0, 3)}, "channels and grid"),
        ({"hidden": -1}, "hidden"),
    ],
)
def test_spatial_box_head_rejects_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpatialBoxHead(**{"in_channels": 4, "grid": (2, 2), **kwargs})


def test_spatial_box_head_rejects_another_map_size():
    head = SpatialBoxHead(4, grid=(2, 2))
    with pytest.raises(ValueError, match=r"\[B, C, 2, 2\], got \[1, 4, 3, 3\]"):
        head(torch.zeros(1, 4, 3, 3))


def test_cell_box_head_starts_centred_on_any_grid():
    head = CellBoxHead(8, channels=4)
    nn.init.zeros_(head.out.weight)  # exactly the initial outputs: uniform scores, sigmoid 0.5
    for grid in ((6, 6), (4, 4), (1, 1)):
        box = head(torch.randn(3, 8, *grid))
        torch.testing.assert_close(box, torch.tensor([[0.25, 0.25, 0.75, 0.75]]).expand(3, 4))


def test_cell_box_head_votes_hand_computed():
    """Two cells of a 1x2 grid, centres x 0.25 and 0.75, y 0.5; the right cell scores ln 3 higher
    (weights 1/4, 3/4); edges sigmoid 0.5 -> left box [0.125, 0.25, 0.625, 0.75], right box
    [0.375, 0.25, 0.875, 0.75]; the vote: [0.3125, 0.25, 0.8125, 0.75]."""
    raw = torch.zeros(1, 5, 1, 2)
    raw[0, 0, 0, 1] = float(torch.log(torch.tensor(3.0)))
    torch.testing.assert_close(CellBoxHead.vote(raw), torch.tensor([[0.3125, 0.25, 0.8125, 0.75]]))
    # l = sigmoid^-1(1) pushes the left cell's x1 to 0: its proposal is [0, 0.25, 0.625, 0.75].
    raw[0, 1, 0, 0] = 30.0
    torch.testing.assert_close(CellBoxHead.vote(raw), torch.tensor([[0.28125, 0.25, 0.8125, 0.75]]))


def test_cell_box_head_boxes_are_valid_and_trainable():
    head = CellBoxHead(8, channels=4)
    nn.init.normal_(head.out.weight, std=5.0)  # extreme outputs must still give valid boxes
    features = torch.randn(4, 8, 5, 7, requires_grad=True)
    box = head(features)
    assert box.shape == (4, 4) and bool(((box >= 0) & (box <= 1)).all())
    assert bool((box[:, 0] <= box[:, 2]).all() and (box[:, 1] <= box[:, 3]).all())
    box.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(ValueError, match="feature maps"):
        head(torch.randn(2, 8))
    with pytest.raises(ValueError, match="channels must be >= 1"):
        CellBoxHead(8, channels=0)
