"""Stage cache: train the later stages of a backbone and the heads from cached activations of its
frozen front.

With `train.freeze` at a backbone stage ("blocks.5", or the layer index where a block starts) and
`train.cache_features: true`, the backbone is cut in two at the freeze point (`StageSplit`): the
frozen *front* (stem and the blocks before the freeze point) runs once over the train and val images
(eval mode, no gradients) and its activations [N, C, h, w] are kept, by default as float16 (a 112 x
12 x 12 map of EfficientNet-Lite0's blocks.5 at 192 px is 32 kB per image). Every epoch then runs
only the trainable *back* (the remaining blocks, the head convolution, pooling) and the heads on
those maps, with the same `CarModule` step, loss and metrics. On a CPU the early, high-resolution
layers cost most of a forward pass, so an epoch of the back costs a fraction of a fine-tuning
epoch. The checkpoint is an ordinary full `CarNet` checkpoint (the front untouched, the back and
the heads trained), so evaluation, export and prediction treat it like any other.

The cut is found, not declared per backbone: the backbone's children in order (Sequentials of blocks
opened two levels deep, "blocks.5.0"), without its pooling and classifier, must compose to exactly
its `forward_features` (checked on a probe image when the split is built; a backbone whose
`forward_features` is not its children run in order, e.g. MobileNetV3, whose head convolution
comes after pooling, is refused with a message). The freeze point must be where one of those steps
starts; a layer inside a block cannot be cut at and is refused, naming the blocks around it.

Augmentation, since the cached maps are fixed: `train.cache_augment_passes` adds K passes of the
train images through the run's seeded train transform (each costs a front pass over the train
images); `train.cache_map_hflip` mirrors a cached map (and its box) per training sample, which is
free; `train.cache_map_crop: m` caches the train images m map cells larger (image_size + m x the
stage's stride pixels) and each training sample reads a random window of the normal size (val is
cached at the normal size, as prediction sees it). A mirrored map is not the map of the mirrored
image (the convolutions are not symmetric), only a cheap stand-in; what helps is measured in
benchmarks/RESULTS.md. `train.cache_frozen_norm` keeps the BatchNorm layers of the trained stages on
their running statistics (eval mode) instead of batch statistics.

Cache: `{cache_dir}/stage-{key}.pt` (torch.save of plain tensors, loaded with weights_only=True),
written atomically, keyed by a sha256 of the front's weights, the cut point, the preprocessing, every
sample (`features.samples_fingerprint`), the storage dtype, the crop margin and the augmentation
passes (with their settings and seed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from carid.artifacts.checkpoint import ModelMetadata
from carid.config import ConfigError, TrainConfig
from carid.files import write_atomic
from carid.models.backbones import Backbone
from carid.models.network import CarNet
from carid.training.balance import Balance, sampling_options
from carid.training.datamodule import CarDataModule
from carid.training.features import augmented_loader, samples_fingerprint
from carid.training.module import CarModule
from carid.training.sampling import Key, split_key, trainer_epoch
from carid.training.stage_front import ACTIVATION, FrontRunner, extract_activations

log = logging.getLogger(__name__)

STAGE_CACHE_VERSION = 1
# children of a timm model that are not part of forward_features (pooling and classifier)
HEAD_CHILDREN = frozenset({"global_pool", "classifier", "head", "fc", "head_drop", "flatten", "pre_logits"})
# how far the composed front + back may differ from forward_features on the probe image
PROBE_TOLERANCE = 1e-4


class StageCacheError(ConfigError):
    """The backbone cannot be cut at the requested freeze point."""


def is_stage_freeze(freeze: str | int) -> bool:
    """True when `train.freeze` names a backbone stage or layer (not "none"/0 or "backbone")."""
    if isinstance(freeze, bool):
        return False
    if isinstance(freeze, int):
        return freeze != 0
    return freeze.strip().lower() not in {"", "none", "all", "0", "backbone"}


def backbone_steps(backbone: Backbone) -> list[tuple[str, nn.Module]]:
    """(dotted name, module) of the backbone's children in order, Sequentials opened two levels deep,
    pooling and classifier left out: the steps `forward_features` chains (checked by `StageSplit`)."""
    steps: list[tuple[str, nn.Module]] = []
    for name, child in backbone.model.named_children():
        if name in HEAD_CHILDREN:
            continue
        if not isinstance(child, nn.Sequential):
            steps.append((name, child))
            continue
        for sub, grandchild in child.named_children():
            if isinstance(grandchild, nn.Sequential):
                steps.extend((f"{name}.{sub}.{leaf}", module) for leaf, module in grandchild.named_children())
            else:
                steps.append((f"{name}.{sub}", grandchild))
    return steps


class StageSplit:
    """A backbone cut at a freeze point: `front(images)` -> activation, `back(activation)` -> the
    `forward_features` map. The modules are the backbone's own (training the back trains the network).

    steps: every (name, module) step; cut: index of the first step of the back; stage: its name.
    """

    def __init__(self, backbone: Backbone, steps: Sequence[tuple[str, nn.Module]], cut: int) -> None:
        if not 0 < cut < len(steps):
            raise StageCacheError(f"stage cut {cut} is outside the backbone's {len(steps)} steps")
        self.backbone = backbone
        self.steps = tuple(steps)
        self.cut = cut
        self.stage = self.steps[cut][0]

    @classmethod
    def at(cls, backbone: Backbone, freeze: str | int, probe_size: tuple[int, int] = (64, 64)) -> StageSplit:
        """Cut `backbone` where `freeze` (as `Backbone.layer_index` reads it) starts; StageCacheError
        when that is inside a step or the steps do not compose to `forward_features`."""
        layers = [name for name, _ in backbone.layers()]
        first = backbone.layer_index(freeze)
        steps = backbone_steps(backbone)
        starts: list[int | None] = []
        for name, _ in steps:
            inside = [i for i, layer in enumerate(layers) if layer == name or layer.startswith(name + ".")]
            starts.append(inside[0] if inside else None)
        cut = next((k for k, start in enumerate(starts) if start == first), None)
        if cut is None:
            before = [steps[k][0] for k, s in enumerate(starts) if s is not None and s < first]
            after = [steps[k][0] for k, s in enumerate(starts) if s is not None and s > first]
            around = " or ".join(repr(name) for name in (before[-1:] + after[:1]))
            raise StageCacheError(
                f"train.freeze {freeze!r} ({layers[first]}) is inside a block of {backbone.name}; the "
                f"stage cache cuts between blocks: use {around or 'a block name'}"
            )
        if cut == 0:
            raise StageCacheError(
                f"train.freeze {freeze!r} freezes nothing; use train.freeze: none without cache_features"
            )
        split = cls(backbone, steps, cut)
        split.check(probe_size)
        return split

    def front(self, images: Tensor) -> Tensor:
        for _, module in self.steps[: self.cut]:
            images = module(images)
        return images

    def back(self, activation: Tensor) -> Tensor:
        for _, module in self.steps[self.cut :]:
            activation = module(activation)
        return activation

    def front_modules(self) -> list[nn.Module]:
        return [module for _, module in self.steps[: self.cut]]

    def back_norms(self) -> list[_BatchNorm]:
        """The BatchNorm layers of the trained stages."""
        return [m for _, step in self.steps[self.cut :] for m in step.modules() if isinstance(m, _BatchNorm)]

    def fingerprint(self) -> str:
        """sha256 (hex) of the backbone's name, the cut and every tensor of the front's state."""
        digest = hashlib.sha256(f"{self.backbone.name}|{self.stage}|{self.cut}".encode())
        for number, module in enumerate(self.front_modules()):
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(f"{number}.{name}{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def check(self, size: tuple[int, int]) -> None:
        """The front and back composed give `forward_features` on a probe image (eval mode)."""
        was_training = self.backbone.training
        parameter = next(self.backbone.parameters())
        probe = torch.randn(
            2, 3, *size, generator=torch.Generator().manual_seed(0), dtype=parameter.dtype
        ).to(parameter.device)
        self.backbone.eval()
        try:
            with torch.no_grad():
                expected = self.backbone.forward_features(probe)
                composed = self.back(self.front(probe))
        finally:
            self.backbone.train(was_training)
        if composed.shape != expected.shape or not torch.allclose(
            composed, expected, atol=PROBE_TOLERANCE, rtol=PROBE_TOLERANCE
        ):
            raise StageCacheError(
                f"backbone {self.backbone.name} is not a plain chain of its blocks (its forward_features "
                "differs from its children run in order), so it cannot be cut for the stage cache; use "
                "train.freeze: backbone or train.cache_features: false"
            )


@dataclass(frozen=True)
class StageCache:
    """Where the cached activations are and whether this run computed or reused them.

    stage: the first trained step ("blocks.5.0"); counts: rows per split (train rows = images x
    (1 + augment_passes)); activation: [C, h, w] of a val row (what the back gets); train_activation:
    of a train row (larger by the crop margin); megabytes: size of all cached tensors.
    """

    path: Path
    key: str
    hit: bool
    seconds: float
    stage: str
    counts: dict[str, int] = field(default_factory=dict)
    activation: tuple[int, ...] = ()
    train_activation: tuple[int, ...] = ()
    dtype: str = "float16"
    augment_passes: int = 0
    megabytes: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            path=str(self.path),
            seconds=round(self.seconds, 3),
            activation=list(self.activation),
            train_activation=list(self.train_activation),
            megabytes=round(self.megabytes, 1),
            kind="stage",
        )
        return data


def stage_cache_key(
    split: StageSplit,
    datamodule: CarDataModule,
    splits: Sequence[str],
    augment_passes: int = 0,
    seed: int = 0,
    crop: int = 0,
    dtype: torch.dtype = torch.float16,
) -> str:
    """The cache key (sha256 hex) of the activations of `splits`; see the module docstring."""
    parts: dict[str, Any] = {
        "version": STAGE_CACHE_VERSION,
        "front": split.fingerprint(),
        "preprocess": datamodule.spec.to_dict(),
        "decode_min_side": datamodule.decode_min_side,
        "splits": {name: samples_fingerprint(datamodule.dataset(name)) for name in splits},
        "augment_passes": augment_passes,
        "crop": crop,
        "dtype": str(dtype),
    }
    if augment_passes:
        parts["augment"] = asdict(datamodule.augment)
        parts["seed"] = seed
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _enlarged(datamodule: CarDataModule, pixels: int) -> CarDataModule:
    """The same samples and splits with a network input `pixels` larger on each side."""
    height, width = datamodule.spec.image_size
    larger = CarDataModule(
        datamodule.table,
        replace(datamodule.spec, image_size=(height + pixels, width + pixels)),
        classes=datamodule.classes,
        label_of=datamodule.label_of,
        augment=datamodule.augment,
        train=datamodule.train_config,
        decode_min_side=datamodule.decode_min_side,
        swap_rb=datamodule.swap_rb,
    )
    larger.positions = {name: list(positions) for name, positions in datamodule.positions.items()}
    return larger


def _stride(split: StageSplit, datamodule: CarDataModule) -> int:
    """Input pixels per cell of the activation at the cut (probe pass at the run's image size)."""
    parameter = next(split.backbone.parameters())
    was_training = split.backbone.training
    split.backbone.eval()
    try:
        with torch.no_grad():
            probe = torch.zeros(1, 3, *datamodule.spec.image_size, device=parameter.device)
            width = split.front(probe).shape[-1]
    finally:
        split.backbone.train(was_training)
    return max(1, round(datamodule.spec.image_size[1] / width))


def _load(path: Path, key: str) -> dict[str, dict[str, Tensor]] | None:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    if stored.get("version") != STAGE_CACHE_VERSION:
        return None
    return stored["splits"]


def build_stage_cache(
    split: StageSplit,
    datamodule: CarDataModule,
    cache_dir: Path,
    splits: Sequence[str] = ("train", "val"),
    augment_passes: int = 0,
    seed: int = 0,
    crop: int = 0,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    progress: bool = True,
) -> tuple[dict[str, dict[str, Tensor]], StageCache]:
    """The activations at the cut of `splits` (those with samples), from the cache or computed.

    Train rows: the eval-transformed images, then `augment_passes` seeded augmented passes, all
    `crop` cells larger than the val rows. Returns ({split: {"activation", "label", "box",
    "has_box", "index"}}, StageCache).
    """
    started = time.perf_counter()
    present = [name for name in splits if datamodule.positions.get(name)]
    key = stage_cache_key(split, datamodule, present, augment_passes, seed, crop, dtype)
    path = Path(cache_dir) / f"stage-{key[:24]}.pt"
    cached = _load(path, key) if path.exists() else None
    hit = cached is not None
    if cached is None:
        cached = {}
        larger = _enlarged(datamodule, crop * _stride(split, datamodule)) if crop else datamodule
        options: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "channels_last": channels_last,
            "front": FrontRunner(split),
        }
        for name in present:
            source = larger if name == "train" else datamodule
            loader = source.feature_dataloader(name)
            parts = [extract_activations(split, loader, progress=progress, description=name, **options)]
            if name == "train":
                for number in range(augment_passes):
                    loader = augmented_loader(source, seed + 1 + number)
                    described = {"progress": progress, "description": f"augmented {number + 1}"}
                    parts.append(extract_activations(split, loader, **described, **options))
            cached[name] = {column: torch.cat([part[column] for part in parts]) for column in parts[0]}
        payload = {"version": STAGE_CACHE_VERSION, "key": key, "splits": cached}
        write_atomic(path, lambda stream: torch.save(payload, stream))
    shapes = {name: tuple(tensors[ACTIVATION].shape[1:]) for name, tensors in cached.items()}
    train_shape = shapes.get("train", ())
    info = StageCache(
        path=path,
        key=key,
        hit=hit,
        seconds=time.perf_counter() - started,
        stage=split.stage,
        counts={name: int(tensors[ACTIVATION].shape[0]) for name, tensors in cached.items()},
        activation=shapes.get("val", (*train_shape[:1], *(s - crop for s in train_shape[1:]))),
        train_activation=train_shape,
        dtype=str(dtype).removeprefix("torch."),
        augment_passes=augment_passes,
        megabytes=sum(t.numel() * t.element_size() for s in cached.values() for t in s.values()) / 2**20,
    )
    return cached, info


@dataclass(frozen=True)
class MapAugment:
    """Augmentation of one cached activation [C, H, W] and its box (normalized xyxy).

    hflip: probability of mirroring left-right. crop: the stored map is `crop` cells larger than
    the network's; a window of the normal size is read at a uniformly random offset.
    """

    hflip: float = 0.0
    crop: int = 0

    def __call__(
        self, activation: Tensor, box: Tensor, has_box: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        if self.crop:
            full_h, full_w = activation.shape[-2:]
            height, width = full_h - self.crop, full_w - self.crop
            top, left = (int(v) for v in torch.randint(0, self.crop + 1, (2,), generator=generator))
            activation = activation[..., top : top + height, left : left + width]
            scale = torch.tensor([full_w / width, full_h / height] * 2, dtype=box.dtype)
            shift = torch.tensor([left / width, top / height] * 2, dtype=box.dtype)
            box = (box * scale - shift).clamp(0.0, 1.0)
            has_box = has_box & bool(box[2] > box[0]) & bool(box[3] > box[1])
        if self.hflip and float(torch.rand((), generator=generator)) < self.hflip:
            activation = activation.flip(-1)
            box = torch.stack([1.0 - box[2], box[1], 1.0 - box[0], box[3]])
        return activation, box, has_box


class StageDataset(Dataset):
    """Rows of cached activations as batch dicts ("activation" instead of "image"), augmented per
    row by `augment` with a generator seeded from `seed` (none: rows as stored)."""

    def __init__(self, tensors: Mapping[str, Tensor], augment: MapAugment | None = None, seed: int = 0):
        self.tensors = dict(tensors)
        self.length = int(self.tensors[ACTIVATION].shape[0])
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: Key) -> dict[str, Tensor]:
        """key: a position, or (position, augmentation seed) from `EpochSampler`."""
        position, seed = split_key(key)
        row = {name: values[position] for name, values in self.tensors.items()}
        if self.augment is not None:
            generator = self.generator if seed is None else torch.Generator().manual_seed(seed)
            row[ACTIVATION], row["box"], row["has_box"] = self.augment(
                row[ACTIVATION], row["box"], row["has_box"], generator
            )
        return row


class StageDataModule(L.LightningDataModule):
    """Train/val loaders over cached activations; the train loader is shuffled with a seeded generator
    (or draws class-balanced rows, `balance` mode "sampler") and its rows augmented by `augment`."""

    def __init__(
        self,
        cached: Mapping[str, Mapping[str, Tensor]],
        batch_size: int,
        augment: MapAugment | None = None,
        seed: int = 0,
        balance: Balance | None = None,
    ) -> None:
        super().__init__()
        if "train" not in cached:
            raise ValueError("the stage cache has no train split")
        self.cached = dict(cached)
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.balance = balance

    def train_dataloader(self) -> DataLoader:
        dataset = StageDataset(self.cached["train"], self.augment, self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            drop_last=len(dataset) > self.batch_size,
            **sampling_options(
                self.cached["train"]["label"], self.balance, self.seed, epoch=trainer_epoch(self)
            ),
        )

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.cached:
            return []
        return DataLoader(StageDataset(self.cached["val"]), batch_size=self.batch_size)


class StageCacheModule(CarModule):
    """A `CarModule` whose train and val batches may be cached activations: the back of `split`
    turns them into the feature map and embeddings, then the usual step runs. Image batches (test,
    predict) go through the whole network. Same state dict as `CarModule`: an ordinary checkpoint."""

    def __init__(
        self, network: CarNet, train: TrainConfig, metadata: ModelMetadata, split: StageSplit
    ) -> None:
        super().__init__(network, train, metadata)
        self.split = split  # not a Module: its modules are the network's own
        self.frozen_norm = train.cache_frozen_norm

    def expand(self, batch: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """A batch of activations -> a batch of "features" and "feature_map" (with gradients)."""
        if ACTIVATION not in batch:
            return batch
        activation = batch[ACTIVATION].float()
        if self.train_config.channels_last:
            activation = activation.contiguous(memory_format=torch.channels_last)
        feature_map = self.split.back(activation)
        rest = {name: value for name, value in batch.items() if name != ACTIVATION}
        return {**rest, "features": self.network.backbone.pool(feature_map), "feature_map": feature_map}

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        if self.frozen_norm:
            for norm in self.split.back_norms():
                norm.eval()
        return self._shared_step(self.expand(self.mixed(batch)), "train")

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(self.expand(batch), "val")

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int):
        return self.forward_batch(self.expand(batch))


def build_stage_training(
    module: CarModule,
    datamodule: CarDataModule,
    train: TrainConfig,
    cache_dir: Path,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[StageCacheModule, StageDataModule, StageCache]:
    """What `carid.training.fit.train` runs with a stage freeze and cache_features: the module's
    network cut at `train.freeze`, its activations cached, a `StageCacheModule` and its loaders."""
    network = module.network
    if network.box_reads_detail:
        raise StageCacheError(
            "the stage cache does not cache the finer map a refined box head samples "
            "(model.box_refine_stride); set model.box_refine_stride: 0 or train.cache_features: false"
        )
    if train.cache_map_crop < 0 or not 0.0 <= train.cache_map_hflip <= 1.0:
        raise ConfigError("train.cache_map_crop must be >= 0 and train.cache_map_hflip within [0, 1]")
    network.apply_freeze(train.freeze)
    split = StageSplit.at(network.backbone, train.freeze, probe_size=datamodule.spec.image_size)
    cached, info = build_stage_cache(
        split,
        datamodule,
        cache_dir,
        augment_passes=train.cache_augment_passes,
        seed=train.seed,
        crop=train.cache_map_crop,
        device=device,
        channels_last=train.channels_last,
        progress=progress,
    )
    augment = MapAugment(hflip=train.cache_map_hflip, crop=train.cache_map_crop)
    stage_module = StageCacheModule(network, train, module.metadata, split)
    balance = Balance.from_config(train)
    data = StageDataModule(cached, train.batch_size, augment=augment, seed=train.seed, balance=balance)
    return stage_module, data, info
