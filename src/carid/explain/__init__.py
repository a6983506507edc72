"""Explanations of a network's decisions on photos: Grad-CAM (class and box heads) and SHAP.

    model.py         ExplainedModel (network + class names + preprocessing), class targets, photos
    gradcam.py       Grad-CAM via pytorch-grad-cam, mapped back to the original photo; gradcam_overlay
    shap_explain.py  SHAP Partition explainer with an image masker
    overlay.py       heat map geometry and the pictures (NumPy + Pillow only)
    run.py           explain_images: many photos -> PNGs + Explanation records (`carid explain`)

Needs torch (the train extra); `serve` imports it only when torch is installed.
"""

from carid.explain.gradcam import (
    FEATURE_MAP_LAYER,
    BoxExtentTarget,
    GradCamResult,
    HeadOutput,
    compute_gradcam,
    gradcam_overlay,
    render_gradcam,
)
from carid.explain.model import ClassifierInfo, ExplainedModel, ExplainError, prepare_photo, resolve_model
from carid.explain.overlay import heatmap_to_original, png_bytes, render_heatmap_overlay
from carid.explain.run import Explanation, explain_images, parse_methods
from carid.explain.shap_explain import DEFAULT_SHAP_EVALS, ShapResult, compute_shap, render_shap

__all__ = [
    "DEFAULT_SHAP_EVALS",
    "FEATURE_MAP_LAYER",
    "BoxExtentTarget",
    "ClassifierInfo",
    "ExplainError",
    "ExplainedModel",
    "Explanation",
    "GradCamResult",
    "HeadOutput",
    "ShapResult",
    "compute_gradcam",
    "compute_shap",
    "explain_images",
    "gradcam_overlay",
    "heatmap_to_original",
    "parse_methods",
    "png_bytes",
    "prepare_photo",
    "render_gradcam",
    "render_heatmap_overlay",
    "render_shap",
    "resolve_model",
]
