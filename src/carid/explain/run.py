"""Explain a batch of photos and write the pictures: what `carid explain` runs.

For each photo: Grad-CAM of the class decision (`<stem>.gradcam.png`), Grad-CAM of the box head
when the network has one (`<stem>.gradcam-box.png`) and/or SHAP (`<stem>.shap.png`), plus one
`Explanation` record. A photo that cannot be read is recorded with its error and the rest go on;
mistakes that would fail every photo (unknown class, layer or method, no box head) raise at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from carid.explain.gradcam import compute_gradcam, render_gradcam
from carid.explain.model import (
    ExplainedModel,
    ExplainError,
    ModelDescription,
    prepare_photo,
    resolve_class,
    resolve_model,
)
from carid.explain.overlay import save_png
from carid.explain.shap_explain import DEFAULT_SHAP_EVALS, DEFAULT_TOP_K, compute_shap, render_shap
from carid.images import ImageError

METHODS = ("gradcam", "shap")


@dataclass(frozen=True)
class Explanation:
    """The explanations written for one photo.

    image: the photo's path as given.
    label, probability: the network's top class and its probability (None when the photo failed).
    files: picture kind ("gradcam", "gradcam_box", "shap") -> written PNG path.
    details: per picture kind, the explanation's `to_dict()` (target class, box, layer, ...).
    error: why the photo could not be explained, or None.
    """

    image: str
    label: str | None
    probability: float | None
    files: dict[str, str] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "label": self.label,
            "probability": self.probability,
            "files": dict(self.files),
            "details": {kind: dict(detail) for kind, detail in self.details.items()},
            "error": self.error,
        }


def parse_methods(methods: str | Iterable[str]) -> tuple[str, ...]:
    """ "gradcam", "shap", "both" or an iterable of method names -> validated tuple, in METHODS order."""
    names = [methods] if isinstance(methods, str) else list(methods)
    wanted: set[str] = set()
    for name in names:
        if name == "both":
            wanted.update(METHODS)
        elif name in METHODS:
            wanted.add(name)
        else:
            raise ExplainError(f"unknown explanation method {name!r}: expected gradcam, shap or both")
    if not wanted:
        raise ExplainError("no explanation method given: expected gradcam, shap or both")
    return tuple(method for method in METHODS if method in wanted)


def _output_stem(path: Path, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem) or "image"
    candidate, number = stem, 2
    while candidate in used:
        candidate, number = f"{stem}-{number}", number + 1
    used.add(candidate)
    return candidate


def explain_images(
    model: Path | str | nn.Module | ExplainedModel,
    images: Sequence[Path | str],
    out_dir: Path | str,
    methods: str | Iterable[str] = ("gradcam",),
    target: int | str | None = None,
    layer: str | None = None,
    shap_evals: int = DEFAULT_SHAP_EVALS,
    top_k: int = DEFAULT_TOP_K,
    description: ModelDescription | None = None,
) -> list[Explanation]:
    """Explain each photo and write PNG pictures into `out_dir`; one Explanation per photo, in order.

    model: a carid checkpoint path, an ExplainedModel, or a network with its `description`
        (ModelMetadata for a CarNet, ClassifierInfo for a plain classifier returning logits).
    methods: "gradcam", "shap", "both" or a list of them.
    target: class to explain (index or name); None = each photo's predicted class.
    layer: Grad-CAM target layer name; None = the backbone's last feature map.
    shap_evals, top_k: SHAP's evaluation budget and how many classes it explains.
    """
    chosen = parse_methods(methods)
    explained = resolve_model(model, description)
    if target is not None:
        resolve_class(target, explained.class_names)  # fail before the first photo, not on each
    out = Path(out_dir)
    used: set[str] = set()
    results = []
    for image in images:
        path = Path(image)
        try:
            photo = prepare_photo(path, explained.spec)
        except ImageError as exc:
            results.append(Explanation(image=str(image), label=None, probability=None, error=str(exc)))
            continue
        stem = _output_stem(path, used)
        files: dict[str, str] = {}
        details: dict[str, dict[str, Any]] = {}
        label, probability = None, None
        if "gradcam" in chosen:
            heads = ("class", "box") if explained.has_box_head else ("class",)
            for head in heads:
                head_target = target if head == "class" else None
                result = compute_gradcam(explained, photo, target=head_target, head=head, layer=layer)
                kind = "gradcam" if head == "class" else "gradcam_box"
                suffix = "gradcam" if head == "class" else "gradcam-box"
                files[kind] = str(save_png(render_gradcam(result, photo), out / f"{stem}.{suffix}.png"))
                details[kind] = result.to_dict()
                label, probability = result.predicted_label, result.probability
        if "shap" in chosen:
            shap_result = compute_shap(explained, photo, target=target, top_k=top_k, max_evals=shap_evals)
            files["shap"] = str(save_png(render_shap(shap_result), out / f"{stem}.shap.png"))
            details["shap"] = shap_result.to_dict()
            label, probability = shap_result.predicted_label, shap_result.probability
        results.append(
            Explanation(image=str(image), label=label, probability=probability, files=files, details=details)
        )
    return results
