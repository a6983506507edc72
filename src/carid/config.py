"""Every setting carid has, as typed frozen dataclasses: one source of defaults.

YAML files and `--set section.key=value` overrides are validated against these classes by
pydantic (unknown keys and wrong types are errors that name the key), and every run writes its
fully resolved config back out as YAML. The CLI only overrides; it never holds defaults of its own.

The nested-dict tools here (`read_yaml`, `set_dotted`, `parse_overrides`, `merge_trees`,
`apply_overrides`) are the ones every module uses for config trees (training, sweeps).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from carid.config_detect import DetectConfig
from carid.config_help import invalid_config_message, locate_data_paths, missing_data_message
from carid.errors import CaridError

STRICT = ConfigDict(extra="forbid")

# Where the shared datasets live relative to a checkout (../shared/datasets) and the dataset the
# main job uses when none is given.
DEFAULT_DATASET = "stanford-cars-crops"
DATA_ENV = "CARID_DATA"


@dataclass(frozen=True)
class DataConfig:
    """Which dataset and how to split it.

    path: dataset folder or annotation file; None means the default shared dataset.
    format: reader name (see `carid data formats`); None detects it.
    split_csv: a saved split to reuse; when set, the fractions below are ignored.
    use_format_split: keep the split the format defines (VOC trainval/test, Stanford train/test)
        and carve validation out of its training part.
    label_level: what the model learns: the dataset's classes, or a taxonomy level derived from the
        Stanford-style class names (make, body_type, year).
    exclude: image files kept out of every split, as shell patterns matched against the file name
        and the path relative to the dataset folder (e.g. "0453?.jpg" keeps the crops of the ten
        uncropped devkit photos out of training, validation and test).
    train_extra: more datasets (paths, any format) whose usable samples all join the training split
        and never validation or test, e.g. composites (`carid data compose`) beside real frames, so
        that the held-out figures stay those of the real data.
    frame_block: 0 = off; N > 0 treats images whose file name ends in a number as video frames
        (vid_4_1260.jpg: video "vid_4_", frame 1260) and keeps each block of N consecutive frame
        numbers of a video (1000-1999 for N = 1000) in one split, so that near-identical
        neighbouring frames never sit on both sides of it.
    val_fraction, test_fraction: shares of the samples held out for validation and for test.
    seed: seed of the random split.
    swap_rb: exchange red and blue in every image as training loads it (images saved BGR; `carid data check`).
    """

    __pydantic_config__ = STRICT

    path: str | None = None
    format: str | None = None
    split_csv: str | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    use_format_split: bool = True
    label_level: Literal["class", "make", "body_type", "year"] = "class"
    exclude: tuple[str, ...] = ()
    train_extra: tuple[str, ...] = ()
    frame_block: int = 0
    swap_rb: bool = False


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds of the data checks.

    min_side: images whose shorter side is below this many pixels are tiny: an error, excluded.
    near_duplicate_distance: perceptual-hash Hamming distance (of 64 bits) at or below which two
        images are near duplicates (0 would be only visually identical).
    min_per_class: classes with fewer samples are reported.
    imbalance_ratio: largest/smallest class count above which imbalance is reported.
    min_box_size: boxes narrower or lower than this many pixels are degenerate.
    workers: processes used to open images; 0 = one per CPU core.
    """

    __pydantic_config__ = STRICT

    min_side: int = 32
    near_duplicate_distance: int = 4
    min_per_class: int = 10
    imbalance_ratio: float = 5.0
    min_box_size: float = 2.0
    workers: int = 0


@dataclass(frozen=True)
class CurateConfig:
    """Settings of `carid data curate` (docs/curate.md); the duplicate and tiny-image thresholds are
    the `check` section's.

    no_car_threshold: a photo whose car score (ImageNet car-class probability, largest over its
        views) is below this is flagged "no car"; measured on car-frames (benchmarks/RESULTS.md).
    no_car_grid: (columns, rows) of half-overlapping tiles scored besides the whole photo; (1, 1) =
        the whole photo only.
    mislabel_threshold: a photo whose label differs from the model's top-1 class predicted with at
        least this probability is flagged "likely mislabelled".
    batch_size: network inputs per forward pass (no-car score and model predictions).
    keep_one_duplicate: of a group of exact / near duplicates, keep the first file (path order) and
        flag the others; False flags the group without removing anyone.
    thumbnail_side: longest side (pixels) of the thumbnails embedded in the review page.
    """

    __pydantic_config__ = STRICT

    no_car_threshold: float = 0.075
    no_car_grid: tuple[int, int] = (3, 2)
    mislabel_threshold: float = 0.9
    batch_size: int = 32
    keep_one_duplicate: bool = True
    thumbnail_side: int = 160


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `on`/`off` as true/false; give those back as the words."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


# model.box_input names a box head of the registry in carid.models.heads (`register_box_head`). This
# module is torch-free, so the config is validated against the registry's NAMES kept here: the built-in
# heads (the registry checks on import that it defines exactly these) plus every head registered since.
BUILTIN_BOX_INPUTS: tuple[str, ...] = ("map", "pooled", "cells")
_box_inputs: list[str] = list(BUILTIN_BOX_INPUTS)


def box_input_names() -> tuple[str, ...]:
    """The values model.box_input accepts: the registered box heads, built-in ones first."""
    return tuple(_box_inputs)


def add_box_input(name: str) -> None:
    """Accept `name` as a model.box_input (called by `carid.models.heads.register_box_head`)."""
    if name not in _box_inputs:
        _box_inputs.append(name)


def remove_box_input(name: str) -> None:
    """Stop accepting `name` (called by `unregister_box_head`); the built-in names stay."""
    if name in BUILTIN_BOX_INPUTS:
        raise ValueError(f"box head {name!r} is built in and cannot be removed")
    if name in _box_inputs:
        _box_inputs.remove(name)


def _known_box_input(value: Any) -> Any:
    """Validate model.box_input with the error a Literal of the registered names gives."""
    names = box_input_names()
    if isinstance(value, str) and value in names:
        return value
    quoted = [repr(name) for name in names]
    expected = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


@dataclass(frozen=True)
class ModelConfig:
    """The network: a backbone by name plus a class head and (with boxes) a box head.

    backbone: a timm model name (tf_efficientnet_lite0, mobilenetv3_large_100, resnet50, convnext_tiny, ...)
        or a carid from-scratch net (carid_vgg; see models/scratch.py).
    backbone_args: extra keyword arguments for the backbone factory (e.g. the VGG switches
        {widths: [32, 64, 128], blocks_per_stage: 2, batch_norm: true, dropout: 0.25}).
    pretrained: "offline" (ImageNet weights from an installed package, EfficientNet-Lite0/1/2),
        "hub" (timm's pretrained=True, needs internet), or "none" (random init).
    image_size: network input side in pixels (square).
    hidden: units of an optional hidden dense layer in the class head (0 = none; the car-models
        study used 512).
    dropout: dropout before the class layer.
    box_head: "auto" (when the dataset has boxes), "on" or "off".
    box_input: the box head, by its registered name (`carid.models.heads.register_box_head`); built
        in: "map" (the backbone's last feature map [B, C, h, w]: 1x1 conv to box_channels, flatten,
        MLP; keeps where things are) or "pooled" (the pooled embedding [B, D], as the class head;
        weak at localizing) or "cells" (the feature map, a convolutional head whose cells each
        propose a box and a score; the score-weighted mean is the box).
    box_channels: channels of the "map" / "cells" box head's convolutions.
    box_hidden: hidden units of the box head MLP (0 = a single linear layer).
    box_refine: looks of a second box stage (0 = off): it samples the feature map over a window
        box_refine_expand times the first box and places the box inside it (`RefinedBoxHead`);
        needs box_input "map" or "cells". Trained on jittered windows around the true boxes too.
    box_refine_expand: side of the refinement window relative to the box it starts from.
    box_refine_stride: 0 = the refinement samples the last feature map (the box head's); e.g. 16 =
        the map of the backbone stage at that stride, 2x finer on most CNNs (timm backbones).
    drop_path_rate: stochastic depth for timm backbones that support it (must be 0 for carid_vgg).
    backbone_args may not set num_classes, pretrained or global_pool (the network owns those).
    """

    __pydantic_config__ = STRICT

    backbone: str = "tf_efficientnet_lite0"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    pretrained: Literal["offline", "hub", "none"] = "offline"
    image_size: int = 224
    hidden: int = 0
    dropout: float = 0.2
    box_head: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = "auto"
    box_input: Annotated[str, BeforeValidator(_known_box_input)] = "map"
    box_channels: int = 64
    box_hidden: int = 256
    box_refine: int = 0
    box_refine_expand: float = 1.6
    box_refine_stride: int = 0
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (albumentations, box-aware) and the resize mode used everywhere.

    resize_mode: "stretch" (resize to a square, aspect not kept) or "letterbox" (keep aspect, pad);
        saved with the model so prediction resizes exactly as training did.
    scale: (min, max) area fraction kept by the random resized crop; boxes stay valid (crops never cut
        a box out). (1.0, 1.0) disables cropping.
    rotate: up to ±this many degrees of free rotation (the box grows to the rotated ellipse's).
    vflip: probability of an upside-down mirror; rotate90: probability of ``A.RandomRotate90``,
        which then turns by 0, 90, 180 or 270 degrees, equally likely. Both keep axis-aligned boxes
        exact; they suit subjects seen at any orientation (a pet lying on its back), not cars on a
        road.
    enabled: False trains on the resized images, with none of the augmentations here.
    hflip: probability of a horizontal mirror; color_jitter: brightness / contrast / saturation
        strength; blur: probability of a blur; grayscale: probability of dropping colour.
    """

    __pydantic_config__ = STRICT

    enabled: bool = True
    resize_mode: Literal["stretch", "letterbox"] = "stretch"
    hflip: float = 0.5
    scale: tuple[float, float] = (0.6, 1.0)
    rotate: float = 0.0
    vflip: float = 0.0
    rotate90: float = 0.0
    color_jitter: float = 0.3
    blur: float = 0.1
    grayscale: float = 0.05


@dataclass(frozen=True)
class UnfreezeStep:
    """At `epoch`, make trainable everything from backbone stage/layer `start` upwards."""

    __pydantic_config__ = STRICT

    epoch: int
    start: str | int


@dataclass(frozen=True)
class ResizeStep:
    """From training epoch `epoch` (0-based) on, training photos are `size` pixels square."""

    __pydantic_config__ = STRICT

    epoch: int
    size: int


@dataclass(frozen=True)
class TrainConfig:
    """How to fit: optimizer, schedule, transfer-learning controls, callbacks, hardware.

    epochs: passes over the training images; batch_size: images per step.
    optimizer: "adamw", "adam" or "sgd"; lr: learning rate of the heads; weight_decay: the
        optimizer's weight decay; momentum: sgd's momentum.
    schedule: the lr over the run: "cosine" decay, "onecycle" or "none" (constant); warmup_epochs:
        epochs (may be fractional) of linear warm-up first.
    label_smoothing: of the class loss; box_weight: of the box loss against the class loss.
    box_l1_weight, box_giou_weight: weights of the L1 and the GIoU terms inside the box loss.
    early_stopping_patience: validations without improvement of monitor before training stops (0 =
        never); monitor: the metric the best checkpoint (and early stopping) goes by.
    seed: seed of everything random in training; deterministic: deterministic algorithms.
    precision, accelerator, devices, strategy: the Lightning Trainer's settings ("auto" lets it choose).
    num_nodes: machines in a multi-node DDP run (Lightning's Trainer(num_nodes=...); docs/scale.md).
    num_workers: processes loading images; channels_last: channels-last memory format (faster on CPU).
    tensorboard: also log to run_dir/tensorboard; lr_find: train with the lr Lightning's finder suggests.
    limit_train_batches, limit_val_batches: share (float) or number (int) of batches per epoch.
    freeze: "none", "backbone" (train heads only), or the stage name / layer index from which the
        backbone is trainable (lower layers frozen), e.g. "blocks.4" or 70.
    unfreeze: staged unfreezing schedule, applied by a callback.
    resize_schedule: progressive resizing: steps {epoch, size}; training photos are `size` px from
        that epoch on (model.image_size before the first step); validation, test and export stay at
        model.image_size. Smaller early epochs decode and compute less, e.g. [{epoch: 0, size: 128},
        {epoch: 8, size: 160}, {epoch: 12, size: 192}]. Full training only (not with cache_features).
    backbone_lr_scale: discriminative learning rate: backbone lr = lr * this (heads get lr).
    cache_features: with a frozen backbone, compute its features once and train the heads from the cache;
        with freeze at a stage ("blocks.5"), cache the frozen front's activations there and train the
        later stages and the heads from them (carid.training.stage_cache).
    cache_augment_passes: with cache_features, K extra augmented passes of the train images in the cache.
    cache_map_hflip, cache_map_crop, cache_frozen_norm: stage cache only: probability of mirroring a
        cached map per training sample; cache the train images this many map cells larger and read a
        random window of the normal size; BatchNorm of the trained stages on its running statistics.
    mixup, cutmix: Beta(alpha, alpha) strength of mixup / CutMix of training batches (timm's Mixup;
        carid.training.mixing); 0 = off; with both on, each mixed batch uses one of them at random.
        They mix the images, or the cached maps of a stage cache (the pooled-feature cache: mixup
        only); classification only. mix_prob: the share of training batches that are mixed.
    ema_decay: keep an exponential moving average of the weights (Lightning's EMAWeightAveraging,
        updated every step; validation, checkpoints and the test use it); 0 = off, e.g. 0.998.
    test_after_fit: evaluate the best checkpoint on the test split when training ends (test/acc, ...).
    fit_on_val: final refit: the val images join the training images (split.csv still marks them
        val) and no validation runs, so best.ckpt is the last epoch; for a recipe whose epochs were
        settled on a run with val. Needs early_stopping_patience 0 (nothing held out to stop on).
    balance: class-imbalanced data: "none", "sampler" (training samples drawn with class-balanced
        weights) or "loss" (class weights in the training cross-entropy), from the train split's
        counts; per-class recall is then logged at every validation and written to the run's
        per-class-recall.csv (carid.training.balance); balance_scheme: the class weights, "inverse"
        (1 / count) or "effective" (Cui et al. 2019: (1 - beta) / (1 - beta^count));
        balance_beta: the beta of "effective" (near 1: close to inverse; 0: equal weights).
    """

    __pydantic_config__ = STRICT

    epochs: int = 10
    batch_size: int = 32
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.01
    momentum: float = 0.9
    schedule: Literal["cosine", "onecycle", "none"] = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    box_weight: float = 1.0
    box_l1_weight: float = 1.0
    box_giou_weight: float = 1.0
    freeze: str | int = "none"
    unfreeze: tuple[UnfreezeStep, ...] = ()
    resize_schedule: tuple[ResizeStep, ...] = ()
    cache_features: bool = False
    cache_augment_passes: int = 0
    cache_map_hflip: float = 0.0
    cache_map_crop: int = 0
    cache_frozen_norm: bool = False
    early_stopping_patience: int = 0
    monitor: str = "val/acc"
    seed: int = 42
    deterministic: bool = True
    precision: str = "auto"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    num_workers: int = 2
    channels_last: bool = True
    tensorboard: bool = False
    lr_find: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    ema_decay: float = 0.0
    test_after_fit: bool = True
    fit_on_val: bool = False
    balance: Literal["none", "sampler", "loss"] = "none"
    balance_scheme: Literal["inverse", "effective"] = "inverse"
    balance_beta: float = 0.999
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0


@dataclass(frozen=True)
class ExportConfig:
    """`carid export` settings (carid.export, carid.export_quantize).

    quantize_max_top1_drop: an int8 export (`--quantize int8`) is refused when its top-1 accuracy on
        the labelled check photos is more than this many percentage points below fp32's (without
        labels: when its top-1 differs from fp32's on more than this share of them).
    quantize_calibration_images: training photos of the run's split that calibrate the int8 ranges.
    quantize_check_images: validation photos the int8 graph is compared with the fp32 one on.
    """

    __pydantic_config__ = STRICT

    quantize_max_top1_drop: float = 1.0
    quantize_calibration_images: int = 200
    quantize_check_images: int = 1000


@dataclass(frozen=True)
class Config:
    """The root of every carid config file.

    task: "classify" (the `model` section: classes, and a box per image) or "detect" (the `detect`
        section: every car of a photo, each with a box and a score).
    run_dir: the folder run folders are made in; name: the run folder's name (default: the config
        file's name, else one made from the settings).
    """

    __pydantic_config__ = STRICT

    data: DataConfig = field(default_factory=DataConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: Literal["classify", "detect"] = "classify"
    detect: DetectConfig = field(default_factory=DetectConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    run_dir: str = "runs"
    name: str | None = None


class ConfigError(CaridError, ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


T = TypeVar("T")


def read_yaml(path: Path | str, what: str = "config file") -> Any:
    """The parsed YAML of a file (None for an empty one).

    Raises ConfigError "<path>: <what> not found" or "<path>: not valid YAML (<parser message>)".
    """
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree["a"]["b"]["c"] = value for "a.b.c", in place, creating the sections on the way.

    The value replaces whatever was there (a mapping value is not merged). Raises ConfigError
    "<dotted>: '<part>' is a value, not a section" when a part on the way holds a non-mapping.
    """
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: Sequence[str] | None) -> dict[str, Any]:
    """["train.epochs=3", "data.path=/x"] -> nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
        except ConfigError as exc:
            raise ConfigError(f"--set {exc}") from None
    return tree


def merge_trees(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `base` with `update` laid over it, mappings merged key by key (deeply), any other
    value replaced. Neither argument is changed."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: type[T], tree: dict[str, Any], source: str = "config", overrides: Sequence[str] = ()) -> T:
    """Validate a nested dict into `cls`; errors list every bad key as `section.key: problem` (an
    unknown key with a "did you mean"), under `source` or the `--set KEY=VALUE` of `overrides` that
    set it."""
    try:
        return TypeAdapter(cls).validate_python(tree)
    except ValidationError as exc:
        raise ConfigError(
            invalid_config_message(cls, exc, source, overrides),
            hint="`carid config show SECTION` lists every key with its type, default and meaning",
        ) from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(config: Config, overrides: Sequence[str] | None) -> Config:
    """`config` with `--set key=value` overrides applied (merged as in `load_config`) and validated."""
    if not overrides:
        return config
    tree = merge_trees(to_dict(config), parse_overrides(overrides))
    return from_dict(Config, tree, "--set", overrides)


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- `--set` overrides, validated. The file's relative data paths are
    found by the rule of `carid.config_help.locate_relative` (docs/configuration.md)."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of sections")
        tree = locate_data_paths(loaded or {}, path.absolute().parent)
        source = str(path)
    tree = merge_trees(tree, parse_overrides(overrides))
    return from_dict(Config, tree, source, overrides or ())


def save_config(config: Any, path: Path) -> None:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def shared_datasets_dir() -> Path | None:
    """`../shared/datasets` beside the checkout (or beside the current directory), if present."""
    candidates = [Path.cwd() / ".." / "shared" / "datasets"]
    repo_root = Path(__file__).resolve().parents[2]
    candidates.append(repo_root / ".." / "shared" / "datasets")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


NO_DATA_HELP = missing_data_message(None)


def resolve_data_path(path: str | Path | None, dataset: str = DEFAULT_DATASET) -> Path:
    """The dataset path to use: the given one, else $CARID_DATA, else the shared default.

    Raises ConfigError saying how to get the dataset the path names (Stanford Cars for the default)
    when nothing is found.
    """
    if path is not None:
        resolved = Path(path).expanduser()
        if not resolved.exists():
            raise ConfigError(missing_data_message(path))
        return resolved
    env = os.environ.get(DATA_ENV)
    if env:
        return resolve_data_path(env)
    shared = shared_datasets_dir()
    if shared is not None and (shared / dataset).exists():
        return shared / dataset
    raise ConfigError(NO_DATA_HELP)
