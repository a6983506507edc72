"""ClassHead, BoxHead, SpatialBoxHead, CellBoxHead and RefinedBoxHead: shapes, layers, and boxes
that are always valid normalized xyxy; the box-head registry and its contract."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from carid.config import BUILTIN_BOX_INPUTS, ConfigError, ModelConfig, box_input_names, load_config
from carid.models.heads import (
    BoxHead,
    BoxHeadBase,
    CellBoxHead,
    ClassHead,
    RefinedBoxHead,
    SpatialBoxHead,
    box_head_names,
    box_head_type,
    box_windows,
    create_box_head,
    decode_box,
    jitter_windows,
    register_box_head,
    sample_windows,
    unregister_box_head,
)


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


def test_box_windows_keep_the_centre_and_scale_the_sides():
    boxes = torch.tensor([[0.2, 0.4, 0.4, 0.8], [0.5, 0.5, 0.52, 0.51]])
    windows = box_windows(boxes, expand=1.5, min_size=0.1)
    torch.testing.assert_close(windows[0], torch.tensor([0.15, 0.3, 0.45, 0.9]))
    torch.testing.assert_close(windows[1], torch.tensor([0.46, 0.455, 0.56, 0.555]))  # both sides at min_size


def test_jitter_windows_stay_within_their_bounds():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.5]]).repeat(500, 1)
    windows = jitter_windows(boxes, expand=1.6, shift=0.2, scale=0.3)
    centre = (windows[:, :2] + windows[:, 2:]) / 2
    side = windows[:, 2:] - windows[:, :2]
    size = torch.tensor([0.4, 0.2])
    assert ((centre - torch.tensor([0.4, 0.4])).abs() <= 0.2 * size + 1e-6).all()
    ratio = side / (1.6 * size)
    assert (ratio >= math.exp(-0.3) - 1e-5).all() and (ratio <= math.exp(0.3) + 1e-5).all()
    assert ratio[:, 0].std() > 0.05 and not torch.equal(windows[0], windows[1])  # random per window


def test_sample_windows_reads_the_map_at_the_window_points():
    """A map whose value is its x coordinate (channel 0) and y coordinate (channel 1), sampled
    bilinearly, gives the coordinates of the sampling points back."""
    size = 16
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    feature_map = torch.stack([centres.view(1, -1).expand(size, -1), centres.view(-1, 1).expand(-1, size)])[
        None
    ]
    windows = torch.tensor([[0.25, 0.125, 0.75, 0.625]])
    samples = sample_windows(feature_map, windows, points=4)
    assert samples.shape == (1, 2, 4, 4)
    steps = (torch.arange(4, dtype=torch.float32) + 0.5) / 4
    torch.testing.assert_close(samples[0, 0, 0], 0.25 + 0.5 * steps)  # x along a row
    torch.testing.assert_close(samples[0, 1, :, 0], 0.125 + 0.5 * steps)  # y down a column


def test_refined_head_starts_at_its_first_guess_and_trains_every_layer():
    torch.manual_seed(0)
    head = RefinedBoxHead(
        SpatialBoxHead(12, (4, 4), channels=4, hidden=8), 12, channels=4, hidden=8, expand=1.6
    )
    feature_map = torch.randn(3, 12, 4, 4)
    guess, box, _ = head.stages(feature_map)
    assert torch.allclose(box, guess, atol=0.02)  # the new refinement keeps the box it is given
    assert (box[:, :2] <= box[:, 2:]).all() and ((box >= 0) & (box <= 1)).all()
    targets = torch.tensor([[0.1, 0.1, 0.5, 0.6]]).repeat(3, 1)
    jittered, repeated = head.training_boxes(head.reduce(feature_map), targets)
    assert jittered.shape == (3 * head.jitter, 4) and torch.equal(repeated, targets.repeat(head.jitter, 1))
    (guess.sum() + box.sum() + jittered.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_refined_head_learns_a_box_the_first_guess_misses():
    """Objects at random places, a first head held at the centred box: the refinement alone must
    move the box onto each object, which it can only do from what it samples in the window."""
    torch.manual_seed(0)

    class Fixed(nn.Module):
        def forward(self, feature_map):
            return torch.tensor([[0.3, 0.3, 0.7, 0.7]]).expand(feature_map.shape[0], -1)

    head = RefinedBoxHead(Fixed(), 1, channels=8, hidden=32, points=8, expand=1.6, jitter=0)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)

    def batch(n):
        offset = (torch.rand(n, 2) - 0.5) * 0.16
        targets = torch.cat([0.35 + offset, 0.65 + offset], dim=1)
        grid = (torch.arange(32, dtype=torch.float32) + 0.5) / 32
        inside_x = (grid >= targets[:, 0:1]) & (grid <= targets[:, 2:3])
        inside_y = (grid >= targets[:, 1:2]) & (grid <= targets[:, 3:4])
        maps = (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]
        return maps, targets

    for _ in range(300):
        maps, targets = batch(32)
        loss = (head(maps) - targets).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    maps, targets = batch(64)
    with torch.no_grad():
        error = (head(maps) - targets).abs().mean()
    fixed_error = (torch.tensor([0.3, 0.3, 0.7, 0.7]) - targets).abs().mean()
    assert error < 0.3 * fixed_error


def test_refined_head_rejects_bad_settings():
    with pytest.raises(ValueError, match="expand"):
        RefinedBoxHead(SpatialBoxHead(4, (2, 2)), 4, expand=0.5)


# --- the registry ---------------------------------------------------------------------------------


def test_the_built_in_box_heads_are_registered_with_their_contract():
    assert box_head_names() == BUILTIN_BOX_INPUTS == ("map", "pooled", "cells")
    assert box_input_names()[:3] == BUILTIN_BOX_INPUTS
    kinds = {name: box_head_type(name) for name in box_head_names()}
    assert kinds == {"map": SpatialBoxHead, "pooled": BoxHead, "cells": CellBoxHead}
    assert {name: kind.reads_feature_map for name, kind in kinds.items()} == {
        "map": True,
        "pooled": False,
        "cells": True,
    }
    assert not any(kind.refines_from_true_boxes for kind in kinds.values())
    assert RefinedBoxHead.refines_from_true_boxes and RefinedBoxHead.reads_feature_map
    refined = RefinedBoxHead(SpatialBoxHead(4, (2, 2)), 4, detail=True)
    assert refined.reads_detail and not refined.first.reads_detail
    with pytest.raises(NotImplementedError, match="does not refine"):
        BoxHead(4).stages(torch.zeros(1, 4))


def test_create_box_head_builds_from_the_backbone_and_config():
    backbone = SimpleNamespace(
        num_features=16, feature_channels=12, feature_map_size=lambda size: (size // 32,) * 2
    )
    config = ModelConfig(image_size=96, box_channels=5, box_hidden=7)
    spatial = create_box_head("map", backbone, config)
    assert isinstance(spatial, SpatialBoxHead) and spatial.grid == (3, 3)
    assert spatial.reduce[0].in_channels == 12 and spatial.reduce[0].out_channels == 5
    pooled = create_box_head("pooled", backbone, config)
    assert isinstance(pooled, BoxHead) and pooled.hidden[0].in_features == 16
    cells = create_box_head("cells", backbone, config)
    assert isinstance(cells, CellBoxHead) and cells.out.in_channels == 5


def test_an_unknown_box_head_names_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown box head 'nope' \(model.box_input\); known: 'map', 'pooled', 'cells'"
    ):
        create_box_head("nope", SimpleNamespace(), ModelConfig())
    with pytest.raises(ConfigError, match=r"model\.box_input: Input should be 'map', 'pooled' or 'cells'"):
        load_config(overrides=["model.box_input=nope"])


def test_registering_checks_the_name_and_the_contract():
    with pytest.raises(ValueError, match="'map' is already registered"):

        @register_box_head("map")
        class Again(BoxHead):
            pass

    with pytest.raises(ValueError, match="must declare reads_feature_map"):

        @register_box_head("test-undeclared")
        class Undeclared(BoxHeadBase):
            @classmethod
            def from_config(cls, backbone, config):
                return cls()

    with pytest.raises(ValueError, match="must define from_config"):

        @register_box_head("test-unbuildable")
        class Unbuildable(BoxHeadBase):
            reads_feature_map = True

    assert box_head_names() == BUILTIN_BOX_INPUTS and box_input_names() == BUILTIN_BOX_INPUTS


def test_a_registered_name_is_a_valid_config_value_until_unregistered():
    @register_box_head("test-registered")
    class Registered(BoxHead):
        pass

    try:
        assert box_head_type("test-registered") is Registered
        assert load_config(overrides=["model.box_input=test-registered"]).model.box_input == "test-registered"
    finally:
        unregister_box_head("test-registered")
    assert "test-registered" not in box_head_names() and "test-registered" not in box_input_names()
    with pytest.raises(ConfigError, match=r"model\.box_input"):
        load_config(overrides=["model.box_input=test-registered"])
    with pytest.raises(ValueError, match="built in"):
        unregister_box_head("map")
