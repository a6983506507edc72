"""The heads on top of a backbone: class logits and one normalized box.

`ClassHead` and `BoxHead` take the pooled embedding [B, D] (timm pools the feature map; see
backbones.py for why). `SpatialBoxHead` reads the last feature map [B, C, h, w] itself: pooling
averages away *where* things are, which is what a box needs, so the spatial head keeps the grid
(1x1 conv reduction, flatten, MLP). On the Oxford pets head boxes the pooled head reached a mean IoU
of only 0.41 (benchmarks/RESULTS.md, issue 3). Both box heads decode with `decode_box` and start at
the centred box. `CellBoxHead` is fully convolutional: every grid cell proposes a box around its own
centre and a score, and the box is the score-weighted mean of the cell boxes. Its weights are shared
by all cells (the same object gives the same proposal wherever it is), which needs far fewer
boxed photos than an MLP that learns each position separately, and it works at any input size.
`RefinedBoxHead` wraps either map head with a second look: it samples the map over a window around
the first guess and places the box inside that window (model.box_refine; see its docstring).

Box heads by name: every box head derives from `BoxHeadBase`, which declares what `CarNet` and
`CarModule` rely on (what the head reads, whether it refines from true boxes in training, its
forward signature, how it is built from the backbone and the `ModelConfig`). `register_box_head(name)`
makes a head the one of `model.box_input: <name>` and `create_box_head(name, backbone, config)` builds
it, so a new box head is one class and one decorator (in the style of torchvision's `register_model`
and `get_model`):

    @register_box_head("mine")
    class MyBoxHead(BoxHeadBase):
        reads_feature_map = True

        @classmethod
        def from_config(cls, backbone, config): return cls(backbone.feature_channels)
        def forward(self, features, detail=None): ...  # -> boxes [B, 4], normalized xyxy

The config (torch-free) checks model.box_input against the registered names
(`carid.config.box_input_names`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from carid.config import BUILTIN_BOX_INPUTS, ModelConfig, add_box_input, remove_box_input

if TYPE_CHECKING:
    from carid.models.backbones import Backbone


class ClassHead(nn.Module):
    """embeddings [B, D] -> logits [B, num_classes].

    hidden > 0: Linear(D, hidden) -> ReLU first (the car-models study used 512 units).
    Then dropout (rate `dropout`, 0 = off) and the class layer Linear(., num_classes).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ClassHead needs at least one class, got num_classes={num_classes}")
        if hidden < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"ClassHead: hidden must be >= 0 and dropout in [0, 1), got {hidden}, {dropout}")
        self.hidden: nn.Module = (
            nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True)) if hidden else nn.Identity()
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(hidden or in_features, num_classes)
        self.num_classes = num_classes

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.hidden(embeddings)))


def decode_box(raw: torch.Tensor) -> torch.Tensor:
    """Unconstrained head outputs [B, 4] -> boxes [B, 4], normalized xyxy in [0, 1].

    The four outputs go through a sigmoid; outputs 0 and 2 are the two x edges, 1 and 3 the two y
    edges, and each pair is sorted, so x1 <= x2 and y1 <= y2 always hold, every coordinate has a
    gradient (no clamping dead zones) and each output regresses one coordinate directly.
    """
    edges = torch.sigmoid(raw)
    x_a, y_a, x_b, y_b = edges.unbind(dim=-1)
    return torch.stack(
        [torch.minimum(x_a, x_b), torch.minimum(y_a, y_b), torch.maximum(x_a, x_b), torch.maximum(y_a, y_b)],
        dim=-1,
    )


def box_layers(in_features: int, hidden: int, head: str) -> tuple[nn.Module, nn.Linear]:
    """The MLP end of a box head: (hidden part, output layer Linear(., 4)).

    hidden > 0: Linear(in_features, hidden) -> ReLU, else an identity. The output layer has small
    weights and a bias that `decode_box` turns into the centred box [0.25, 0.25, 0.75, 0.75], so a
    new head predicts about that box for any input.
    """
    if hidden < 0:
        raise ValueError(f"{head}: hidden must be >= 0, got {hidden}")
    hidden_part: nn.Module = (
        nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True)) if hidden else nn.Identity()
    )
    output = nn.Linear(hidden or in_features, 4)
    nn.init.normal_(output.weight, std=0.01)
    quarter = math.log(0.25 / 0.75)  # sigmoid(quarter) = 0.25
    with torch.no_grad():
        output.bias.copy_(torch.tensor([quarter, quarter, -quarter, -quarter]))
    return hidden_part, output


# --- the box-head contract and the registry -----------------------------------------------------


class BoxHeadBase(nn.Module):
    """What every box head provides; `CarNet` and `CarModule` use box heads only through this.

    Declared by each class:
        reads_feature_map: True = `forward` reads the backbone's last feature map [B, C, h, w];
            False = the pooled embeddings [B, D] (what a frozen-backbone feature cache must hold).
        refines_from_true_boxes: True = a two-stage head (`stages`, `training_boxes`): its first
            guess gets loss terms of its own ("box_first_*") and, in training, it also refines
            windows around the true boxes ("box_jitter_*"); `CarModule` adds those terms.
    Per instance:
        reads_detail: `forward` also needs `detail`, the map of a finer backbone stage (`Encoded.detail`).
    Methods:
        from_config(backbone, config): the head for this backbone and `ModelConfig`; what
            `create_box_head` calls (a head registered by name must define it).
        forward(features, detail=None): boxes [B, 4], normalized xyxy in [0, 1] relative to the
            network input; features is the feature map or the embeddings per `reads_feature_map`.
    """

    reads_feature_map: ClassVar[bool]
    refines_from_true_boxes: ClassVar[bool] = False
    reads_detail: bool = False

    @classmethod
    def from_config(cls, backbone: Backbone, config: ModelConfig) -> BoxHeadBase:
        raise NotImplementedError(f"{cls.__name__} cannot be built by name (no from_config)")

    def forward(self, features: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def stages(
        self, features: torch.Tensor, detail: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(first guess [B, 4], box [B, 4], the state `training_boxes` reads); refining heads only."""
        raise NotImplementedError(f"{type(self).__name__} does not refine (refines_from_true_boxes False)")

    def training_boxes(self, state: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes [N, 4], their targets [N, 4]) refined around the true boxes [B, 4] (N may be 0);
        refining heads only."""
        raise NotImplementedError(f"{type(self).__name__} does not refine (refines_from_true_boxes False)")


H = TypeVar("H", bound=type[BoxHeadBase])
_BOX_HEADS: dict[str, type[BoxHeadBase]] = {}


def register_box_head(name: str) -> Callable[[H], H]:
    """Class decorator: the decorated `BoxHeadBase` subclass is the box head `model.box_input: name`.

    Raises ValueError when the name is taken or the class does not declare the contract
    (`reads_feature_map`, its own `from_config`).
    """

    def register(cls: H) -> H:
        if name in _BOX_HEADS:
            raise ValueError(
                f"a box head named {name!r} is already registered ({_BOX_HEADS[name].__qualname__}); "
                "choose another name"
            )
        if not (isinstance(cls, type) and issubclass(cls, BoxHeadBase)):
            raise ValueError(f"box head {name!r}: {cls!r} is not a BoxHeadBase subclass")
        if not isinstance(getattr(cls, "reads_feature_map", None), bool):
            raise ValueError(
                f"box head {name!r}: {cls.__qualname__} must declare reads_feature_map = True/False"
            )
        if getattr(cls.from_config, "__func__", None) is BoxHeadBase.from_config.__func__:
            raise ValueError(
                f"box head {name!r}: {cls.__qualname__} must define from_config(backbone, config)"
            )
        _BOX_HEADS[name] = cls
        add_box_input(name)
        return cls

    return register


def unregister_box_head(name: str) -> None:
    """Forget a registered box head (not a built-in one); unknown names are ignored."""
    remove_box_input(name)
    _BOX_HEADS.pop(name, None)


def box_head_names() -> tuple[str, ...]:
    """The registered box heads' names, in registration order (built-in ones first)."""
    return tuple(_BOX_HEADS)


def box_head_type(name: str) -> type[BoxHeadBase]:
    """The class registered as `name`; ValueError naming the known heads for an unknown name."""
    try:
        return _BOX_HEADS[name]
    except KeyError:
        known = ", ".join(repr(known) for known in _BOX_HEADS) or "none"
        raise ValueError(f"unknown box head {name!r} (model.box_input); known: {known}") from None


def create_box_head(name: str, backbone: Backbone, config: ModelConfig) -> BoxHeadBase:
    """The box head registered as `name`, built for `backbone` and `config` (its `from_config`)."""
    return box_head_type(name).from_config(backbone, config)


# --- the built-in box heads ---------------------------------------------------------------------


@register_box_head("map")
class SpatialBoxHead(BoxHeadBase):
    """Feature map [B, C, h, w] -> one box per image [B, 4], normalized xyxy as `BoxHead`.

    Conv2d(C, channels, 1) -> ReLU -> flatten [B, channels * h * w] -> Linear(., hidden) -> ReLU
    -> Linear(hidden, 4) (hidden == 0: straight to the 4 outputs), decoded by `decode_box`. The
    flatten gives every grid cell its own weights, so the MLP sees where each feature is. `grid`
    (h, w) is the feature map size of the network input and is fixed at construction (the input
    size travels with the model); another size raises ValueError. Starts at the centred box.
    model.box_input "map".
    """

    reads_feature_map = True

    def __init__(self, in_channels: int, grid: tuple[int, int], channels: int = 64, hidden: int = 256):
        super().__init__()
        if channels < 1 or min(grid) < 1:
            raise ValueError(f"SpatialBoxHead: channels and grid must be >= 1, got {channels}, {grid}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=1), nn.ReLU(inplace=True))
        self.hidden, self.fc = box_layers(channels * self.grid[0] * self.grid[1], hidden, "SpatialBoxHead")

    @classmethod
    def from_config(cls, backbone: Backbone, config: ModelConfig) -> SpatialBoxHead:
        """On the feature map of an image_size input (its grid is fixed here)."""
        grid = backbone.feature_map_size(config.image_size)
        return cls(backbone.feature_channels, grid, channels=config.box_channels, hidden=config.box_hidden)

    def forward(self, feature_map: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        if feature_map.ndim != 4 or tuple(feature_map.shape[-2:]) != self.grid:
            raise ValueError(
                f"SpatialBoxHead was built for feature maps [B, C, {self.grid[0]}, {self.grid[1]}], got "
                f"{list(feature_map.shape)} (a different input size than model.image_size?)"
            )
        return decode_box(self.fc(self.hidden(self.reduce(feature_map).flatten(1))))


@register_box_head("pooled")
class BoxHead(BoxHeadBase):
    """embeddings [B, D] -> one box per image [B, 4]: normalized xyxy in [0, 1] relative to the
    network input (multiply by the input width / height for pixels). model.box_input "pooled".

    hidden > 0: Linear(D, hidden) -> ReLU -> Linear(hidden, 4); hidden == 0: Linear(D, 4). Decoded
    by `decode_box`. Initialized to predict the centred box [0.25, 0.25, 0.75, 0.75] for any input.
    """

    reads_feature_map = False

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.hidden, self.fc = box_layers(in_features, hidden, "BoxHead")

    @classmethod
    def from_config(cls, backbone: Backbone, config: ModelConfig) -> BoxHead:
        return cls(backbone.num_features, hidden=config.box_hidden)

    def forward(self, embeddings: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        return decode_box(self.fc(self.hidden(embeddings)))


@register_box_head("cells")
class CellBoxHead(BoxHeadBase):
    """Feature map [B, C, h, w] -> one box per image [B, 4], normalized xyxy, by weighted cell votes.

    Conv1x1(C, channels) -> ReLU -> Conv3x3(channels, channels) -> ReLU -> Conv1x1(channels, 5):
    per cell a score and four edge outputs. A cell with centre (cx, cy) proposes
    x1 = cx * (1 - sigmoid(l)), x2 = cx + (1 - cx) * sigmoid(r) (y likewise), always a valid box
    inside the image and around the cell's centre, with a gradient everywhere. The box is the mean
    of the proposals weighted by the softmax of the scores over all cells (differentiable, no
    non-maximum suppression). Starts at uniform weights and sigmoid 0.5, i.e. the centred box
    [0.25, 0.25, 0.75, 0.75] on a symmetric grid. Any grid size works. model.box_input "cells".
    """

    reads_feature_map = True

    def __init__(self, in_channels: int, channels: int = 64):
        super().__init__()
        if channels < 1:
            raise ValueError(f"CellBoxHead: channels must be >= 1, got {channels}")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(channels, 5, kernel_size=1)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def from_config(cls, backbone: Backbone, config: ModelConfig) -> CellBoxHead:
        return cls(backbone.feature_channels, channels=config.box_channels)

    def forward(self, feature_map: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        if feature_map.ndim != 4:
            raise ValueError(f"CellBoxHead reads feature maps [B, C, h, w], got {list(feature_map.shape)}")
        return self.vote(self.out(self.body(feature_map)))

    @staticmethod
    def vote(raw: torch.Tensor) -> torch.Tensor:
        """Per-cell outputs [B, 5, h, w] (score, l, t, r, b) -> the weighted box [B, 4]."""
        height, width = raw.shape[-2:]
        cy = (torch.arange(height, device=raw.device, dtype=raw.dtype) + 0.5) / height
        cx = (torch.arange(width, device=raw.device, dtype=raw.dtype) + 0.5) / width
        cy, cx = cy.view(1, height, 1), cx.view(1, 1, width)
        edges = torch.sigmoid(raw[:, 1:])
        x1 = cx * (1 - edges[:, 0])
        y1 = cy * (1 - edges[:, 1])
        x2 = cx + (1 - cx) * edges[:, 2]
        y2 = cy + (1 - cy) * edges[:, 3]
        weights = torch.softmax(raw[:, 0].flatten(1), dim=1)  # [B, h * w]
        boxes = torch.stack([x1, y1, x2, y2], dim=-1).flatten(1, 2)  # [B, h * w, 4]
        return (weights.unsqueeze(-1) * boxes).sum(dim=1)


def box_windows(boxes: torch.Tensor, expand: float, min_size: float = 0.1) -> torch.Tensor:
    """Boxes [N, 4] normalized xyxy -> the windows [N, 4] a refinement looks through: the same
    centre, each side `expand` times as long (at least `min_size`), not clipped to the image (the
    part outside samples zeros)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = ((boxes[:, 2:] - boxes[:, :2]) * expand).clamp(min=min_size)
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def jitter_windows(boxes: torch.Tensor, expand: float, shift: float, scale: float) -> torch.Tensor:
    """Training windows around true boxes [N, 4]: `box_windows(boxes, expand)` with the centre moved
    by up to `shift` box sides and each side scaled by exp(U(-scale, scale)), independently per
    axis, so the refinement learns from windows as wrong as a first guess can be."""
    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + (torch.rand_like(size) * 2 - 1) * shift * size
    side = (size * expand * torch.exp((torch.rand_like(size) * 2 - 1) * scale)).clamp(min=0.1)
    return torch.cat([centre - side / 2, centre + side / 2], dim=1)


def sample_windows(feature_map: torch.Tensor, windows: torch.Tensor, points: int) -> torch.Tensor:
    """Bilinear samples of feature_map [B, C, h, w] on a points x points grid over each window
    [B, 4] (normalized xyxy) -> [B, C, points, points] (an RoIAlign with one sample per bin).

    Written with `F.grid_sample` rather than torchvision's `roi_align` because grid_sample exports
    to ONNX (GridSample, opset 16) and runs in ONNX Runtime without custom operators."""
    steps = (torch.arange(points, device=windows.device, dtype=windows.dtype) + 0.5) / points
    x1, y1, x2, y2 = (windows[:, i].view(-1, 1) for i in range(4))
    xs = x1 + (x2 - x1) * steps  # [B, points] in [0, 1]
    ys = y1 + (y2 - y1) * steps
    grid = torch.stack(
        [xs.unsqueeze(1).expand(-1, points, -1), ys.unsqueeze(2).expand(-1, -1, points)], dim=-1
    )  # [B, points, points, 2] (x, y)
    return F.grid_sample(
        feature_map, grid * 2 - 1, mode="bilinear", padding_mode="zeros", align_corners=False
    )


class RefinedBoxHead(BoxHeadBase):
    """A first box head plus a second look: feature map [B, C, h, w] -> box [B, 4], normalized xyxy.

    The first head (`SpatialBoxHead` or `CellBoxHead`) guesses a box. The refinement then samples
    the feature map (1x1 conv to `channels` first) on a points x points grid over a window
    `expand` times the guess (`sample_windows`), and an MLP (Linear(channels * points^2, hidden) ->
    ReLU -> Linear(hidden, 4), decoded by `decode_box`) puts the box inside that window; the result
    maps back to the image. `steps` > 1 repeats the look from the refined box. With `detail` the
    refinement samples a finer map of an earlier backbone stage (`in_channels` its channels; e.g.
    stride 16, model.box_refine_stride) instead of the first head's map.

    Why: the first head learns a box per grid position from the boxed photos it has, so with a few
    hundred boxes it overfits (pets: train IoU 0.87, val 0.73). The refinement sees the object in
    window coordinates, where every photo looks alike, and trains on several randomly shifted and
    scaled windows per true box (`training_boxes`), many more examples than photos. The guess is
    detached before the refinement in training, so each part learns its own job (in eval mode it is
    not, so a box Grad-CAM also sees through the first guess).
    The refinement starts by predicting the box that fills 1/expand of the window (the guess itself).
    Not registered by name: `build_network` wraps the model.box_input head in it when model.box_refine > 0.
    """

    reads_feature_map = True
    refines_from_true_boxes = True

    def __init__(
        self,
        first: BoxHeadBase,
        in_channels: int,
        channels: int = 64,
        hidden: int = 256,
        points: int = 7,
        expand: float = 1.6,
        steps: int = 1,
        jitter: int = 4,
        detail: bool = False,
    ):
        super().__init__()
        if points < 1 or expand < 1.0 or steps < 1 or jitter < 0:
            raise ValueError(
                f"RefinedBoxHead: points and steps must be >= 1, expand >= 1 and jitter >= 0, got "
                f"{points}, {expand}, {steps}, {jitter}"
            )
        self.first = first
        self.points, self.expand, self.steps, self.jitter = points, expand, steps, jitter
        self.reads_detail = detail
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=1), nn.ReLU(inplace=True))
        self.hidden, self.fc = box_layers(channels * points * points, hidden, "RefinedBoxHead")
        inner = math.log((0.5 - 0.5 / expand) / (0.5 + 0.5 / expand))  # sigmoid(inner) = 0.5 - 0.5 / expand
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([inner, inner, -inner, -inner]))

    def refine(self, reduced: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Reduced map [B, channels, h, w] and windows [B, 4] -> boxes [B, 4] in image coordinates,
        clipped to the image."""
        inside = decode_box(self.fc(self.hidden(sample_windows(reduced, windows, self.points).flatten(1))))
        origin, size = windows[:, :2], windows[:, 2:] - windows[:, :2]
        # A window may reach past the image; the box may not (it stays normalized xyxy in [0, 1]).
        return torch.cat([origin + inside[:, :2] * size, origin + inside[:, 2:] * size], dim=1).clamp(
            0.0, 1.0
        )

    def stages(
        self, feature_map: torch.Tensor, detail: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """feature_map (and the finer `detail` map when `reads_detail`) -> (first guess [B, 4],
        refined box [B, 4], the reduced map the refinement samples)."""
        if self.reads_detail and detail is None:
            raise ValueError(
                "this refined box head samples a finer backbone map (model.box_refine_stride), but "
                "none was given: pass detail (see CarNet.encode)"
            )
        guess = self.first(feature_map)
        reduced = self.reduce(detail if self.reads_detail else feature_map)
        box = guess
        for _ in range(self.steps):
            box = self.refine(reduced, box_windows(box.detach() if self.training else box, self.expand))
        return guess, box, reduced

    def forward(self, feature_map: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        return self.stages(feature_map, detail)[1]

    def training_boxes(
        self, reduced: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refinements from `jitter` random windows around each true box: reduced [B, channels, h, w]
        (from `stages`), targets [B, 4] -> (boxes [B * jitter, 4], their targets [B * jitter, 4])."""
        if self.jitter == 0 or targets.shape[0] == 0:
            empty = targets.new_zeros((0, 4))
            return empty, empty
        repeated = targets.repeat(self.jitter, 1)
        windows = jitter_windows(repeated, self.expand, shift=0.2, scale=0.3)
        return self.refine(reduced.repeat(self.jitter, 1, 1, 1), windows), repeated


if box_head_names() != BUILTIN_BOX_INPUTS:  # the names carid.config accepts without importing torch
    raise RuntimeError(
        f"carid.models.heads registers the box heads {box_head_names()}, but carid.config.BUILTIN_BOX_INPUTS "
        f"says {BUILTIN_BOX_INPUTS}: keep the two in step"
    )
