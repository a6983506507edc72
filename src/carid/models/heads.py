"""The heads on top of a backbone's pooled embedding: class logits and one normalized box.

Both heads take embeddings [B, D] (the backbone has already pooled the feature map; see
backbones.py for why) so they can also be trained from cached embeddings of a frozen backbone.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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


class BoxHead(nn.Module):
    """embeddings [B, D] -> one box per image [B, 4]: normalized xyxy in [0, 1] relative to the
    network input (multiply by the input width / height for pixels).

    hidden > 0: Linear(D, hidden) -> ReLU -> Linear(hidden, 4); hidden == 0: Linear(D, 4). Decoded
    by `decode_box`. Initialized to predict the centred box [0.25, 0.25, 0.75, 0.75] for any input.
    """

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        if hidden < 0:
            raise ValueError(f"BoxHead: hidden must be >= 0, got {hidden}")
        self.hidden: nn.Module = (
            nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True)) if hidden else nn.Identity()
        )
        self.fc = nn.Linear(hidden or in_features, 4)
        nn.init.normal_(self.fc.weight, std=0.01)
        quarter = math.log(0.25 / 0.75)  # sigmoid(quarter) = 0.25
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([quarter, quarter, -quarter, -quarter]))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return decode_box(self.fc(self.hidden(embeddings)))
