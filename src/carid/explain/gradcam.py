"""Grad-CAM heat maps of the class decision and of the box head, in the original photo's pixels.

The CAM itself is `pytorch-grad-cam`'s `GradCAM` (hooks, channel weights from mean gradients,
ReLU, upsampling to the network input, scaling to [0, 1]); this module adds what a carid network
needs around it:

* `HeadOutput` wraps the network so that pytorch-grad-cam sees one tensor: the logits [B, C]
  (head="class") or the box [B, 4] (head="box"). `CarNet` returns a `CarNetOutput` NamedTuple,
  which the library cannot score.
* The default target layer is the backbone's *last feature map*, the output of `forward_features`,
  tapped through an identity module (`HeadOutput.feature_map`) that the wrapper puts between
  `forward_features` and the pooling. That is the same tensor for every timm CNN and for carid_vgg:
  EfficientNet(-Lite) `conv_head` + `bn2` (after its activation), MobileNetV3 `blocks[-1]` (its
  `conv_head` comes after pooling), ResNet `layer4`, ConvNeXt `stages[-1]` (+ `norm_pre`), carid_vgg
  the last stage. No per-architecture table to keep up to date. A plain module without
  `forward_features` gets the last module (in forward order) whose output is a feature map
  [B, C, h, w]. `layer=` overrides with a module name (relative to the timm model for a CarNet:
  "blocks.5", "layer3", "stages.2"; or a full name in the network).
* Box target (`BoxExtentTarget`): the predicted box's width + height in normalized units,
  (x2 - x1) + (y2 - y1). Its gradient pushes each of the four edges outward, so the Grad-CAM
  (which keeps positive evidence only) shows the regions whose features make the network extend
  the box to where it is: on a good localizer, the car's extremities. This follows the library
  author's advice for regression outputs (score the output itself to see what makes it larger); a
  target scoring the IoU with the predicted box would have zero gradient at the prediction.
* The heat map is computed at the network input and mapped back to the original photo
  (`overlay.heatmap_to_original`), so it lines up with the photo for letterbox and stretch inputs.

Hooks are added to the network for the duration of one call, under a lock, so one network can be
shared by the threads of a web server. Parameter gradients are cleared afterwards.
"""

from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from torch import nn

from carid import boxes as box_math
from carid.explain.model import (
    ExplainedModel,
    ExplainError,
    ModelDescription,
    Photo,
    check_logits,
    prepare_photo,
    resolve_class,
    resolve_model,
    split_output,
)
from carid.explain.overlay import OVERLAY_MAX_SIDE, heatmap_to_original, render_heatmap_overlay
from carid.models.network import CarNet
from carid.preprocess import DecodedImage, Geometry

FEATURE_MAP_LAYER = "forward_features"
HEADS = ("class", "box")
Head = Literal["class", "box"]

_CAM_LOCK = threading.Lock()


class HeadOutput(nn.Module):
    """The network seen through one head: images [B, 3, H, W] -> logits [B, C] or box [B, 4].

    For a CarNet or a timm-style model (`forward_features` + pooling/head), the last feature map
    passes through `self.feature_map` (an identity), the default Grad-CAM target layer. The last
    logits and box (detached) are kept in `last_logits` / `last_box` for the prediction.
    """

    def __init__(self, network: nn.Module, head: Head = "class"):
        super().__init__()
        if head not in HEADS:
            raise ExplainError(f"unknown head {head!r}: expected one of {', '.join(HEADS)}")
        self.network = network
        self.head = head
        self.feature_map = nn.Identity()
        self.taps_features = isinstance(network, CarNet) or (
            callable(getattr(network, "forward_features", None))
            and callable(getattr(network, "forward_head", None))
        )
        self.last_logits: torch.Tensor | None = None
        self.last_box: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        network = self.network
        if isinstance(network, CarNet):
            encoded = network.encode(images)
            features = self.feature_map(encoded.feature_map)
            output: Any = network.forward_heads(network.backbone.pool(features), features, encoded.detail)
        elif self.taps_features:
            output = network.forward_head(self.feature_map(network.forward_features(images)))
        else:
            output = network(images)
        logits, box = split_output(output)
        self.last_logits = logits.detach()
        self.last_box = box.detach() if box is not None else None
        if self.head == "box":
            if box is None:
                raise ExplainError("the network has no box head, so there is no box to explain")
            return box
        return logits


class ClassScoreTarget:
    """Grad-CAM target: the logit of `category`, or of the top class when category is None."""

    def __init__(self, category: int | None):
        self.category = category

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        index = int(logits.argmax()) if self.category is None else self.category
        return logits[..., index]


class BoxExtentTarget:
    """Grad-CAM target for the box head: (x2 - x1) + (y2 - y1) of the normalized box [4] (or [B, 4]),
    i.e. every edge pushed outward. See the module docstring for why."""

    def __call__(self, box: torch.Tensor) -> torch.Tensor:
        return (box[..., 2] - box[..., 0]) + (box[..., 3] - box[..., 1])


@dataclass(frozen=True)
class GradCamResult:
    """One Grad-CAM explanation.

    heatmap: float32 [H, W] over the original photo (H, W = the photo file's height and width),
        values in [0, 1]; 1 is the strongest positive evidence anywhere in the network input.
    network_heatmap: float32 [h, w] over the network input (letterbox border included).
    head: "class" (explains a class logit) or "box" (explains the box extent).
    predicted_index, predicted_label, probability: the network's top class and its softmax probability.
    target_index, target_label: the class explained (head "class"), else None.
    box: the predicted box as absolute xyxy in original photo pixels (clipped to the photo), or None.
    layer: the module whose activations were used ("forward_features" = the backbone's last map).
    """

    heatmap: np.ndarray = field(repr=False)
    network_heatmap: np.ndarray = field(repr=False)
    head: str
    predicted_index: int
    predicted_label: str
    probability: float
    target_index: int | None
    target_label: str | None
    box: tuple[float, float, float, float] | None
    layer: str
    geometry: Geometry

    def caption(self) -> str:
        """One line for a picture: what was explained and what the network predicted."""
        predicted = f"{self.predicted_label} {self.probability:.0%}"
        if self.head == "box":
            return f"Grad-CAM box | {predicted}"
        if self.target_index == self.predicted_index:
            return f"Grad-CAM {predicted}"
        return f"Grad-CAM for {self.target_label} | top: {predicted}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "gradcam",
            "head": self.head,
            "predicted_index": self.predicted_index,
            "predicted_label": self.predicted_label,
            "probability": self.probability,
            "target_index": self.target_index,
            "target_label": self.target_label,
            "box": list(self.box) if self.box is not None else None,
            "layer": self.layer,
            "heatmap_shape": list(self.heatmap.shape),
            "geometry": self.geometry.to_dict(),
        }


def _layer_candidates(wrapper: HeadOutput) -> list[str]:
    network = wrapper.network
    if isinstance(network, CarNet):
        names = network.backbone.stage_names()
    else:
        names = [
            name
            for name, module in network.named_modules()
            if name and name.count(".") <= 1 and any(True for _ in module.parameters())
        ]
    return ([FEATURE_MAP_LAYER] if wrapper.taps_features else []) + names


def _named_layer(wrapper: HeadOutput, layer: str) -> nn.Module:
    network = wrapper.network
    roots: list[nn.Module] = [network.backbone.model] if isinstance(network, CarNet) else []
    for root in [*roots, network]:
        try:
            return root.get_submodule(layer)
        except AttributeError:
            continue
    candidates = _layer_candidates(wrapper)
    every_name = [name for name, _ in network.named_modules() if name]
    if isinstance(network, CarNet):
        every_name += [name for name, _ in network.backbone.model.named_modules() if name]
    close = difflib.get_close_matches(layer, every_name, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    shown = ", ".join(candidates[:40]) + (", ..." if len(candidates) > 40 else "")
    raise ExplainError(f"the network has no layer {layer!r}.{hint} Candidates: {shown}")


def _last_feature_map_module(network: nn.Module, inputs: torch.Tensor) -> tuple[nn.Module, str]:
    """The last module, in forward order, whose output is a feature map [B, C, h, w] (one probe pass)."""
    seen: list[tuple[str, nn.Module]] = []
    hooks = []

    def recorder(name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                seen.append((name, module))

        return hook

    for name, module in network.named_modules():
        if name:
            hooks.append(module.register_forward_hook(recorder(name)))
    try:
        with torch.no_grad():
            network(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if not seen:
        raise ExplainError(
            f"Grad-CAM needs a convolutional layer with a [B, C, h, w] output; "
            f"{type(network).__name__} has none"
        )
    name, module = seen[-1]
    return module, name


def target_layer(wrapper: HeadOutput, layer: str | None, inputs: torch.Tensor) -> tuple[nn.Module, str]:
    """(module, name) whose activations Grad-CAM uses; see the module docstring for the default."""
    if layer is None or layer == FEATURE_MAP_LAYER:
        if wrapper.taps_features:
            return wrapper.feature_map, FEATURE_MAP_LAYER
        if layer is not None:
            raise ExplainError(
                f"{type(wrapper.network).__name__} has no forward_features; "
                f"give a layer name: {', '.join(_layer_candidates(wrapper)[:40])}"
            )
        return _last_feature_map_module(wrapper.network, inputs)
    return _named_layer(wrapper, layer), layer


def _run_cam(wrapper: HeadOutput, module: nn.Module, layer: str, inputs: torch.Tensor, target) -> np.ndarray:
    """pytorch-grad-cam on one input [1, 3, H, W] -> heat [H, W] in [0, 1]; hooks removed afterwards."""
    cam = GradCAM(model=wrapper, target_layers=[module])
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # The input requires grad so the activations do too, even for a frozen network.
            heat = cam(input_tensor=inputs.detach().clone().requires_grad_(True), targets=[target])
    except (ValueError, IndexError, TypeError, AttributeError) as exc:
        # pytorch-grad-cam fails inside when the layer is unsuitable: say which way, and what would do.
        activations = cam.activations_and_grads.activations
        candidates = ", ".join(_layer_candidates(wrapper)[:40])
        if not activations:
            raise ExplainError(
                f"layer {layer!r} is not on the network's forward path; pick one of: {candidates}"
            ) from None
        if not cam.activations_and_grads.gradients:
            raise ExplainError(
                f"layer {layer!r} does not influence the {wrapper.head} output; pick one of: {candidates}"
            ) from None
        if activations[0].ndim != 4:
            raise ExplainError(
                f"layer {layer!r} gives output of shape {tuple(activations[0].shape)}, not a feature map "
                f"[B, C, h, w]; pick a convolutional stage: {candidates}"
            ) from None
        raise ExplainError(f"Grad-CAM failed at layer {layer!r}: {exc}") from exc
    finally:
        cam.activations_and_grads.release()
    return np.asarray(heat[0], dtype=np.float32)


def compute_gradcam(
    model: ExplainedModel,
    image: Path | str | bytes | Image.Image | DecodedImage | Photo,
    target: int | str | None = None,
    head: Head = "class",
    layer: str | None = None,
) -> GradCamResult:
    """Grad-CAM of one photo.

    image: a file path, file bytes, a Pillow image (taken as the original photo) or a prepared Photo.
    target: class to explain for head "class": index or name; None = the predicted class.
    head: "class" (the class decision) or "box" (the box extent; needs a box head).
    layer: module name of the target layer; None = the backbone's last feature map.
    Raises ExplainError (unknown class or layer, no box head) and ImageError (unreadable photo).
    """
    if head not in HEADS:
        raise ExplainError(f"unknown head {head!r}: expected one of {', '.join(HEADS)}")
    if head == "box" and not model.has_box_head:
        raise ExplainError(
            "the network has no box head, so there is no box to explain; explain the class decision "
            "(head 'class') or use a model trained with boxes"
        )
    if head == "box" and target is not None:
        raise ExplainError("a class target applies to the class head only; the box head has one output box")
    photo = image if isinstance(image, Photo) else prepare_photo(image, model.spec)
    requested = None if target is None else resolve_class(target, model.class_names)
    network = model.network
    was_training = network.training
    with _CAM_LOCK:
        try:
            wrapper = HeadOutput(network, head)
            module, layer_name = target_layer(wrapper, layer, photo.inputs)
            score = ClassScoreTarget(requested) if head == "class" else BoxExtentTarget()
            network_heat = _run_cam(wrapper, module, layer_name, photo.inputs, score)
            logits, box = wrapper.last_logits, wrapper.last_box
        finally:
            network.zero_grad(set_to_none=True)
            network.train(was_training)
    if logits is None:  # the wrapper always records them; this only narrows the type
        raise ExplainError("the network produced no logits")
    check_logits(logits, model.class_names)
    probabilities = torch.softmax(logits.float(), dim=-1)[0]
    predicted = int(probabilities.argmax())
    target_index = (predicted if requested is None else requested) if head == "class" else None
    original_box = None
    if box is not None:
        width, height = photo.original_size
        mapped = photo.geometry.boxes_to_original(box[0].float().numpy())
        original_box = tuple(float(v) for v in box_math.clip(mapped, width, height)[0])
    return GradCamResult(
        heatmap=np.clip(heatmap_to_original(network_heat, photo.geometry), 0.0, 1.0),
        network_heatmap=network_heat,
        head=head,
        predicted_index=predicted,
        predicted_label=model.class_names[predicted],
        probability=float(probabilities[predicted]),
        target_index=target_index,
        target_label=model.class_names[target_index] if target_index is not None else None,
        box=original_box,  # type: ignore[arg-type]
        layer=layer_name,
        geometry=photo.geometry,
    )


def render_gradcam(result: GradCamResult, photo: Photo, max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """The overlay picture of a Grad-CAM result: heat over the photo, predicted box, caption."""
    return render_heatmap_overlay(
        photo.image,
        result.heatmap,
        caption=result.caption(),
        box=result.box,
        original_size=photo.original_size,
        max_side=max_side,
    )


def gradcam_overlay(
    network: nn.Module,
    metadata: ModelDescription,
    image: Image.Image | bytes,
    target: int | str | None = None,
    head: Head = "class",
    max_side: int = OVERLAY_MAX_SIDE,
) -> tuple[Image.Image, dict[str, Any]]:
    """For the web page: (overlay, longer side `max_side` px + caption band; `GradCamResult.to_dict()`).

    network + metadata: a CarNet and its ModelMetadata, or a plain classifier and a ClassifierInfo.
    image: the uploaded photo, decoded (`carid.images.load_rgb`, EXIF rotation applied: its
    pixels are the original frame) or as file bytes. Use `overlay.png_bytes` for a PNG response.
    """
    model = resolve_model(network, metadata)
    photo = prepare_photo(image, model.spec)
    result = compute_gradcam(model, photo, target=target, head=head)
    return render_gradcam(result, photo, max_side=max_side), result.to_dict()
