"""SHAP explanations of the class decision: which parts of the photo raise or lower each class score.

`shap`'s Partition explainer with an Image masker (blur or inpainting) treats the network as a black
box: it hides hierarchically split regions of the image, runs the network on each masked image and
attributes the change in class probability to the regions (Owen values). Compared with Grad-CAM it
needs no gradients or layer choice and shows negative evidence too, at the cost of `max_evals`
forward passes.

The explained image is the photo *as resized for the network* (`resize_content`: the whole input
for stretch, the fitted photo without its border for letterbox), so masks never waste evaluations
on the letterbox border and every SHAP pixel is a photo pixel: values [k, h, w] cover the photo
frame and line up with it when resized to the photo's size. The model function given to shap puts
each (masked) image into the network input exactly as `preprocess` does (pad with `pad_value`,
normalize) and returns softmax probabilities [N, C].
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from carid.explain.model import (
    ExplainedModel,
    ExplainError,
    Photo,
    check_logits,
    prepare_photo,
    resolve_class,
    split_output,
)
from carid.explain.overlay import SHAP_PANEL_SIDE, render_shap_panels
from carid.preprocess import DecodedImage, Geometry, normalize, resize_content

DEFAULT_SHAP_EVALS = 400
DEFAULT_TOP_K = 3
MASKERS = ("blur", "inpaint_telea", "inpaint_ns")
_BLUR = re.compile(r"^blur\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


@dataclass(frozen=True)
class ShapResult:
    """A SHAP explanation of one photo for k classes.

    values: float32 [k, h, w], SHAP value of each pixel (summed over RGB) for each class, in units of
        class probability; positive raises the class, negative lowers it. Over the whole image they
        add up to probability(photo) - probability(fully masked photo).
    image: uint8 RGB [h, w, 3], the photo as resized for the network (the frame of `values`).
    class_indices, labels, probabilities: the explained classes (the target first when given, then
        the top classes) and their probabilities on the unmasked photo.
    predicted_index, predicted_label, probability: the network's top class.
    max_evals: the model evaluations shap was allowed; masker: how hidden regions were filled.
    """

    values: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)
    class_indices: tuple[int, ...]
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    predicted_index: int
    predicted_label: str
    probability: float
    max_evals: int
    masker: str
    geometry: Geometry

    def titles(self) -> list[str]:
        """One caption per class panel: label and probability."""
        return [f"{label} {p:.0%}" for label, p in zip(self.labels, self.probabilities, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "shap",
            "predicted_index": self.predicted_index,
            "predicted_label": self.predicted_label,
            "probability": self.probability,
            "classes": [
                {"index": index, "label": label, "probability": p, "shap_sum": float(values.sum())}
                for index, label, p, values in zip(
                    self.class_indices, self.labels, self.probabilities, self.values, strict=True
                )
            ],
            "values_shape": list(self.values.shape),
            "max_evals": self.max_evals,
            "masker": self.masker,
            "geometry": self.geometry.to_dict(),
        }


def masker_spec(masker: str, height: int, width: int) -> str:
    """carid masker name -> shap's Image masker string.

    "blur": a box blur with a kernel half the shorter side (shap's ImageNet example uses
    blur(128,128) at 224 px): hidden regions keep only their coarse colour. "blur(a,b)",
    "inpaint_telea" and "inpaint_ns" are passed through.
    """
    if masker == "blur":
        kernel = max(3, min(height, width) // 2)
        return f"blur({kernel},{kernel})"
    if masker in MASKERS or _BLUR.match(masker):
        return masker
    raise ExplainError(
        f"unknown SHAP masker {masker!r}: expected blur, blur(a,b), inpaint_telea or inpaint_ns"
    )


def probability_function(model: ExplainedModel, geometry: Geometry, batch_size: int = 32):
    """images uint8 [N, h, w, 3] (the photo's region of the network input) -> probabilities [N, C]."""
    spec = model.spec
    left, top = round(geometry.pad_left), round(geometry.pad_top)
    pad = np.asarray(spec.pad_value or (0, 0, 0), dtype=np.uint8)
    network = model.network

    def probabilities(images: np.ndarray) -> np.ndarray:
        batch = np.asarray(images)
        if batch.dtype != np.uint8:
            batch = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
        count, height, width = batch.shape[:3]
        canvas = np.empty((count, spec.height, spec.width, 3), dtype=np.uint8)
        canvas[:] = pad
        canvas[:, top : top + height, left : left + width] = batch
        results = []
        with torch.inference_mode():
            for start in range(0, count, batch_size):
                inputs = torch.from_numpy(
                    np.stack([normalize(pixels, spec) for pixels in canvas[start : start + batch_size]])
                )
                logits, _ = split_output(network(inputs))
                check_logits(logits, model.class_names)
                results.append(torch.softmax(logits.float(), dim=-1).numpy())
        return np.concatenate(results).astype(np.float64)

    return probabilities


def compute_shap(
    model: ExplainedModel,
    image: Path | str | bytes | Image.Image | DecodedImage | Photo,
    target: int | str | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_evals: int = DEFAULT_SHAP_EVALS,
    masker: str = "blur",
    batch_size: int = 32,
) -> ShapResult:
    """SHAP values of one photo for the target class (if given) and the top classes, k in all.

    max_evals: network evaluations shap may use (more = finer regions; about 400 gives ~20 regions
    per side at 224 px and takes seconds to a minute on a CPU). Raises ExplainError, ImageError.
    """
    with warnings.catch_warnings():  # shap's import warns about matplotlib deprecations it uses
        warnings.simplefilter("ignore", (DeprecationWarning, PendingDeprecationWarning))
        import shap  # imported here: it takes seconds to import

    if max_evals < 10:
        raise ExplainError(f"shap max_evals must be at least 10, got {max_evals}")
    if top_k < 1:
        raise ExplainError(f"top_k must be at least 1, got {top_k}")
    photo = image if isinstance(image, Photo) else prepare_photo(image, model.spec)
    content = np.asarray(resize_content(photo.image, model.spec, photo.original_size), dtype=np.uint8)
    height, width = content.shape[:2]
    predict = probability_function(model, photo.geometry, batch_size=batch_size)
    was_training = model.network.training
    model.network.eval()
    try:
        probabilities = predict(content[None])[0]
        order = [int(i) for i in np.argsort(-probabilities, kind="stable")]
        classes = [] if target is None else [resolve_class(target, model.class_names)]
        classes += [index for index in order if index not in classes][: max(0, top_k - len(classes))]
        masker_string = masker_spec(masker, height, width)
        explainer = shap.explainers.Partition(
            predict, shap.maskers.Image(masker_string, content.shape), output_names=list(model.class_names)
        )
        outputs = np.asarray(classes)
        explanation = explainer(
            content[None], max_evals=max_evals, batch_size=batch_size, outputs=outputs, silent=True
        )
    finally:
        model.network.train(was_training)
    values = np.asarray(explanation.values[0], dtype=np.float32)  # [h, w, 3, k]
    per_pixel = np.ascontiguousarray(values.sum(axis=2).transpose(2, 0, 1))
    predicted = order[0]
    return ShapResult(
        values=per_pixel,
        image=content,
        class_indices=tuple(classes),
        labels=tuple(model.class_names[i] for i in classes),
        probabilities=tuple(float(probabilities[i]) for i in classes),
        predicted_index=predicted,
        predicted_label=model.class_names[predicted],
        probability=float(probabilities[predicted]),
        max_evals=int(max_evals),
        masker=masker_string,
        geometry=photo.geometry,
    )


def render_shap(result: ShapResult, panel_side: int = SHAP_PANEL_SIDE) -> Image.Image:
    """The SHAP picture: the photo and one red/blue panel per explained class."""
    frame = (result.geometry.original_width, result.geometry.original_height)
    return render_shap_panels(
        result.image, result.values, result.titles(), panel_side=panel_side, frame_size=frame
    )
