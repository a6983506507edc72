"""Samples -> batches: `CarDataset` (one item per image) and `CarDataModule` (the Lightning loaders).

A batch is a dict:
    image     float32 [B, 3, H, W], normalized network input (see `carid.preprocess`)
    label     int64 [B], class index into `classes`; -1 when the sample has no label
    box       float32 [B, 4], the target box as normalized xyxy relative to the network input;
              zeros when the image has no box
    has_box   bool [B]
    index     int64 [B], the sample's position in the SampleTable (or list) the loader was built
              from, so predictions map back to files
    geometry  float64 [B, 8] (deterministic loaders only: val, test, predict, feature): the
              `carid.preprocess.Geometry` of each image as `Geometry.to_array()`, to map predicted
              boxes back to original photo pixels with `Geometry.from_array(row).boxes_to_original`.

One target box per image. The network predicts one box, so an image with several boxes trains on
the largest (after clipping to the photo): for car photos the largest box is "the car" (Stanford,
car-models), in street frames the nearest car, for the Oxford pets the larger head when a photo
shows two. The union box was rejected: for two cars it is a box around neither.

Speed: images are decoded at reduced size (JPEG draft mode, `carid.preprocess.load_image`), keeping
the shorter side >= the network input side; on CPU this is the main lever on epoch time.

Bad images: the data checks exclude unreadable images before training, but a file can still fail
(changed on disk, a decoder edge case). Training and validation loaders log a warning naming the
file and return the next sample in its place, so one file never kills an epoch; test, predict and
feature loaders raise `ImageError` naming the file, because a substitute there would corrupt the
results that are mapped back by index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, Protocol

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from carid import boxes as box_math
from carid.config import AugmentConfig, ResizeStep, TrainConfig
from carid.data.samples import Sample, SampleTable
from carid.images import ImageError, swap_red_blue
from carid.preprocess import PreprocessSpec, compute_geometry, load_image
from carid.preprocess import decode_min_side as network_decode_min_side
from carid.training.balance import Balance, sampling_options
from carid.training.sampling import Key, split_key, trainer_epoch
from carid.training.transforms import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# How many following samples a "skip" dataset tries in place of one that fails to load.
MAX_SUBSTITUTES = 10

LabelOf = Callable[[Sample], str | None]


class ImageTransform(Protocol):
    """A `carid.training.transforms` transform: (RGB image, xyxy boxes) -> (float32 [3,H,W],
    normalized boxes)."""

    spec: PreprocessSpec
    deterministic: bool

    def __call__(
        self, image: Image.Image | np.ndarray, boxes: object, original_size: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def set_seed(self, seed: int | None) -> None: ...


def sample_label(sample: Sample) -> str | None:
    """The default label mapping: the sample's own class."""
    return sample.label


def select_target_box(boxes: object, width: int, height: int) -> np.ndarray | None:
    """The one training box [4] of an image: the largest after clipping to the image, or None.

    boxes: absolute xyxy pixels [N, 4]; width/height: the image size in the same pixels.
    Boxes with no area inside the image are ignored.
    """
    clipped = box_math.clip(boxes, width, height)
    clipped = clipped[box_math.area(clipped) > 0]
    if not len(clipped):
        return None
    return box_math.largest(clipped)


def scheduled_size(schedule: Sequence[ResizeStep], epoch: int) -> int | None:
    """The training photo size of `epoch` under `train.resize_schedule` (None: the run's own)."""
    size = None
    for step in sorted(schedule, key=lambda step: step.epoch):
        if step.epoch <= epoch:
            size = step.size
    return size


def seed_worker_transform(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: give each worker's augmentation its own seed.

    albumentations keeps its own random generators, which forked workers would otherwise share
    (every worker drawing the same augmentations). The worker seed torch derives from the loader's
    generator makes the draws reproducible and different per worker and per epoch.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    dataset = info.dataset
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_seed"):
        transform.set_seed(int(info.seed % 2**32))


class CarDataset(Dataset):
    """Items for a list of samples; see the module docstring for the keys.

    samples: the images; class_index: class name -> index; transform: from `carid.training.transforms`.
    label_of: maps a sample to its class name (e.g. a taxonomy level) or None (unlabeled).
    indices: what each item reports as "index" (default: the position in `samples`).
    decode_min_side: shorter side to keep when decoding (default: the network input side; 0 = full).
    on_error: "skip" (warn and use the next sample) or "raise" (ImageError naming the file).
    swap_rb: exchange red and blue of every decoded image (`DataConfig.swap_rb`: files saved BGR).

    Raises ValueError at construction for a label not in `class_index`, naming the sample.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_index: Mapping[str, int],
        transform: ImageTransform,
        label_of: LabelOf = sample_label,
        indices: Sequence[int] | None = None,
        decode_min_side: int | None = None,
        on_error: Literal["skip", "raise"] = "raise",
        swap_rb: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.swap_rb = swap_rb
        self.transform = transform
        self.indices = list(range(len(self.samples))) if indices is None else [int(i) for i in indices]
        if len(self.indices) != len(self.samples):
            raise ValueError(f"CarDataset: {len(self.samples)} samples but {len(self.indices)} indices")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"CarDataset: on_error must be 'skip' or 'raise', got {on_error!r}")
        self.on_error = on_error
        self.decode_min_side = (
            network_decode_min_side(transform.spec) if decode_min_side is None else decode_min_side
        )
        self.labels = self._label_indices(label_of, class_index)

    def _label_indices(self, label_of: LabelOf, class_index: Mapping[str, int]) -> list[int]:
        labels: list[int] = []
        unknown: list[str] = []
        for sample in self.samples:
            name = label_of(sample)
            if name is None:
                labels.append(-1)
            elif name in class_index:
                labels.append(int(class_index[name]))
            else:
                labels.append(-1)
                unknown.append(f"{sample.source}: {name!r}")
        if unknown:
            shown = "; ".join(unknown[:5]) + (f"; and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise ValueError(f"{len(unknown)} sample(s) have a label that is not one of the classes: {shown}")
        return labels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        """key: a position, or (position, augmentation seed) from `EpochSampler`."""
        position, seed = split_key(key)
        if seed is not None:
            self.transform.set_seed(seed)
        if self.on_error == "raise":
            return self._item(position)
        failures: list[str] = []
        for attempt in range(min(MAX_SUBSTITUTES + 1, len(self.samples))):
            candidate = (position + attempt) % len(self.samples)
            try:
                return self._item(candidate)
            except (ImageError, OSError) as exc:
                failures.append(str(exc))
                log.warning(
                    "%s: cannot load %s (%s); using the next sample in its place",
                    self.samples[candidate].source,
                    self.samples[candidate].path,
                    exc.reason if isinstance(exc, ImageError) else exc,
                )
        raise ImageError(self.samples[position].path, "unreadable_image", "; ".join(failures))

    def _item(self, position: int) -> dict[str, torch.Tensor]:
        sample = self.samples[position]
        known_size = (sample.width, sample.height) if sample.width and sample.height else None
        decoded = load_image(
            sample.path,
            self.transform.spec,
            name=str(sample.path),
            original_size=known_size,
            min_side=self.decode_min_side,
        )
        if self.swap_rb:
            decoded = replace(decoded, image=swap_red_blue(decoded.image))
        original_w, original_h = decoded.original_size
        target = select_target_box(sample.boxes, original_w, original_h)
        if target is None and sample.has_box:
            log.warning(
                "%s: no box lies inside the %dx%d image; used without a box",
                sample.source,
                original_w,
                original_h,
            )
        boxes = np.zeros((0, 4)) if target is None else target[None, :]
        network, network_boxes = self.transform(decoded.image, boxes, original_size=decoded.original_size)
        has_box = len(network_boxes) > 0
        item = {
            "image": torch.from_numpy(network),
            "label": torch.tensor(self.labels[position], dtype=torch.int64),
            "box": torch.from_numpy(
                network_boxes[0].astype(np.float32) if has_box else np.zeros(4, dtype=np.float32)
            ),
            "has_box": torch.tensor(has_box),
            "index": torch.tensor(self.indices[position], dtype=torch.int64),
        }
        if self.transform.deterministic:
            geometry = compute_geometry(decoded.image.size, self.transform.spec, decoded.original_size)
            item["geometry"] = torch.from_numpy(geometry.to_array())
        return item


class CarDataModule(L.LightningDataModule):
    """Train/val/test (and predict, feature) loaders over a SampleTable with splits.

    table: samples with `sample.split` in {"train", "val", "test"} (a saved split); samples with an
        error-level problem in `table.problems` are left out (and counted in the log).
    spec: the preprocessing of the network (saved with the weights).
    classes: class names in index order (default `table.classes`); label_of maps a sample to one
        of them or None (e.g. a taxonomy level for `DataConfig.label_level`).
    augment, train: `AugmentConfig` (train transform) and `TrainConfig` (batch_size, num_workers,
        seed, accelerator; balance "sampler": the train loader draws class-balanced,
        `carid.training.balance`).
    decode_min_side, swap_rb: see `CarDataset`.
    """

    def __init__(
        self,
        table: SampleTable,
        spec: PreprocessSpec,
        classes: Sequence[str] | None = None,
        label_of: LabelOf = sample_label,
        augment: AugmentConfig | None = None,
        train: TrainConfig | None = None,
        decode_min_side: int | None = None,
        swap_rb: bool = False,
    ) -> None:
        super().__init__()
        self.swap_rb = swap_rb
        self.table = table
        self.spec = spec
        self.classes = list(table.classes if classes is None else classes)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("CarDataModule: duplicate class names in classes")
        self.label_of = label_of
        self.augment = augment or AugmentConfig()
        self.train_config = train or TrainConfig()
        self.decode_min_side = decode_min_side
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        self.positions = self._split_positions()
        self._datasets: dict[str, CarDataset] = {}

    def _split_positions(self) -> dict[str, list[int]]:
        excluded = self.table.excluded_paths()
        positions: dict[str, list[int]] = {split: [] for split in SPLITS}
        unsplit, skipped = 0, 0
        for position, sample in enumerate(self.table.samples):
            if str(sample.path) in excluded:
                skipped += 1
            elif sample.split is None:
                unsplit += 1
            elif sample.split in positions:
                positions[sample.split].append(position)
            else:
                raise ValueError(
                    f"{sample.source}: unknown split {sample.split!r} (expected one of {SPLITS})"
                )
        if skipped:
            log.info("%d sample(s) with error-level problems are left out", skipped)
        if unsplit:
            log.warning("%d sample(s) have no split and are not used (save a split first)", unsplit)
        return positions

    def join_val_to_train(self) -> None:
        """Move the val samples into the training set (a final refit, `TrainConfig.fit_on_val`)."""
        self.positions["train"] = sorted(self.positions["train"] + self.positions["val"])
        self.positions["val"] = []
        self._datasets.clear()

    # --- what the model and the training helper need to know ---

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_boxes(self) -> bool:
        """True when any training sample has a box (for `ModelConfig.box_head = "auto"`)."""
        return any(self.table.samples[i].has_box for i in self.positions["train"])

    def train_labels(self) -> list[int]:
        """The class index of every training sample (-1 unlabeled): what class balancing counts."""
        return self.dataset("train", augment=True).labels

    def split_samples(self, split: str) -> list[Sample]:
        return [self.table.samples[i] for i in self._positions_of(split)]

    def _positions_of(self, split: str) -> list[int]:
        if split not in self.positions:
            raise ValueError(f"unknown split {split!r} (expected one of {SPLITS})")
        return self.positions[split]

    def train_spec(self, epoch: int) -> PreprocessSpec:
        """The preprocessing of training epoch `epoch` (0-based): the size of the last
        `train.resize_schedule` step at or before it, else the run's own."""
        size = scheduled_size(self.train_config.resize_schedule, epoch)
        return self.spec if size is None else replace(self.spec, image_size=(size, size))

    def dataset(self, split: str, augment: bool = False, spec: PreprocessSpec | None = None) -> CarDataset:
        """The dataset of a split: the train transform when `augment`, else the eval transform;
        `spec` replaces the run's preprocessing (the sizes of a resize schedule).

        Train and val datasets skip unloadable images (with a warning); test raises.
        """
        spec = spec or self.spec
        key = f"{split}:{'augment' if augment else 'eval'}:{spec.image_size}"
        if key not in self._datasets:
            if augment:
                transform: ImageTransform = build_train_transform(
                    self.augment, spec, seed=self.train_config.seed
                )
            else:
                transform = build_eval_transform(spec)
            on_error: Literal["skip", "raise"] = "skip" if split in ("train", "val") else "raise"
            self._datasets[key] = self._split_dataset(split, transform, on_error)
        return self._datasets[key]

    def _split_dataset(
        self, split: str, transform: ImageTransform, on_error: Literal["skip", "raise"]
    ) -> CarDataset:
        positions = self._positions_of(split)
        if not positions:
            raise ValueError(f"the table has no {split!r} samples")
        return CarDataset(
            [self.table.samples[i] for i in positions],
            self.class_index,
            transform,
            label_of=self.label_of,
            indices=positions,
            decode_min_side=self.decode_min_side,
            on_error=on_error,
            swap_rb=self.swap_rb,
        )

    # --- loaders ---

    @property
    def pin_memory(self) -> bool:
        return torch.cuda.is_available() and self.train_config.accelerator != "cpu"

    def _loader(
        self, dataset: Dataset, shuffle: bool = False, drop_last: bool = False, labels: Sequence[int] = ()
    ) -> DataLoader:
        """shuffle: seeded, or the class-balanced draws of train.balance "sampler" (from `labels`)."""
        workers = self.train_config.num_workers
        options: dict[str, Any] = {}
        if shuffle:
            balance = Balance.from_config(self.train_config)
            options = sampling_options(labels, balance, self.train_config.seed, epoch=trainer_epoch(self))
        return DataLoader(
            dataset,
            batch_size=self.train_config.batch_size,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            worker_init_fn=seed_worker_transform if workers > 0 else None,
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        """Augmented, shuffled with a generator seeded from `TrainConfig.seed` (or drawn class-balanced,
        `train.balance: sampler`); drops a last partial batch. With `train.resize_schedule` the
        photos have the size of the trainer's current epoch (the trainer then reloads this loader
        every epoch)."""
        epoch = trainer_epoch(self)
        spec = self.train_spec(epoch)
        if spec is not self.spec:
            log.info("training epoch %d on photos of %d x %d px", epoch + 1, *spec.image_size)
        dataset = self.dataset("train", augment=True, spec=spec)
        drop_last = len(dataset) > self.train_config.batch_size
        return self._loader(dataset, shuffle=True, drop_last=drop_last, labels=dataset.labels)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))

    def predict_dataloader(self, samples: Sequence[Sample] | None = None) -> DataLoader:
        """Deterministic loader over `samples` ("index" = position in that list), default the test split."""
        if samples is None:
            return self.test_dataloader()
        dataset = CarDataset(
            samples,
            self.class_index,
            build_eval_transform(self.spec),
            label_of=self.label_of,
            decode_min_side=self.decode_min_side,
            on_error="raise",
            swap_rb=self.swap_rb,
        )
        return self._loader(dataset)

    def feature_dataloader(self, split: str) -> DataLoader:
        """No augmentation, table order, nothing substituted: for caching frozen-backbone features."""
        return self._loader(self._split_dataset(split, build_eval_transform(self.spec), on_error="raise"))
