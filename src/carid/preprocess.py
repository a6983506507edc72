"""The one preprocessing path from a photo to a network input, shared by training, evaluation and prediction.

`PreprocessSpec` says how a photo becomes a network input (input size, resize mode, interpolation,
padding, mean/std). It is saved in checkpoints and model bundles, so the predictor resizes and
normalizes exactly as training did. `preprocess` applies it with Pillow and returns the array and a
`Geometry`, which maps boxes between the network input (normalized xyxy in [0, 1]) and the
original photo (absolute xyxy pixels, `carid.boxes` conventions) in both directions.

This module needs only NumPy and Pillow: the slim ONNX Runtime predictor imports it without torch or
albumentations, and the training eval transform calls the same `preprocess`, so PyTorch and ONNX
outputs are computed from identical inputs.

Resize modes:
    stretch    resize to the network size; the aspect ratio is not kept.
    letterbox  resize to fit inside the network size keeping the aspect ratio (each side rounded to
               whole pixels), centred, the rest filled with `pad_value` (left/top padding gets the
               smaller half when the padding is odd).

Decoding at reduced size: `load_image` decodes at 1/s (s a power of two) when the photo is much
bigger than the network input: a JPEG by the decoder itself (1/2, 1/4, 1/8; the main CPU cost of
training), any other format by averaging s x s blocks right after decoding, before alpha, colour
conversion or anything else makes a full-size copy (`carid.images.decode_rgb`). Given the photo's
original size, `preprocess` places and resizes such an image exactly as it would the full-size
decode (same Geometry, same network pixels up to decoder rounding; see `decode_scale`), so boxes
always come back in the original photo's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from carid import boxes as box_math
from carid.images import REDUCE_FACTORS, decode_rgb

if TYPE_CHECKING:
    from carid.config import AugmentConfig, ModelConfig

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

RESIZE_MODES = ("stretch", "letterbox")
INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _three(name: str, values: object, kind: type) -> tuple:
    try:
        items = tuple(kind(v) for v in values)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(
            f"PreprocessSpec.{name}: expected 3 numbers (one per RGB channel), got {values!r}"
        ) from None
    if len(items) != 3:
        raise ValueError(f"PreprocessSpec.{name}: expected 3 numbers (one per RGB channel), got {values!r}")
    return items


@dataclass(frozen=True)
class PreprocessSpec:
    """How a photo becomes a network input; saved with the weights.

    image_size: (height, width) of the network input in pixels.
    mean, std: per RGB channel, on the 0..1 scale: input = (pixel / 255 - mean) / std.
    resize_mode: "stretch" or "letterbox" (see the module docstring).
    interpolation: Pillow resampling filter name: nearest, bilinear, bicubic, lanczos, box, hamming.
    pad_value: RGB fill (0..255) of the letterbox border (and of corners exposed by rotation
        augmentation); None means the mean colour, which normalizes to 0.
    """

    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_mode: str = "stretch"
    interpolation: str = "bilinear"
    pad_value: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(
                f"PreprocessSpec.image_size: expected (height, width) >= 1, got {self.image_size!r}"
            )
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "mean", _three("mean", self.mean, float))
        std = _three("std", self.std, float)
        if min(std) <= 0:
            raise ValueError(f"PreprocessSpec.std: every value must be > 0, got {std!r}")
        object.__setattr__(self, "std", std)
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"PreprocessSpec.resize_mode: {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"PreprocessSpec.interpolation: {self.interpolation!r} is not one of {sorted(INTERPOLATIONS)}"
            )
        if self.pad_value is None:
            pad = tuple(round(255 * m) for m in self.mean)
        elif isinstance(self.pad_value, int | float):
            pad = (int(self.pad_value),) * 3
        else:
            pad = _three("pad_value", self.pad_value, int)
        if min(pad) < 0 or max(pad) > 255:
            raise ValueError(f"PreprocessSpec.pad_value: RGB values must be in 0..255, got {pad!r}")
        object.__setattr__(self, "pad_value", pad)

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    @classmethod
    def from_config(
        cls,
        model: ModelConfig,
        augment: AugmentConfig,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
    ) -> PreprocessSpec:
        """The spec a run uses: square `model.image_size`, `augment.resize_mode`, the backbone's mean/std."""
        return cls(
            image_size=(model.image_size, model.image_size),
            mean=tuple(mean),  # type: ignore[arg-type]
            std=tuple(std),  # type: ignore[arg-type]
            resize_mode=augment.resize_mode,
            interpolation=interpolation,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types: lists, floats, ints, strings."""
        return {
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize_mode": self.resize_mode,
            "interpolation": self.interpolation,
            "pad_value": list(self.pad_value or ()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "preprocessing spec") -> PreprocessSpec:
        """Inverse of `to_dict`; unknown or missing keys are errors naming `source` and the key."""
        known = {"image_size", "mean", "std", "resize_mode", "interpolation", "pad_value"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{source}: unknown preprocessing key(s) {sorted(unknown)}")
        missing = {"image_size", "mean", "std", "resize_mode"} - set(data)
        if missing:
            raise ValueError(f"{source}: missing preprocessing key(s) {sorted(missing)}")
        try:
            return cls(
                image_size=tuple(data["image_size"]),  # type: ignore[arg-type]
                mean=tuple(data["mean"]),  # type: ignore[arg-type]
                std=tuple(data["std"]),  # type: ignore[arg-type]
                resize_mode=data["resize_mode"],
                interpolation=data.get("interpolation", "bilinear"),
                pad_value=data.get("pad_value"),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class Geometry:
    """Where an original photo sits in the network input.

    network_x = original_x * scale_x + pad_left (likewise y), in network pixels; normalized
    coordinates divide by network_width / network_height. `boxes_to_original` answers in the pixels
    of the photo file (original_width x original_height), whatever size it was decoded at.
    """

    original_width: int
    original_height: int
    network_width: int
    network_height: int
    scale_x: float
    scale_y: float
    pad_left: float = 0.0
    pad_top: float = 0.0

    def boxes_to_original(self, boxes: object) -> np.ndarray:
        """Normalized xyxy relative to the network input [N, 4] -> absolute xyxy original pixels [N, 4].

        Not clipped: a box reaching into the letterbox border maps outside the photo (use `boxes.clip`).
        """
        network = box_math.scale(boxes, self.network_width, self.network_height)
        shifted = box_math.translate(network, -self.pad_left, -self.pad_top)
        return box_math.scale(shifted, 1.0 / self.scale_x, 1.0 / self.scale_y)

    def boxes_to_network(self, boxes: object) -> np.ndarray:
        """Absolute xyxy original pixels [N, 4] -> normalized xyxy relative to the network input [N, 4]."""
        network = box_math.translate(
            box_math.scale(boxes, self.scale_x, self.scale_y), self.pad_left, self.pad_top
        )
        return box_math.scale(network, 1.0 / self.network_width, 1.0 / self.network_height)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "original_width": self.original_width,
            "original_height": self.original_height,
            "network_width": self.network_width,
            "network_height": self.network_height,
            "scale_x": self.scale_x,
            "scale_y": self.scale_y,
            "pad_left": self.pad_left,
            "pad_top": self.pad_top,
        }

    def to_array(self) -> np.ndarray:
        """float64 [8] in field order (for batching in a DataLoader); inverse of `from_array`."""
        return np.array(list(self.to_dict().values()), dtype=np.float64)

    @classmethod
    def from_array(cls, values: object) -> Geometry:
        v = np.asarray(values, dtype=np.float64).reshape(8)
        return cls(
            int(v[0]), int(v[1]), int(v[2]), int(v[3]), float(v[4]), float(v[5]), float(v[6]), float(v[7])
        )


def _draft_factor(original_size: tuple[int, int], decoded_size: tuple[int, int]) -> int | None:
    """s when `decoded_size` is what a 1/s reduced decode of `original_size` gives (1 = same size):
    a JPEG draft (s = 2, 4, 8) or a block average (`carid.images.REDUCE_FACTORS`)."""
    for factor in REDUCE_FACTORS:
        if all(math.ceil(o / factor) == d for o, d in zip(original_size, decoded_size, strict=True)):
            return factor
    return None


def decode_scale(original_size: tuple[int, int], decoded_size: tuple[int, int]) -> tuple[float, float]:
    """Decoded pixels per original pixel (x, y) of an image decoded at reduced size.

    Pillow's JPEG draft mode decodes at 1/s (s = 2, 4, 8) giving ceil(side / s) pixels, and decoded
    pixel i covers original pixels [i*s, (i+1)*s); so the exact scale is 1/s, not the size ratio. The
    other formats are reduced the same way by `carid.images.decode_rgb` (s = 2^k, blocks averaged).
    When the sizes match no such factor, the size ratio is used.
    Sizes are (width, height).
    """
    factor = _draft_factor(original_size, decoded_size)
    if factor is not None:
        return 1.0 / factor, 1.0 / factor
    return decoded_size[0] / original_size[0], decoded_size[1] / original_size[1]


def _placement(input_width: int, input_height: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """(resized width, resized height, pad left, pad top) of an input image inside the network input."""
    if spec.resize_mode == "stretch":
        return spec.width, spec.height, 0, 0
    fit = min(spec.width / input_width, spec.height / input_height)
    resized_w = min(spec.width, max(1, round(input_width * fit)))
    resized_h = min(spec.height, max(1, round(input_height * fit)))
    return resized_w, resized_h, *_centre_offset(resized_w, resized_h, spec)


def _centre_offset(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int]:
    """(left, top) padding that centres a width x height image in the network input."""
    return (spec.width - width) // 2, (spec.height - height) // 2


def compute_geometry(
    input_size: tuple[int, int], spec: PreprocessSpec, original_size: tuple[int, int] | None = None
) -> Geometry:
    """The `Geometry` `preprocess` gives an image of `input_size` (width, height).

    original_size: (width, height) of the photo file when the image was decoded at reduced size;
    None means the input image is the original. The geometry depends only on the original size:
    a reduced decode lands on exactly the same network pixels as a full one.
    """
    original_w, original_h = (int(v) for v in (input_size if original_size is None else original_size))
    resized_w, resized_h, pad_left, pad_top = _placement(original_w, original_h, spec)
    return Geometry(
        original_width=original_w,
        original_height=original_h,
        network_width=spec.width,
        network_height=spec.height,
        scale_x=resized_w / original_w,
        scale_y=resized_h / original_h,
        pad_left=float(pad_left),
        pad_top=float(pad_top),
    )


def resize_content(
    image: Image.Image, spec: PreprocessSpec, original_size: tuple[int, int] | None = None
) -> Image.Image:
    """The RGB image resized to its place in the network input (the whole input for stretch).

    original_size: as in `compute_geometry`. For a draft decode, whose last row and column cover
    less than a full 1/s block, the resize reads exactly the decoded region of the original photo
    (Pillow's `box`), so the result matches a full-size decode geometrically.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    original = image.size if original_size is None else (int(original_size[0]), int(original_size[1]))
    resized_w, resized_h, _, _ = _placement(original[0], original[1], spec)
    decode_x, decode_y = decode_scale(original, image.size)
    region = (0.0, 0.0, original[0] * decode_x, original[1] * decode_y)
    resample = INTERPOLATIONS[spec.interpolation]
    return image.resize((resized_w, resized_h), resample=resample, box=region, reducing_gap=None)


def pad_to_network(content: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """`resize_content`'s result placed in the network input: centred on `pad_value` for letterbox."""
    if content.size == (spec.width, spec.height):
        return content
    canvas = Image.new("RGB", (spec.width, spec.height), tuple(spec.pad_value or (0, 0, 0)))
    canvas.paste(content, _centre_offset(content.width, content.height, spec))
    return canvas


def resize_to_network(
    image: Image.Image, spec: PreprocessSpec, original_size: tuple[int, int] | None = None
) -> Image.Image:
    """The RGB image resized (and for letterbox, padded) to the network input, as a Pillow image."""
    return pad_to_network(resize_content(image, spec, original_size), spec)


def normalize(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, H, W], (pixel / 255 - mean) / std per channel."""
    scale = (1.0 / (255.0 * np.asarray(spec.std, dtype=np.float64))).astype(np.float32)
    offset = (np.asarray(spec.mean, dtype=np.float64) / np.asarray(spec.std, dtype=np.float64)).astype(
        np.float32
    )
    # Transposing the uint8 pixels first and scaling each channel plane in place is about 10x faster
    # than broadcasting over the last (length-3) axis of an HWC float array, with identical values.
    values = np.ascontiguousarray(np.asarray(pixels).transpose(2, 0, 1)).astype(np.float32)
    values *= scale[:, None, None]
    values -= offset[:, None, None]
    return values


def denormalize(array: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """float32 [3, H, W] network input -> uint8 RGB [H, W, 3] (for pictures and explanations)."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    pixels = (np.asarray(array, dtype=np.float32) * std + mean) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def preprocess(
    image: Image.Image, spec: PreprocessSpec, original_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, Geometry]:
    """An RGB Pillow image -> (network input float32 [3, H, W], its Geometry).

    original_size: (width, height) of the photo file when `image` was decoded at reduced size, so
    that the Geometry maps boxes to the file's pixels; None when `image` is the original.
    """
    geometry = compute_geometry(image.size, spec, original_size)
    pixels = np.asarray(resize_to_network(image, spec, original_size), dtype=np.uint8)
    return normalize(pixels, spec), geometry


def preprocess_batch(
    images: Sequence[Image.Image],
    spec: PreprocessSpec,
    original_sizes: Sequence[tuple[int, int] | None] | None = None,
) -> tuple[np.ndarray, list[Geometry]]:
    """Several images -> (float32 [B, 3, H, W], one Geometry per image)."""
    if original_sizes is not None and len(original_sizes) != len(images):
        raise ValueError(f"preprocess_batch: {len(images)} images but {len(original_sizes)} original sizes")
    sizes = original_sizes if original_sizes is not None else [None] * len(images)
    results = [preprocess(image, spec, size) for image, size in zip(images, sizes, strict=True)]
    if not results:
        return np.zeros((0, 3, spec.height, spec.width), dtype=np.float32), []
    return np.stack([array for array, _ in results]), [geometry for _, geometry in results]


def decode_min_side(spec: PreprocessSpec) -> int:
    """The shortest side a reduced-size decode must keep so no network pixel is upsampled."""
    return max(spec.image_size)


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image decoded (possibly at reduced size) and the size of the photo file it came from.

    original_size: (width, height) of the file after EXIF orientation, the frame boxes are given in.
    """

    image: Image.Image = field(repr=False)
    original_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Decoded pixels per original pixel (x, y)."""
        return decode_scale(self.original_size, self.image.size)

    def boxes_to_decoded(self, boxes: object) -> np.ndarray:
        """Absolute xyxy in original pixels [N, 4] -> absolute xyxy in decoded pixels [N, 4]."""
        scale_x, scale_y = self.scale
        return box_math.scale(boxes, scale_x, scale_y)


def load_image(
    source: Path | bytes,
    spec: PreprocessSpec | None = None,
    name: str | None = None,
    original_size: tuple[int, int] | None = None,
    min_side: int | None = None,
) -> DecodedImage:
    """Decode an image file for a network of `spec`, at reduced size when that is exact enough.

    min_side: the shortest side to keep (default `decode_min_side(spec)`; 0 or no spec = full size).
    original_size: the file's (width, height) as the caller knows it (Sample.width/height). Not
    needed: the decode reads the file's own size from its header, which is what `original_size` of
    the result always is (so a stale annotation or an EXIF rotation cannot mislead it).
    Raises `carid.images.ImageError` naming the file.
    """
    if min_side is None and spec is not None:
        min_side = decode_min_side(spec)
    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    image, size = decode_rgb(source, name=label, min_side=min_side or None)
    return DecodedImage(image=image, original_size=size)


def load_and_preprocess(
    source: Path | bytes, spec: PreprocessSpec, name: str | None = None
) -> tuple[np.ndarray, Geometry]:
    """Read a file (reduced-size decode) and preprocess it: what the predictor does with one photo."""
    decoded = load_image(source, spec, name=name)
    return preprocess(decoded.image, spec, original_size=decoded.original_size)
