"""Box-aware image transforms for training and evaluation.

Both transforms are callables ``(image, boxes, original_size=None) -> (network input, boxes)``:
    image: RGB uint8 [H, W, 3] NumPy array or an RGB Pillow image,
    boxes: absolute xyxy pixels [N, 4] (N >= 0) of the image, or of the original photo when
        `original_size` (width, height) says the image is a reduced-size decode of it; boxes are
        clipped to the image, and one with no area left is an error,
    network input: float32 [3, H, W] normalized with the spec's mean/std,
    boxes out: normalized xyxy [N, 4] relative to the network input, in the same order.

No train/predict skew: the eval transform *is* `carid.preprocess.preprocess`, the function the
predictor runs. The train transform augments with albumentations but resizes, pads and normalizes
with the functions `preprocess` is made of (`resize_content`, `pad_to_network`, `normalize`), so
the resize mode, interpolation, padding and mean/std are the same code in training, evaluation and
prediction.

Train augmentations, in order (each only when its `AugmentConfig` setting is non-zero):
    rotation    ``A.Affine`` by up to ±rotate degrees (p=0.5); the box becomes the rotated ellipse's
                bounding box, clipped to the image; corners are filled with the spec's pad colour;
    crop        `BoxSafeRandomCrop`: a random crop keeping `scale` of the area, that always contains
                every box whole (no resize here: the one resize comes next);
    flip        ``A.HorizontalFlip`` (p=hflip), ``A.VerticalFlip`` (p=vflip), ``A.RandomRotate90``
                (p=rotate90; 0, 90, 180 or 270 degrees): boxes are mirrored/turned exactly;
    resize      `carid.preprocess.resize_content` (as in prediction);
    colour      on the resized content (cheaper, and blur is then in network pixels):
                ``A.ColorJitter`` (brightness/contrast/saturation ±color_jitter, hue ±color_jitter/6,
                p=0.8), ``A.GaussianBlur`` (sigma 0.1-2 network pixels, p=blur), ``A.ToGray`` (p=grayscale);
    pad         `carid.preprocess.pad_to_network` (letterbox border exactly `pad_value`), `normalize`.

`BoxSafeRandomCrop` is written here because albumentations has no crop that both controls the kept
area (torchvision's RandomResizedCrop `scale`) and never cuts a box: ``BBoxSafeRandomCrop`` ignores
the area, ``RandomSizedBBoxSafeCrop`` and ``RandomResizedCrop`` also resize (a second resize with
another library's interpolation would reintroduce skew), and ``RandomResizedCrop`` cuts boxes. Only
the choice of crop window is ours; albumentations applies it to the image and the boxes.
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop
from PIL import Image

from carid import boxes as box_math
from carid.config import AugmentConfig
from carid.preprocess import (
    PreprocessSpec,
    compute_geometry,
    decode_scale,
    normalize,
    pad_to_network,
    preprocess,
    resize_content,
)

# Crop aspect ratio range, relative to the image's own aspect ratio (torchvision's 3/4 .. 4/3).
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Redraws of the augmentation when it lost a box (only rotation can) before giving up on augmenting.
MAX_DRAWS = 5


class BoxSafeRandomCrop(BaseCrop):
    """Crop a random window of about `scale` of the image area that contains all boxes whole.

    The window's area fraction is drawn uniformly from `scale` and its aspect ratio log-uniformly
    from `ratio` times the image's; the window is then grown as needed to hold the union of the
    boxes, and placed uniformly among the positions that contain it. Without boxes it is a plain
    random crop. Integer pixel window; boxes are never cut. Applying the window to the image and
    the boxes is albumentations' `BaseCrop`.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = CROP_RATIO,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"BoxSafeRandomCrop: scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"BoxSafeRandomCrop: ratio must satisfy 0 < min <= max, got {ratio}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        area_fraction = self.py_random.uniform(*self.scale)
        log_ratio = self.py_random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]))
        relative_ratio = math.exp(log_ratio)
        crop_w = width * math.sqrt(area_fraction * relative_ratio)
        crop_h = height * math.sqrt(area_fraction / relative_ratio)
        # albumentations hands boxes over normalized to [0, 1] (its internal format).
        normalized = np.asarray(data.get("bboxes", np.zeros((0, 4))), dtype=np.float64)
        if len(normalized):
            union = box_math.union_box(box_math.scale(normalized[:, :4], width, height))
            need_x1, need_y1 = math.floor(union[0]), math.floor(union[1])
            need_x2, need_y2 = math.ceil(union[2] - 1e-6), math.ceil(union[3] - 1e-6)
        else:
            need_x1, need_y1, need_x2, need_y2 = width, height, 0, 0
        x_min, x_max = self._window(crop_w, width, need_x1, need_x2)
        y_min, y_max = self._window(crop_h, height, need_y1, need_y2)
        return {"crop_coords": (x_min, y_min, x_max, y_max)}

    def _window(self, size: float, extent: int, need_lo: int, need_hi: int) -> tuple[int, int]:
        """A random [lo, hi) of about `size` pixels inside [0, extent) containing [need_lo, need_hi)."""
        need_lo, need_hi = max(0, min(need_lo, extent)), max(0, min(need_hi, extent))
        length = min(extent, max(1, round(size), need_hi - need_lo))
        lowest = max(0, need_hi - length)
        highest = min(need_lo, extent - length) if need_hi > need_lo else extent - length
        start = self.py_random.randint(lowest, max(lowest, highest))
        return start, start + length

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio")


def _as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {array.dtype} {array.shape}")
    return array


def _as_image(image: np.ndarray | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return Image.fromarray(_as_array(image), "RGB")


def _checked_boxes(boxes: object, width: int, height: int) -> np.ndarray:
    """Boxes clipped to the image; a degenerate box (no area left) is an error."""
    clipped = box_math.clip(box_math.as_boxes(boxes), width, height)
    if len(clipped) and bool(np.any(box_math.is_degenerate(clipped, min_size=1e-3))):
        raise ValueError(f"degenerate box(es) for a {width}x{height} image: {clipped.tolist()}")
    return clipped


class EvalTransform:
    """No augmentation: exactly `carid.preprocess.preprocess` (what the predictor runs)."""

    deterministic = True

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(
        self, image: np.ndarray | Image.Image, boxes: object, original_size: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        picture = _as_image(image)
        network, geometry = preprocess(picture, self.spec, original_size)
        targets = _checked_boxes(boxes, geometry.original_width, geometry.original_height)
        return network, geometry.boxes_to_network(targets)

    def set_seed(self, seed: int | None) -> None:
        """Nothing random here; present so both transforms can be reseeded alike."""


class TrainTransform:
    """Augment with albumentations (box-aware), then resize and normalize like `preprocess`.

    Geometric steps (rotation, crop, flip) run on the decoded image with its boxes; the result is
    resized with `carid.preprocess.resize_content`; photometric steps (colour, blur, grey) run on
    that network-size content, which is 2-4x cheaper than on the photo and keeps blur strength in
    network pixels; then `pad_to_network` and `normalize`, the same functions `preprocess` uses.
    The letterbox border is never colour-jittered: it stays exactly `pad_value`, as in prediction.

    seed: seeds albumentations' generators; `set_seed` reseeds them (DataLoader workers do, see
    `carid.training.datamodule`). A draw that loses a box (rotation can push one out) is redrawn up to
    `MAX_DRAWS` times, then the image is used unaugmented.
    """

    deterministic = False

    def __init__(self, augment: AugmentConfig, spec: PreprocessSpec, seed: int | None = None) -> None:
        self.spec = spec
        self.augment = augment
        geometric, photometric = _geometric_steps(augment, spec), _photometric_steps(augment)
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["box_ids"], clip=True)
        self.geometric = A.Compose(geometric, bbox_params=bbox_params) if geometric else None
        self.photometric = A.Compose(photometric) if photometric else None
        self.set_seed(seed)

    def set_seed(self, seed: int | None) -> None:
        """Reseed both pipelines (with independent streams derived from `seed`; None = fresh entropy)."""
        geometric_seed, photometric_seed = (
            [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2)]
            if seed is not None
            else (None, None)
        )
        for pipeline, pipeline_seed in (
            (self.geometric, geometric_seed),
            (self.photometric, photometric_seed),
        ):
            if pipeline is not None:
                pipeline.set_random_seed(pipeline_seed)

    def __call__(
        self, image: np.ndarray | Image.Image, boxes: object, original_size: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        pixels = _as_array(image)
        height, width = pixels.shape[:2]
        if original_size is not None:  # boxes in original pixels -> pixels of this (reduced) decode
            boxes = box_math.scale(boxes, *decode_scale(original_size, (width, height)))
        targets = _checked_boxes(boxes, width, height)
        moved = self._geometric(pixels, targets)
        if moved is None:
            return EvalTransform(self.spec)(pixels, targets)
        augmented = Image.fromarray(np.ascontiguousarray(moved[0]), "RGB")
        augmented_boxes = moved[1]
        content = np.asarray(resize_content(augmented, self.spec))
        if self.photometric is not None:
            content = self.photometric(image=content)["image"]
        network_pixels = np.asarray(pad_to_network(Image.fromarray(content, "RGB"), self.spec))
        geometry = compute_geometry(augmented.size, self.spec)
        return normalize(network_pixels, self.spec), geometry.boxes_to_network(augmented_boxes)

    def _geometric(self, pixels: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(image, boxes in its pixels) after the geometric steps; None when every draw lost a box."""
        if self.geometric is None:
            return pixels, targets
        box_ids = list(range(len(targets)))
        for _ in range(MAX_DRAWS):
            result = self.geometric(image=pixels, bboxes=targets, box_ids=box_ids)
            if len(result["box_ids"]) == len(targets):
                order = np.argsort(np.asarray(result["box_ids"], dtype=np.int64))
                return result["image"], box_math.as_boxes(
                    np.asarray(result["bboxes"], dtype=np.float64)[order]
                )
        return None


def _geometric_steps(augment: AugmentConfig, spec: PreprocessSpec) -> list[A.BasicTransform]:
    steps: list[A.BasicTransform] = []
    if augment.rotate > 0:
        steps.append(
            A.Affine(
                rotate=(-augment.rotate, augment.rotate),
                rotate_method="ellipse",
                fill=tuple(spec.pad_value or (0, 0, 0)),
                p=0.5,
            )
        )
    if tuple(augment.scale) != (1.0, 1.0):
        steps.append(BoxSafeRandomCrop(scale=tuple(augment.scale), ratio=CROP_RATIO))  # type: ignore[arg-type]
    if augment.hflip > 0:
        steps.append(A.HorizontalFlip(p=augment.hflip))
    if augment.vflip > 0:
        steps.append(A.VerticalFlip(p=augment.vflip))
    if augment.rotate90 > 0:
        steps.append(A.RandomRotate90(p=augment.rotate90))
    return steps


def _photometric_steps(augment: AugmentConfig) -> list[A.BasicTransform]:
    steps: list[A.BasicTransform] = []
    if augment.color_jitter > 0:
        strength = augment.color_jitter
        steps.append(
            A.ColorJitter(
                brightness=strength,
                contrast=strength,
                saturation=strength,
                hue=min(0.5, strength / 6),
                p=0.8,
            )
        )
    if augment.blur > 0:
        steps.append(A.GaussianBlur(sigma_limit=(0.1, 2.0), p=augment.blur))
    if augment.grayscale > 0:
        steps.append(A.ToGray(p=augment.grayscale))
    return steps


def build_eval_transform(spec: PreprocessSpec) -> EvalTransform:
    """The evaluation/prediction transform: `preprocess` and nothing else."""
    return EvalTransform(spec)


def build_train_transform(
    augment: AugmentConfig, spec: PreprocessSpec, seed: int | None = None
) -> TrainTransform | EvalTransform:
    """The training transform; with `augment.enabled` false it is the eval transform."""
    if not augment.enabled:
        return EvalTransform(spec)
    return TrainTransform(augment, spec, seed=seed)
