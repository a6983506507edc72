"""Mixup and CutMix of training batches (`train.mixup`, `train.cutmix`, `train.mix_prob`), by timm's
`Mixup`: each mixed batch is blended with itself reversed, and its targets become the matching
class probabilities, so the cross-entropy trains on soft targets.

What gets mixed is the network's input in that batch: the images, the cached activations of a stage
cache (mixing at that stage is "manifold mixup"; CutMix there cuts a window of the map), or the
pooled features of the feature cache (mixup only: a vector has no window to cut). Label smoothing
stays with `CarLoss`, which applies it to the soft targets as to hard ones. A box head is refused:
the blend of two photos has no one true box.

timm wants an even batch; the last row of an odd batch (the short last batch of an epoch) is left
unmixed with its own class as target. The draws come from NumPy's global generator, which
`lightning.seed_everything` seeds, so a seeded run mixes the same way twice. The cached tensors
are never changed: the batch is copied before timm mixes it in place.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.data import Mixup
from torch import Tensor

from carid.config import ConfigError, TrainConfig
from carid.training.stage_front import ACTIVATION

TARGET = "target"  # the soft targets [B, C] a mixed batch carries beside its hard "label"
MIXED_INPUTS = ("image", ACTIVATION, "features")  # the first one a batch has is mixed


def check_mixing(train: TrainConfig, with_box: bool, pooled_cache: bool) -> None:
    """Raise ConfigError, naming the keys, for mixing settings that cannot work."""
    if train.mixup < 0 or train.cutmix < 0 or not 0.0 <= train.mix_prob <= 1.0:
        raise ConfigError(
            f"train.mixup and train.cutmix must be >= 0 and train.mix_prob within [0, 1]; got "
            f"{train.mixup}, {train.cutmix} and {train.mix_prob}"
        )
    if not mixing_on(train):
        return
    if with_box:
        raise ConfigError(
            "train.mixup / train.cutmix blend two photos, which have no one true box: use them "
            "without a box head (model.box_head: off, or data without boxes)"
        )
    if pooled_cache and train.cutmix > 0:
        raise ConfigError(
            "train.cutmix cuts a window of an image or map, but the pooled-feature cache "
            "(train.freeze: backbone with train.cache_features) trains on vectors: use train.mixup, "
            "or a stage cache (train.freeze: blocks.5)"
        )


def mixing_on(train: TrainConfig) -> bool:
    return (train.mixup > 0 or train.cutmix > 0) and train.mix_prob > 0


class BatchMixer:
    """Mixes a training batch; `BatchMixer.from_config` returns None when mixing is off."""

    def __init__(self, mixup: float, cutmix: float, prob: float, num_classes: int) -> None:
        self.num_classes = num_classes
        self.mixup = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=prob,
            switch_prob=0.5,
            mode="batch",
            label_smoothing=0.0,  # CarLoss smooths
            num_classes=num_classes,
        )

    @classmethod
    def from_config(cls, train: TrainConfig, num_classes: int) -> BatchMixer | None:
        if not mixing_on(train):
            return None
        return cls(train.mixup, train.cutmix, train.mix_prob, num_classes)

    def __call__(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A copy of batch with its input mixed and TARGET [B, C] float32 added."""
        key = next((name for name in MIXED_INPUTS if name in batch), None)
        if key is None:
            raise ValueError(f"nothing to mix: the batch has none of {', '.join(MIXED_INPUTS)}")
        inputs = batch[key].float().clone()
        labels = batch["label"]
        targets = torch.nn.functional.one_hot(labels, self.num_classes).float()
        even = inputs.shape[0] - inputs.shape[0] % 2
        if even >= 2:
            mixed, mixed_targets = self.mixup(inputs[:even], labels[:even])
            inputs[:even] = mixed
            targets[:even] = mixed_targets.to(targets.dtype)
        return {**batch, key: inputs, TARGET: targets}
