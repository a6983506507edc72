"""The car detector: a timm backbone, torchvision's feature pyramid and torchvision's FCOS or RetinaNet.

`build_detector(DetectConfig)` assembles `DetectorNet` from library parts only:

    backbone   timm `features_only` model (tf_efficientnet_lite0/1/2 by default) giving the maps at
               strides 8, 16 and 32; ImageNet weights offline as carid's classifier gets them
               (`carid.models.weights.load_offline_weights` loads the full timm model, whose tensors
               the features-only model shares by name; hub or none also work);
    pyramid    `torchvision.ops.FeaturePyramidNetwork` with `fpn_channels` channels (+ torchvision's
               `LastLevelP6P7` for strides 64 and 128 when `p6p7`);
    detector   `torchvision.models.detection.FCOS` or `RetinaNet` with one class ("car", label 0): its
               head (`head_convs` convolutions per branch instead of 4), anchor generator, box coder,
               loss (`compute_loss`) and post-processing (`postprocess_detections`: threshold, top-k,
               NMS) are torchvision's, untouched.

Not written here: anchors, losses, box encoding or NMS. What is bypassed is torchvision's
`GeneralizedRCNNTransform` (resize + normalize): carid letterboxes and normalizes every photo itself
(`carid.preprocess.preprocess` with the spec `detector_preprocess_spec` gives), so training, the torch
path and the NumPy/ONNX runtime see identical network inputs, and a network input pixel is a box
pixel. `DetectorNet` therefore calls the detector's parts in the order its `forward` does, minus the
transform: backbone -> head -> anchors -> loss or post-processing.

Three ways to run it, all on normalized, letterboxed images float32 [B, 3, H, W]:

    losses(images, targets)   torchvision's loss dict (training and val/loss)
    detect(images)            torchvision's post-processing: per image {"boxes" [N, 4] xyxy network
                              pixels, "scores" [N], "labels" [N]} (validation metrics, torch inference)
    forward_export(images)    (scores [B, A], boxes [B, A, 4]) for every location (every anchor for
                              RetinaNet), boxes decoded to xyxy network pixels, nothing thresholded or
                              suppressed: what the ONNX export traces; the NumPy runtime thresholds
                              (score_threshold), suppresses (nms_iou), caps (max_detections), drops
                              boxes under min_box_side and maps boxes back through the letterbox.

FCOS scores a location as sqrt(sigmoid(class logit) * sigmoid(centerness)) and RetinaNet an anchor
as sigmoid(class logit), as their torchvision post-processing does, so a threshold means the same
in both paths. `load_detector(checkpoint)` rebuilds a trained detector (CPU, eval mode) from the
checkpoint written by `carid.training.detection` (config and weights are both in it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from carid.artifacts.checkpoint import ModelMetadata, metadata_of
from carid.config import ConfigError, DetectConfig, from_dict
from carid.errors import CaridError
from carid.models.weights import OFFLINE_WEIGHTS, WeightsError, load_offline_weights
from carid.preprocess import PreprocessSpec

CLASS_NAMES: tuple[str, ...] = ("car",)
CAR_LABEL = 0  # torchvision's FCOS / RetinaNet use a sigmoid per class: no background index
STRIDES: tuple[int, ...] = (8, 16, 32)
EXTRA_STRIDES: tuple[int, ...] = (64, 128)  # LastLevelP6P7
RETINANET_OCTAVE_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))  # torchvision's RetinaNet anchors
RETINANET_ASPECT_RATIOS = (0.5, 1.0, 2.0)
TASK = "detect"  # ModelMetadata.extra["task"] of a detector checkpoint
NETWORK_PREFIX = "network."  # the LightningModule keeps the DetectorNet as `network`


class DetectorError(CaridError, ValueError):
    """A detector that cannot be built or loaded; the message names the setting or file."""


class PyramidBackbone(nn.Module):
    """timm features (strides 8/16/32) -> torchvision FPN maps, as torchvision's detectors expect:
    an OrderedDict of [B, out_channels, h, w] maps, finest first, and an `out_channels` attribute."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int, p6p7: bool) -> None:
        super().__init__()
        self.body = body
        extra = LastLevelP6P7(out_channels, out_channels) if p6p7 else None
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict((str(index), level) for index, level in enumerate(features)))


def _create_body(config: DetectConfig) -> tuple[nn.Module, str, tuple[float, ...], tuple[float, ...]]:
    """(timm features-only model at strides 8/16/32, where its weights came from, mean, std)."""
    name = config.backbone
    if not timm.is_model(name):
        raise DetectorError(f"detect.backbone: unknown timm model {name!r} (e.g. tf_efficientnet_lite0)")
    architecture = name.split(".", 1)[0]
    if config.pretrained == "offline" and architecture not in OFFLINE_WEIGHTS:
        raise DetectorError(
            f"detect.backbone {name!r} has no offline weights (they exist for {', '.join(OFFLINE_WEIGHTS)}); "
            "set detect.pretrained: hub (needs internet) or none"
        )
    hub = config.pretrained == "hub"
    try:
        probe = timm.create_model(name, pretrained=False, features_only=True)
        reductions = list(probe.feature_info.reduction())
        out_indices = tuple(reductions.index(stride) for stride in STRIDES)
        body = timm.create_model(name, pretrained=hub, features_only=True, out_indices=out_indices)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise DetectorError(
            f"detect.backbone {name!r} cannot give feature maps at strides {STRIDES}: {exc}"
        ) from None
    weights = "hub" if hub else "none"
    if config.pretrained == "offline":
        full = timm.create_model(name, pretrained=False, num_classes=0)
        try:
            weights = load_offline_weights(full, architecture)
        except WeightsError as exc:
            raise DetectorError(str(exc)) from None
        source = full.state_dict()
        missing = [key for key in body.state_dict() if key not in source]
        if missing:
            raise DetectorError(f"offline weights of {name}: the feature model's {missing[0]} has no source")
        body.load_state_dict({key: source[key] for key in body.state_dict()}, strict=True)
    data = timm.data.resolve_data_config({}, model=body)
    mean = tuple(float(v) for v in data["mean"])
    std = tuple(float(v) for v in data["std"])
    return body, weights, mean, std  # type: ignore[return-value]


def _norm(channels: int) -> Any:
    """GroupNorm as torchvision's FCOS head uses (32 groups), fewer when `channels` needs it."""
    return partial(nn.GroupNorm, math.gcd(32, channels))


def _fcos_head(channels: int, convs: int) -> FCOSHead:
    head = FCOSHead(channels, 1, len(CLASS_NAMES), num_convs=convs)
    if channels % 32:  # torchvision's default GroupNorm(32) does not divide these channels
        head.classification_head = FCOSClassificationHead(
            channels, 1, len(CLASS_NAMES), num_convs=convs, norm_layer=_norm(channels)
        )
        head.regression_head = FCOSRegressionHead(channels, 1, num_convs=convs, norm_layer=_norm(channels))
    return head


def _retinanet_head(channels: int, convs: int, anchors_per_location: int) -> RetinaNetHead:
    """torchvision's RetinaNet head (GroupNorm, as its v2) with `convs` of its 4 convolutions per branch."""
    head = RetinaNetHead(channels, anchors_per_location, len(CLASS_NAMES), norm_layer=_norm(channels))
    for branch in (head.classification_head, head.regression_head):
        branch.conv = nn.Sequential(*list(branch.conv.children())[:convs])
    return head


def detector_preprocess_spec(
    config: DetectConfig, mean: tuple[float, ...], std: tuple[float, ...]
) -> PreprocessSpec:
    """The letterbox into `config.image_size` (width, height) with the backbone's mean/std."""
    width, height = config.image_size
    return PreprocessSpec(
        image_size=(height, width),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        resize_mode="letterbox",
        interpolation="bilinear",
    )


def _check(config: DetectConfig) -> None:
    width, height = config.image_size
    problems = []
    if width < 32 or height < 32 or width % 32 or height % 32:
        problems.append(f"detect.image_size {config.image_size}: width and height must be multiples of 32")
    if config.fpn_channels < 1 or config.head_convs < 0:
        problems.append("detect.fpn_channels must be >= 1 and detect.head_convs >= 0")
    if not 0.0 <= config.score_threshold <= 1.0 or not 0.0 < config.nms_iou <= 1.0:
        problems.append("detect.score_threshold must be in [0, 1] and detect.nms_iou in (0, 1]")
    if config.max_detections < 1 or config.anchor_size <= 0:
        problems.append("detect.max_detections must be >= 1 and detect.anchor_size > 0")
    if config.architecture == "retinanet" and config.head_convs > 4:
        problems.append("detect.head_convs: torchvision's RetinaNet head has at most 4 convolutions")
    if problems:
        raise ConfigError("; ".join(problems))


class DetectorNet(nn.Module):
    """torchvision FCOS / RetinaNet on a timm + FPN backbone, fed letterboxed normalized images.

    Attributes: config (DetectConfig), detector (the torchvision model; its `transform` is never
    called), preprocess_spec (how a photo becomes the input), weights (where the backbone's came from).
    """

    def __init__(self, config: DetectConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        body, self.weights, mean, std = _create_body(config)
        channels = list(body.feature_info.channels())
        backbone = PyramidBackbone(body, channels, config.fpn_channels, config.p6p7)
        strides = STRIDES + (EXTRA_STRIDES if config.p6p7 else ())
        width, height = config.image_size
        common = {
            "min_size": min(width, height),  # the transform is bypassed; these only satisfy the signature
            "max_size": max(width, height),
            "score_thresh": config.score_threshold,
            "nms_thresh": config.nms_iou,
            "detections_per_img": config.max_detections,
        }
        if config.architecture == "fcos":
            anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
            head: nn.Module = _fcos_head(config.fpn_channels, config.head_convs)
            self.detector: FCOS | RetinaNet = FCOS(
                backbone, len(CLASS_NAMES), anchor_generator=anchors, head=head, **common
            )
        else:
            sizes = tuple(tuple(s * config.anchor_size * k for k in RETINANET_OCTAVE_SCALES) for s in strides)
            anchors = AnchorGenerator(sizes, (RETINANET_ASPECT_RATIOS,) * len(strides))
            head = _retinanet_head(
                config.fpn_channels, config.head_convs, anchors.num_anchors_per_location()[0]
            )
            self.detector = RetinaNet(
                backbone, len(CLASS_NAMES), anchor_generator=anchors, head=head, **common
            )
        self.preprocess_spec = detector_preprocess_spec(config, mean, std)

    @property
    def is_fcos(self) -> bool:
        return isinstance(self.detector, FCOS)

    # --- the parts of torchvision's forward, without its transform ------------------------------

    def _run(self, images: Tensor) -> tuple[dict[str, Tensor], list[Tensor], list[int], ImageList]:
        """(head outputs, anchors per image, locations per level, the ImageList) of a batch."""
        features = list(self.detector.backbone(images).values())
        head_outputs = self.detector.head(features)
        height, width = int(images.shape[-2]), int(images.shape[-1])
        image_list = ImageList(images, [(height, width)] * int(images.shape[0]))
        anchors = self.detector.anchor_generator(image_list, features)
        per_level = [int(level.shape[-2] * level.shape[-1]) for level in features]
        return head_outputs, anchors, per_level, image_list

    def losses(self, images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """torchvision's loss parts ("classification", "bbox_regression" and, for FCOS,
        "bbox_ctrness"), each averaged over the foreground locations of the batch.

        targets: per image {"boxes": float [N, 4] xyxy network pixels (N >= 0), "labels": int64 [N]}.
        """
        head_outputs, anchors, per_level, _ = self._run(images)
        if isinstance(self.detector, FCOS):
            return self.detector.compute_loss(targets, head_outputs, anchors, per_level)
        return self.detector.compute_loss(targets, head_outputs, anchors)

    @torch.no_grad()
    def detect(
        self, images: Tensor, score_threshold: float | None = None, max_detections: int | None = None
    ) -> list[dict[str, Tensor]]:
        """torchvision's post-processing per image: {"boxes" [N, 4] xyxy network pixels, "scores" [N],
        "labels" [N]}, best first; threshold default `config.score_threshold`, then top-k, NMS at
        `config.nms_iou`, at most `max_detections` (default `config.max_detections`); boxes narrower
        or lower than `config.min_box_side` are dropped afterwards."""
        detector = self.detector
        saved = (detector.score_thresh, detector.detections_per_img)
        if score_threshold is not None:
            detector.score_thresh = float(score_threshold)
        if max_detections is not None:
            detector.detections_per_img = int(max_detections)
        try:
            head_outputs, anchors, per_level, image_list = self._run(images)
            if isinstance(detector, RetinaNet):  # RetinaNet splits by anchors, A per location
                per_level = [n * detector.anchor_generator.num_anchors_per_location()[0] for n in per_level]
            split_outputs = {key: list(value.split(per_level, dim=1)) for key, value in head_outputs.items()}
            split_anchors = [list(a.split(per_level)) for a in anchors]
            detections = detector.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)
        finally:
            detector.score_thresh, detector.detections_per_img = saved
        return [self._drop_small(detection) for detection in detections]

    def _drop_small(self, detection: dict[str, Tensor]) -> dict[str, Tensor]:
        boxes = detection["boxes"]
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.config.min_box_side) & (
            (boxes[:, 3] - boxes[:, 1]) >= self.config.min_box_side
        )
        return {key: value[keep] for key, value in detection.items()}

    def forward_export(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images float32 [B, 3, H, W] (letterboxed, normalized) -> (scores [B, A] in [0, 1], boxes
        [B, A, 4] xyxy network-input pixels), one row per location of every pyramid level (finest
        first, row-major) and, for RetinaNet, per anchor at it. Nothing thresholded, suppressed or
        clipped: the caller does that."""
        head_outputs, anchors, _, _ = self._run(images)
        stacked = torch.stack(anchors)  # [B, A, 4]
        logits = head_outputs["cls_logits"][..., CAR_LABEL]
        regression = head_outputs["bbox_regression"]
        if isinstance(self.detector, FCOS):
            centerness = head_outputs["bbox_ctrness"][..., 0]
            scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness))
            boxes = self.detector.box_coder.decode(regression, stacked)
        else:
            scores = torch.sigmoid(logits)
            flat = self.detector.box_coder.decode_single(regression.reshape(-1, 4), stacked.reshape(-1, 4))
            boxes = flat.reshape(regression.shape)
        return scores, boxes

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """`forward_export` (so that `torch.onnx.export(net, images)` traces it)."""
        return self.forward_export(images)

    # --- for the optimizer -------------------------------------------------------------------------

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The timm feature extractor's (pretrained) parameters."""
        return list(self.detector.backbone.body.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything trained from scratch: the pyramid and the detection head."""
        body = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in body]

    def parameter_groups(
        self, lr: float, backbone_lr_scale: float = 1.0, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimizer groups as `CarNet.parameter_groups` makes them: backbone at lr *
        backbone_lr_scale, pyramid + head at lr, each split into weights (with `weight_decay`) and
        biases / norm parameters (without); empty groups left out."""
        groups = []
        for part, params, part_lr in (
            ("backbone", self.backbone_parameters(), lr * backbone_lr_scale),
            ("heads", self.head_parameters(), lr),
        ):
            for suffix, members, decay in (
                ("", [p for p in params if p.ndim >= 2], weight_decay),
                ("_no_decay", [p for p in params if p.ndim < 2], 0.0),
            ):
                if members:
                    groups.append(
                        {"name": part + suffix, "params": members, "lr": part_lr, "weight_decay": decay}
                    )
        return groups


def build_detector(config: DetectConfig) -> DetectorNet:
    """The detector `config` describes, with its backbone's pretrained weights (`config.pretrained`).

    Raises ConfigError / DetectorError naming the setting that cannot work.
    """
    return DetectorNet(config)


def detector_metadata(net: DetectorNet, extra: dict[str, Any] | None = None) -> ModelMetadata:
    """The checkpoint metadata of a detector: class "car", its letterbox spec, and under `extra`
    "task": "detect" and "detect": the DetectConfig as a dict (what `load_detector` rebuilds from)."""
    import dataclasses

    return ModelMetadata(
        class_names=CLASS_NAMES,
        preprocess=net.preprocess_spec.to_dict(),
        model={},
        with_box=True,
        extra={
            **(extra or {}),
            "task": TASK,
            "detect": dataclasses.asdict(net.config),
            "weights": net.weights,
        },
    )


def is_detector_metadata(metadata: ModelMetadata) -> bool:
    """True for the metadata of a detector checkpoint (`detector_metadata`)."""
    return metadata.extra.get("task") == TASK


def detect_config_of(metadata: ModelMetadata, source: str = "checkpoint") -> DetectConfig:
    """The DetectConfig saved in a detector checkpoint's metadata."""
    if not is_detector_metadata(metadata):
        raise DetectorError(f"{source}: not a detector checkpoint (its task is not {TASK!r})")
    return from_dict(DetectConfig, dict(metadata.extra.get("detect") or {}), f"{source} detect config")


def load_detector(checkpoint_path: Path | str) -> DetectorNet:
    """The detector of a checkpoint written by `carid train` with `task: detect`: CPU, eval mode.

    Raises DetectorError naming the file when it is not a detector checkpoint or its weights do not
    fit the saved config.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise DetectorError(f"{path}: no such checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    try:
        metadata = metadata_of(checkpoint, path)
    except ValueError as exc:
        raise DetectorError(str(exc)) from None
    config = detect_config_of(metadata, str(path))
    net = build_detector(replace(config, pretrained="none"))  # the checkpoint holds every weight
    state = {
        key[len(NETWORK_PREFIX) :]: value
        for key, value in checkpoint.get("state_dict", {}).items()
        if key.startswith(NETWORK_PREFIX)
    }
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DetectorError(f"{path}: the weights do not fit the saved detect config ({exc})") from None
    return net.eval()
