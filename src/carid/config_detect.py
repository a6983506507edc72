"""The settings of `task: detect` (`DetectConfig`), kept apart from `carid.config` (which re-exports
it) so that neither module outgrows one screen of settings; same rules: a frozen dataclass validated
by pydantic, unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict

STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DetectConfig:
    """The car detector of `task: detect` (carid.models.detector): a timm backbone's stride 8/16/32
    maps, torchvision's FeaturePyramidNetwork and torchvision's FCOS or RetinaNet head, loss and
    post-processing; one class, "car". The `model` and `augment` sections are not used by it.

    architecture: "fcos" (anchor-free) or "retinanet" (anchor boxes).
    backbone: timm name of the feature extractor (tf_efficientnet_lite0/1/2 have offline weights).
    pretrained: as model.pretrained: "offline", "hub" or "none".
    image_size: (width, height) of the network input; every photo is letterboxed into it (aspect
        kept, centred, padded with the mean colour) by carid's preprocessing, in training and at
        prediction alike. Both sides must be multiples of 32 (the coarsest feature stride).
    fpn_channels: channels of the pyramid and of the head (small keeps a 640x384 frame fast on CPU).
    head_convs: 3x3 convolutions of each head branch before its output layer (torchvision uses 4).
    p6p7: add torchvision's LastLevelP6P7 (strides 64 and 128) to the pyramid, for objects larger
        than about a third of the input.
    anchor_size: RetinaNet only: anchor side relative to its level's stride (3 sizes per octave,
        aspect ratios 0.5, 1, 2); the classic value is 4, smaller suits small cars.
    score_threshold: the operating threshold: detections scoring below it are dropped at prediction
        (validation mAP scores every detection down to 0.05, as COCO evaluation does).
    nms_iou: overlap (IoU) above which the lower-scoring of two detections is suppressed.
    max_detections: detections kept per image after NMS, best first.
    min_box_side: detections narrower or lower than this many network-input pixels are dropped; so
        are training boxes that small after augmentation (the network is not taught what the
        post-processing throws away).
    augment: augment training images (the switches below); False trains on the letterboxed images.
    hflip: probability of a horizontal mirror.
    scale: (min, max) area fraction of a random crop that keeps every box whole (zoom-in scale
        jitter; (1.0, 1.0) disables it).
    color_jitter: brightness / contrast / saturation strength (hue a sixth of it), p=0.8.
    blur: probability of a Gaussian blur; grayscale: probability of dropping colour.

    A detect run whose train.monitor is left at the classification default ("val/acc") keeps the
    best checkpoint by "val/map50" (AP at IoU 0.5 on the val split).
    """

    __pydantic_config__ = STRICT

    architecture: Literal["fcos", "retinanet"] = "fcos"
    backbone: str = "tf_efficientnet_lite0"
    pretrained: Literal["offline", "hub", "none"] = "offline"
    image_size: tuple[int, int] = (640, 384)
    fpn_channels: int = 64
    head_convs: int = 2
    p6p7: bool = False
    anchor_size: float = 3.0
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 100
    min_box_side: float = 4.0
    augment: bool = True
    hflip: float = 0.5
    scale: tuple[float, float] = (0.5, 1.0)
    color_jitter: float = 0.3
    blur: float = 0.0
    grayscale: float = 0.0
