"""Samples -> detection batches: every box of a photo, letterboxed into the detector's input.

`DetectionDataset` gives one item per image: its network input (carid's letterbox + normalization,
`carid.preprocess`, the very path the runtime takes) and all its boxes in network-input pixels.
Images without a box are kept: they are the negatives that teach the detector what is not a car.
`DetectionDataModule` makes the train / val / test loaders of a split SampleTable (any boxed format
carid reads). A batch is a dict:

    image     float32 [B, 3, H, W], letterboxed, normalized network inputs
    boxes     list of B float32 [N_i, 4]: xyxy network-input pixels (N_i >= 0)
    index     int64 [B], each sample's position in the table, so detections map back to files
    geometry  float64 [B, 8] (val / test only): `carid.preprocess.Geometry.to_array()` of each image,
              to map boxes back to photo pixels with `Geometry.from_array(row).boxes_to_original`

Augmentation is carid's box-aware `TrainTransform` (albumentations: a random crop that keeps every
box whole, horizontal flip, colour jitter, blur, grey) driven by the detect section's switches; it
resizes, pads and normalizes with the functions `preprocess` is made of, so a training input is a
letterboxed photo exactly as the ONNX runtime builds it.

Bad boxes: a box partly outside its photo is clipped to it; a box that is not finite, inverted,
thinner than `MIN_BOX_EXTENT` pixels or entirely outside the photo is dropped, with a warning
naming the sample and the box (the data checks report such boxes before training; this guards
tables built in code or edited split files). In training, boxes smaller than `detect.min_box_side`
network pixels after augmentation are left out too, so the network is not taught to find what the
post-processing discards.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from carid import boxes as box_math
from carid.config import AugmentConfig, DetectConfig, TrainConfig
from carid.data.samples import Sample, SampleTable
from carid.images import ImageError
from carid.preprocess import PreprocessSpec, compute_geometry, load_image
from carid.training.balance import sampling_options
from carid.training.datamodule import SPLITS, seed_worker_transform
from carid.training.sampling import Key, split_key, trainer_epoch
from carid.training.transforms import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)

MIN_BOX_EXTENT = 1.0  # photo pixels: a thinner box is no box
MAX_SUBSTITUTES = 10  # following samples a training / val dataset tries in place of an unreadable one


def detection_augment(detect: DetectConfig) -> AugmentConfig:
    """The `AugmentConfig` carid's `TrainTransform` takes, from the detect section's switches:
    letterbox always, no rotation and no vertical flips (cars stand on a road)."""
    return AugmentConfig(
        enabled=detect.augment,
        resize_mode="letterbox",
        hflip=detect.hflip,
        scale=detect.scale,
        rotate=0.0,
        vflip=0.0,
        rotate90=0.0,
        color_jitter=detect.color_jitter,
        blur=detect.blur,
        grayscale=detect.grayscale,
    )


def usable_boxes(sample: Sample, width: int, height: int) -> np.ndarray:
    """The sample's boxes [N, 4] clipped to its width x height photo; unusable ones dropped with a
    warning that names the sample and each dropped box (see the module docstring)."""
    boxes = box_math.as_boxes(sample.boxes)
    if not len(boxes):
        return boxes
    finite = np.all(np.isfinite(boxes), axis=1)
    clipped = box_math.clip(np.where(finite[:, None], boxes, 0.0), width, height)
    keep = finite & ~box_math.is_degenerate(clipped, min_size=MIN_BOX_EXTENT)
    if not keep.all():
        dropped = "; ".join(f"{[round(float(v), 1) for v in box]}" for box in boxes[~keep][:5]) + (
            "; ..." if int((~keep).sum()) > 5 else ""
        )
        log.warning(
            "%s: %d of %d box(es) left out: not finite, degenerate (under %g px) or outside the %dx%d "
            "photo: %s",
            sample.source,
            int((~keep).sum()),
            len(boxes),
            MIN_BOX_EXTENT,
            width,
            height,
            dropped,
        )
    return clipped[keep]


def collate_detection(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items -> a batch (see the module docstring): images stacked, boxes kept as a list."""
    batch: dict[str, Any] = {
        "image": torch.stack([item["image"] for item in items]),
        "boxes": [item["boxes"] for item in items],
        "index": torch.stack([item["index"] for item in items]),
    }
    if all("geometry" in item for item in items):
        batch["geometry"] = torch.stack([item["geometry"] for item in items])
    return batch


class DetectionDataset(Dataset):
    """One item per sample: {"image", "boxes", "index" (, "geometry")}; see the module docstring.

    transform: a `carid.training.transforms` transform whose spec letterboxes (network boxes come
        back normalized and are scaled to network pixels here).
    min_box_side: in augmented (training) items, boxes smaller than this many network pixels are
        left out; 0 keeps all.
    on_error: "skip" (warn, use the next sample) or "raise" (ImageError naming the file).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Any,
        indices: Sequence[int] | None = None,
        min_box_side: float = 0.0,
        on_error: Literal["skip", "raise"] = "raise",
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.indices = list(range(len(self.samples))) if indices is None else [int(i) for i in indices]
        if len(self.indices) != len(self.samples):
            raise ValueError(f"DetectionDataset: {len(self.samples)} samples but {len(self.indices)} indices")
        self.min_box_side = float(min_box_side)
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        """key: a position, or (position, augmentation seed) from `EpochSampler`."""
        position, seed = split_key(key)
        if seed is not None and hasattr(self.transform, "set_seed"):
            self.transform.set_seed(seed)
        if self.on_error == "raise":
            return self._item(position)
        for attempt in range(min(MAX_SUBSTITUTES + 1, len(self.samples))):
            candidate = (position + attempt) % len(self.samples)
            try:
                return self._item(candidate)
            except (ImageError, OSError) as exc:
                log.warning(
                    "%s: cannot load %s (%s); using the next sample in its place",
                    self.samples[candidate].source,
                    self.samples[candidate].path,
                    exc,
                )
        raise ImageError(self.samples[position].path, "unreadable_image", "no readable sample nearby")

    def _item(self, position: int) -> dict[str, torch.Tensor]:
        sample = self.samples[position]
        spec: PreprocessSpec = self.transform.spec
        decoded = load_image(sample.path, spec, name=str(sample.path))
        width, height = decoded.original_size
        boxes = usable_boxes(sample, width, height)
        network, normalized = self.transform(decoded.image, boxes, original_size=decoded.original_size)
        pixels = box_math.clip(box_math.scale(normalized, spec.width, spec.height), spec.width, spec.height)
        if not self.transform.deterministic and self.min_box_side > 0:
            pixels = pixels[~box_math.is_degenerate(pixels, min_size=self.min_box_side)]
        item = {
            "image": torch.from_numpy(network),
            "boxes": torch.from_numpy(pixels.astype(np.float32)).reshape(-1, 4),
            "index": torch.tensor(self.indices[position], dtype=torch.int64),
        }
        if self.transform.deterministic:
            geometry = compute_geometry(decoded.image.size, spec, decoded.original_size)
            item["geometry"] = torch.from_numpy(geometry.to_array())
        return item


class DetectionDataModule(L.LightningDataModule):
    """Train / val / test detection loaders over a SampleTable with splits.

    table: samples with `split` in {"train", "val", "test"}; samples with an error-level problem in
        `table.problems` are left out. Samples without boxes are kept (negatives).
    spec: the detector's letterbox (`DetectorNet.preprocess_spec`).
    detect: augmentation switches and min_box_side; train: batch_size, num_workers, seed.
    """

    def __init__(
        self, table: SampleTable, spec: PreprocessSpec, detect: DetectConfig, train: TrainConfig
    ) -> None:
        super().__init__()
        if spec.resize_mode != "letterbox":
            raise ValueError(
                f"DetectionDataModule: the detector letterboxes; got resize_mode {spec.resize_mode!r}"
            )
        self.table = table
        self.spec = spec
        self.detect = detect
        self.train_config = train
        self.positions = self._split_positions()
        self._datasets: dict[str, DetectionDataset] = {}

    def _split_positions(self) -> dict[str, list[int]]:
        excluded = self.table.excluded_paths()
        positions: dict[str, list[int]] = {split: [] for split in SPLITS}
        for position, sample in enumerate(self.table.samples):
            if str(sample.path) in excluded or sample.split is None:
                continue
            if sample.split not in positions:
                raise ValueError(
                    f"{sample.source}: unknown split {sample.split!r} (expected one of {SPLITS})"
                )
            positions[sample.split].append(position)
        return positions

    def join_val_to_train(self) -> None:
        """Move the val samples into the training set (`TrainConfig.fit_on_val`)."""
        self.positions["train"] = sorted(self.positions["train"] + self.positions["val"])
        self.positions["val"] = []
        self._datasets.clear()

    def split_samples(self, split: str) -> list[Sample]:
        return [self.table.samples[i] for i in self.positions[split]]

    def dataset(self, split: str, augment: bool = False) -> DetectionDataset:
        """The split's dataset: augmented (train transform) or not; train / val skip unreadable images."""
        key = f"{split}:{'augment' if augment else 'eval'}"
        if key not in self._datasets:
            positions = self.positions[split]
            if not positions:
                raise ValueError(f"the table has no {split!r} samples")
            transform = (
                build_train_transform(detection_augment(self.detect), self.spec, seed=self.train_config.seed)
                if augment
                else build_eval_transform(self.spec)
            )
            self._datasets[key] = DetectionDataset(
                [self.table.samples[i] for i in positions],
                transform,
                indices=positions,
                min_box_side=self.detect.min_box_side,
                on_error="skip" if split in ("train", "val") else "raise",
            )
        return self._datasets[key]

    def _loader(self, dataset: Dataset, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        workers = self.train_config.num_workers
        # shuffled: an order and augmentations seeded by (train.seed, epoch), also after a resume
        seed = self.train_config.seed
        options = (
            sampling_options(None, None, seed, size=len(dataset), epoch=trainer_epoch(self))
            if shuffle
            else {}
        )  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.train_config.batch_size,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker_transform if workers > 0 else None,
            collate_fn=collate_detection,
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        """Augmented, shuffled (seeded by `train.seed`); drops a last partial batch when there is more."""
        dataset = self.dataset("train", augment=True)
        return self._loader(dataset, shuffle=True, drop_last=len(dataset) > self.train_config.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))
