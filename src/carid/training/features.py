"""Frozen-backbone feature cache: run the backbone once, then train the heads from its embeddings.

With `train.freeze: backbone` and `train.cache_features: true` the backbone never changes, so its
pooled embeddings ([N, D], `CarNet.encode`) of every train and val image are computed once and
saved; every epoch then runs only the heads (`CarNet.forward_heads`) on those tensors with the same
`CarModule` step, loss and metrics: epochs take seconds instead of minutes on CPU. When the box head
reads the feature map (`model.box_input: map`) the maps [N, C, h, w] are cached too ("feature_map");
they are h * w times larger than the embeddings (49x for a 7x7 map: about 250 kB per image for
EfficientNet-Lite0 at 224 px), which is what `FeatureCache.megabytes` reports. The checkpoint is
an ordinary full `CarNet` checkpoint (the untouched backbone plus the trained heads), so it
predicts like any other.

No augmentation by default: the cached embeddings are of the evaluation transform (the predictor's
preprocessing), so the heads see each training image exactly one way. That is the price of the
speed; `augment_passes=K` adds K augmented embeddings per training image (computed once too, with
the run's seeded train transform), a fixed sample of augmentations rather than fresh ones per epoch.

Cache: `{cache_dir}/{key}.pt` (torch.save of plain tensors, loaded with weights_only=True), written
atomically. The key is a sha256 of everything the embeddings depend on: the backbone's name and
weights (a hash of its state dict), the preprocessing spec (image size, resize mode, mean/std),
every sample's path, file size and modification time, label and box, whether maps are cached, and
the augmentation passes (with their settings and seed). Anything else changed gives a new key; a
second run with the same key loads the file (a cache hit) instead of running the backbone.

With `train.freeze` at a backbone stage instead of "backbone", the cache holds the activations of the
frozen front at that stage and the later stages train too: `carid.training.stage_cache`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from carid.files import write_atomic
from carid.models.network import CarNet
from carid.training.balance import Balance, sampling_options
from carid.training.console import tracked
from carid.training.datamodule import CarDataModule, CarDataset, seed_worker_transform
from carid.training.sampling import Key, split_key, trainer_epoch

CACHE_VERSION = 1
FIELDS = ("features", "label", "box", "has_box", "index")
MAP_FIELD = "feature_map"
DETAIL_FIELD = "detail_map"  # the finer map a refined box head samples (model.box_refine_stride)


@dataclass(frozen=True)
class FeatureCache:
    """Where the cached embeddings are and whether this run computed or reused them.

    counts: rows per split (train rows = images x (1 + augment_passes)).
    seconds: time spent computing (miss) or loading (hit).
    feature_map: shape [C, h, w] of the cached maps per row, or None when no maps are cached.
    megabytes: size of all cached tensors.
    """

    path: Path
    key: str
    hit: bool
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    feature_dim: int = 0
    augment_passes: int = 0
    feature_map: tuple[int, ...] | None = None
    megabytes: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "key": self.key,
            "hit": self.hit,
            "seconds": round(self.seconds, 3),
            "counts": dict(self.counts),
            "feature_dim": self.feature_dim,
            "augment_passes": self.augment_passes,
            "feature_map": None if self.feature_map is None else list(self.feature_map),
            "megabytes": round(self.megabytes, 1),
        }


def backbone_fingerprint(network: CarNet) -> str:
    """sha256 (hex) of the backbone's name and every tensor of its state dict (weights and buffers)."""
    digest = hashlib.sha256(str(getattr(network.backbone, "name", type(network.backbone).__name__)).encode())
    for name, tensor in sorted(network.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def samples_fingerprint(dataset: CarDataset) -> str:
    """sha256 (hex) of every sample's path, file size and modification time, label and boxes."""
    digest = hashlib.sha256()
    for sample, label in zip(dataset.samples, dataset.labels, strict=True):
        try:
            stat = os.stat(sample.path)
            file_id = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            file_id = "missing"
        boxes = json.dumps([[round(float(v), 3) for v in box] for box in sample.boxes])
        digest.update(f"{sample.path}|{file_id}|{label}|{boxes}\n".encode())
    if getattr(dataset, "swap_rb", False):  # only then, so that existing cache keys stay valid
        digest.update(b"swap_rb\n")
    return digest.hexdigest()


def cache_key(
    network: CarNet,
    datamodule: CarDataModule,
    splits: Sequence[str],
    augment_passes: int = 0,
    seed: int = 0,
) -> str:
    """The cache key (sha256 hex) of the embeddings of `splits`; see the module docstring."""
    parts: dict[str, Any] = {
        "version": CACHE_VERSION,
        "backbone": backbone_fingerprint(network),
        "preprocess": datamodule.spec.to_dict(),
        "decode_min_side": datamodule.decode_min_side,
        "splits": {split: samples_fingerprint(datamodule.dataset(split)) for split in splits},
        "augment_passes": augment_passes,
        "feature_map": network.box_reads_feature_map,
    }
    if network.box_reads_detail:  # only then, so that existing cache keys stay valid
        parts["detail_map"] = network.detail_index
    if augment_passes:
        parts["augment"] = asdict(datamodule.augment)
        parts["seed"] = seed
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@torch.inference_mode()
def extract_features(
    network: CarNet,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "features",
) -> dict[str, Tensor]:
    """Run the backbone (eval mode) over a loader: {"features" [N, D] float32, "label" [N], "box" [N, 4],
    "has_box" [N], "index" [N]} on the CPU, in loader order, plus "feature_map" [N, C, h, w] float32
    when the network's box head reads the map, and "detail_map" when it reads a finer one."""
    was_training = network.training
    network.eval().to(device)
    with_map = network.box_reads_feature_map
    with_detail = network.box_reads_detail
    names = (*FIELDS, *((MAP_FIELD,) if with_map else ()), *((DETAIL_FIELD,) if with_detail else ()))
    collected: dict[str, list[Tensor]] = {name: [] for name in names}
    batches: Any = loader
    if progress:  # a bar on a terminal, plain lines in a log file
        batches = tracked(loader, total=len(loader), description=description)
    try:
        for batch in batches:
            encoded = network.encode(batch["image"].to(device))
            collected["features"].append(encoded.embeddings.float().cpu())
            if with_map:
                collected[MAP_FIELD].append(encoded.feature_map.float().cpu().contiguous())
            if with_detail:
                assert encoded.detail is not None
                collected[DETAIL_FIELD].append(encoded.detail.float().cpu().contiguous())
            for name in FIELDS[1:]:
                collected[name].append(batch[name].cpu())
    finally:
        network.train(was_training)
    if not collected["features"]:
        raise ValueError(f"{description}: the loader yielded no images")
    return {name: torch.cat(values) for name, values in collected.items()}


def augmented_loader(datamodule: CarDataModule, seed: int) -> DataLoader:
    """The train images through the run's train transform, in table order, seeded: the same seed
    draws the same augmentations (one pass of `augment_passes`)."""
    dataset = datamodule.dataset("train", augment=True)
    dataset.transform.set_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    workers = datamodule.train_config.num_workers
    return DataLoader(
        dataset,
        batch_size=datamodule.train_config.batch_size,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=seed_worker_transform if workers > 0 else None,
        generator=generator,
    )


def _concat(parts: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _load(path: Path, key: str) -> dict[str, dict[str, Tensor]] | None:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key or stored.get("version") != CACHE_VERSION:
        return None
    return stored["splits"]


def build_feature_cache(
    network: CarNet,
    datamodule: CarDataModule,
    cache_dir: Path,
    splits: Sequence[str] = ("train", "val"),
    augment_passes: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[dict[str, dict[str, Tensor]], FeatureCache]:
    """The embeddings of `splits` (splits without samples are left out), from the cache or computed.

    Returns ({split: {"features", "label", "box", "has_box", "index"[, "feature_map"]}}, FeatureCache).
    """
    started = time.perf_counter()
    present = [split for split in splits if datamodule.positions.get(split)]
    key = cache_key(network, datamodule, present, augment_passes, seed)
    path = Path(cache_dir) / f"{key[:24]}.pt"
    cached = _load(path, key) if path.exists() else None
    hit = cached is not None
    if cached is None:
        cached = {}
        for split in present:
            parts = [
                extract_features(
                    network, datamodule.feature_dataloader(split), device, progress, f"{split} features"
                )
            ]
            if split == "train":
                for number in range(augment_passes):
                    loader = augmented_loader(datamodule, seed + 1 + number)
                    parts.append(
                        extract_features(
                            network, loader, device, progress, f"augmented features {number + 1}"
                        )
                    )
            cached[split] = _concat(parts)
        payload = {"version": CACHE_VERSION, "key": key, "splits": cached}
        write_atomic(path, lambda stream: torch.save(payload, stream))
    maps = [tensors[MAP_FIELD] for tensors in cached.values() if MAP_FIELD in tensors]
    info = FeatureCache(
        path=path,
        key=key,
        hit=hit,
        seconds=time.perf_counter() - started,
        counts={split: int(tensors["features"].shape[0]) for split, tensors in cached.items()},
        feature_dim=int(next(iter(cached.values()))["features"].shape[1]) if cached else 0,
        augment_passes=augment_passes,
        feature_map=tuple(maps[0].shape[1:]) if maps else None,
        megabytes=sum(t.numel() * t.element_size() for s in cached.values() for t in s.values()) / 2**20,
    )
    return cached, info


class FeatureDataset(Dataset):
    """Rows of cached tensors as batch dicts ("features" instead of "image")."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self.tensors = dict(tensors)
        self.length = int(self.tensors["features"].shape[0])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: Key) -> dict[str, Tensor]:
        position, _ = split_key(key)  # cached rows are not augmented here
        return {name: values[position] for name, values in self.tensors.items()}


class FeatureDataModule(L.LightningDataModule):
    """Train/val loaders over cached embeddings; the train loader is shuffled with a seeded generator,
    or with `balance` mode "sampler" draws class-balanced rows (`carid.training.balance`)."""

    def __init__(
        self,
        cached: Mapping[str, Mapping[str, Tensor]],
        batch_size: int,
        seed: int = 0,
        balance: Balance | None = None,
    ) -> None:
        super().__init__()
        if "train" not in cached:
            raise ValueError("the feature cache has no train split")
        self.cached = dict(cached)
        self.batch_size = batch_size
        self.seed = seed
        self.balance = balance

    def train_dataloader(self) -> DataLoader:
        dataset = FeatureDataset(self.cached["train"])
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
        return DataLoader(FeatureDataset(self.cached["val"]), batch_size=self.batch_size)
