"""Sweeps: train every combination of a grid of config values, one after another, then compare them.

`run_sweep(base_config_path, grid, out_dir)` takes the cartesian product of the grid's values (keys
are dotted config keys: model.backbone, model.image_size, train.optimizer, model.hidden, ...; the
first key varies slowest), trains each variant with `carid.training.fit.train` into
`out_dir/<variant name>/` and finally runs `carid.evaluation.compare.compare_runs` over the
finished runs (comparison.csv / .json / .html and curves.png in out_dir).

Variant names are derived from the values only, so they are the same on every run of the sweep:
``sweep-backbone-resnet18-image_size-224`` (prefix, then the last part of each key and its value;
the whole dotted key when two keys end alike; lists are joined with "_"; names longer than 120
characters end in a hash of the values instead).

Interrupts and resume: `out_dir/sweep.json` records every variant's status (pending, running, done,
failed with the error message), rewritten atomically after each change. Run again with resume=True
(the default), a sweep skips the variants that are done (their summary.json exists), continues an
interrupted variant from its checkpoints/last.ckpt (`train(..., resume=True)`) and retries failed
ones. A variant that fails is recorded and the sweep goes on with the next.

Grids come from a YAML file (`load_sweep_file`) or from `--grid key=v1,v2` items (`parse_grid`):

    base: ../configs/car-models-5-transfer.yaml   # relative to this file
    name: backbones                               # optional: prefix of the run names
    metric: val/acc                               # optional: what compare ranks by
    set: [train.epochs=5]                         # optional: fixed overrides for every variant
    sweep:
      model.backbone: [tf_efficientnet_lite0, mobilenetv3_large_100]
      model.image_size: [160, 224]

Every variant's config is built and validated before the first one trains, so a wrong key or
value fails at once, naming the key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from carid import __version__
from carid.config import Config, ConfigError, from_dict, load_config, read_yaml, set_dotted, to_dict
from carid.errors import CaridError
from carid.evaluation.compare import CompareError, ComparisonResult, compare_runs
from carid.files import write_json

log = logging.getLogger(__name__)

STATE_FILE = "sweep.json"
STATUSES = ("pending", "running", "done", "failed")
DEFAULT_PREFIX = "sweep"
MAX_NAME_LENGTH = 120
SWEEP_FILE_KEYS = frozenset({"base", "name", "metric", "set", "sweep"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SweepError(CaridError, ValueError):
    """A grid, sweep file or sweep folder that cannot be used; the message names the key or file."""


# ----------------------------------------------------------------------------------------------
# Grids


def split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside [], {} or quotes: "[8,16],[16,32]" -> ["[8,16]", "[16,32]"]."""
    parts, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth < 0:
                raise ValueError("a closing bracket without an opening one")
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if depth or quote:
        raise ValueError("an unclosed bracket or quote")
    parts.append("".join(current))
    return parts


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads "1e-3" as a string; give such numbers back as floats."""
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`["model.backbone=a,b", "model.image_size=32,48"]` -> {"model.backbone": ["a", "b"], ...}.

    Values are parsed as YAML scalars ("32" -> 32, "true" -> True); lists and mappings may be
    given in brackets ("model.backbone_args.widths=[8,16],[16,32]"). Raises SweepError naming the
    key (or the item when it has no key).
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise SweepError(
                f"--grid {item!r}: expected key=value1,value2,... (e.g. model.image_size=160,224)"
            )
        key, raw = (part.strip() for part in item.split("=", 1))
        if not key:
            raise SweepError(f"--grid {item!r}: the key before '=' is empty")
        if key in grid:
            raise SweepError(f"grid key {key!r}: given twice")
        try:
            texts = split_top_level(raw)
        except ValueError as exc:
            raise SweepError(f"grid key {key!r}: {raw!r} has {exc}") from None
        values = []
        for text in texts:
            if not text.strip():
                raise SweepError(f"grid key {key!r}: empty value in {raw!r} (values are separated by commas)")
            try:
                values.append(_scalar(yaml.safe_load(text)))
            except yaml.YAMLError as exc:
                raise SweepError(f"grid key {key!r}: {text!r} is not a valid value ({exc})") from None
        grid[key] = _checked_values(key, values)
    return grid


def _checked_values(key: str, values: Sequence[Any]) -> list[Any]:
    if not values:
        raise SweepError(f"grid key {key!r}: no values")
    seen: list[str] = []
    for value in values:
        marker = json.dumps(value, sort_keys=True, default=str)
        if marker in seen:
            raise SweepError(f"grid key {key!r}: value {value!r} is listed twice")
        seen.append(marker)
    return list(values)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {item.name: hints[item.name] for item in fields(cls)}


def check_grid_keys(grid: Mapping[str, Any]) -> None:
    """Every key must name a config setting (sections and fields of `carid.config.Config`); keys
    below a free-form mapping setting (e.g. model.backbone_args.widths) are allowed. Raises
    SweepError naming the key and the settings its section has."""
    for key in grid:
        section: Any = Config
        parts = key.split(".")
        for depth, part in enumerate(parts):
            known = _field_types(section)
            if part not in known:
                where = ".".join(parts[:depth]) or "the config"
                raise SweepError(
                    f"grid key {key!r}: {part!r} is not a setting of {where} "
                    f"(it has: {', '.join(sorted(known))})"
                )
            kind = known[part]
            last = depth == len(parts) - 1
            if is_dataclass(kind):
                if last:
                    raise SweepError(f"grid key {key!r}: is a whole section; name one of its settings")
                section = kind
            elif typing.get_origin(kind) is dict or kind is dict:
                break  # a free-form mapping (backbone_args): any key below it is allowed
            elif not last:
                raise SweepError(
                    f"grid key {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a section"
                )


# ----------------------------------------------------------------------------------------------
# Variants


def _value_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "_".join(_value_text(item) for item in value)
    if isinstance(value, dict):
        return "_".join(f"{k}-{_value_text(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The last part of each dotted key, or the whole key (dots -> '_') when two keys end alike."""
    lasts = [key.split(".")[-1] for key in keys]
    return {
        key: last if lasts.count(last) == 1 else key.replace(".", "_")
        for key, last in zip(keys, lasts, strict=True)
    }


def variant_name(prefix: str, values: Mapping[str, Any]) -> str:
    """The deterministic run name of a variant (see the module docstring)."""
    short = _short_keys(list(values))
    parts = [prefix] + [f"{short[key]}-{_value_text(value)}" for key, value in values.items()]
    name = _UNSAFE.sub("-", "-".join(parts)).strip("-.")
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode("utf-8")).hexdigest()[
            :10
        ]
        name = f"{name[: MAX_NAME_LENGTH - 11].rstrip('-.')}-{digest}"
    return name


@dataclass(frozen=True)
class Variant:
    """One point of the grid: its run name and {dotted key: value}."""

    name: str
    values: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": dict(self.values)}


def expand_grid(grid: Mapping[str, Sequence[Any]], prefix: str = DEFAULT_PREFIX) -> list[Variant]:
    """The cartesian product of the grid's values, first key varying slowest."""
    if not grid:
        raise SweepError("the grid is empty: give at least one key with values")
    keys = list(grid)
    for key in keys:
        _checked_values(key, list(grid[key]))
    variants = [
        Variant(
            variant_name(prefix, dict(zip(keys, combo, strict=True))), dict(zip(keys, combo, strict=True))
        )
        for combo in itertools.product(*(grid[key] for key in keys))
    ]
    names = [variant.name for variant in variants]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise SweepError(
            f"two grid points give the same run name {clashes[0]!r}; make the values more distinct"
        )
    return variants


def variant_config(base: Config, variant: Variant, out_dir: Path) -> Config:
    """`base` with the variant's values (each replacing the base value of its key), named after it
    and writing its run into `out_dir`."""
    tree = to_dict(base)
    try:
        for key, value in variant.values.items():
            set_dotted(tree, key, value)
    except ConfigError as exc:  # a key below a free-form mapping (backbone_args) that runs into a value
        raise SweepError(f"grid key {exc}") from None
    tree["name"] = variant.name
    tree["run_dir"] = str(out_dir)
    try:
        return from_dict(Config, tree, source=f"sweep variant {variant.name}")
    except ConfigError as exc:
        raise SweepError(str(exc)) from None


# ----------------------------------------------------------------------------------------------
# Sweep files


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file read: base config (None: defaults), grid, fixed overrides, name prefix, metric."""

    base: Path | None
    grid: dict[str, list[Any]]
    overrides: tuple[str, ...] = ()
    name: str = DEFAULT_PREFIX
    metric: str = "val/acc"


def load_sweep_file(path: Path | str) -> SweepSpec:
    """Read a sweep YAML file (see the module docstring); SweepError naming the file and key."""
    path = Path(path)
    try:
        data = read_yaml(path, "sweep file")
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with a 'sweep' section")
    unknown = sorted(set(data) - SWEEP_FILE_KEYS)
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {unknown}; a sweep file has {sorted(SWEEP_FILE_KEYS)}")
    section = data.get("sweep")
    if not isinstance(section, dict) or not section:
        raise SweepError(
            f"{path}: 'sweep' must map config keys to lists of values, e.g. model.image_size: [160, 224]"
        )
    grid: dict[str, list[Any]] = {}
    for key, values in section.items():
        if not isinstance(values, list):
            raise SweepError(f"{path}: sweep.{key}: expected a list of values, got {values!r}")
        grid[str(key)] = _checked_values(str(key), values)
    base = data.get("base")
    base_path = None
    if base is not None:
        base_path = Path(str(base)).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
    overrides = data.get("set") or []
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise SweepError(f"{path}: 'set' must be a list of key=value strings")
    return SweepSpec(
        base=base_path,
        grid=grid,
        overrides=tuple(overrides),
        name=str(data.get("name") or DEFAULT_PREFIX),
        metric=str(data.get("metric") or "val/acc"),
    )


# ----------------------------------------------------------------------------------------------
# State


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class VariantState:
    """One variant's progress as recorded in sweep.json."""

    name: str
    values: Mapping[str, Any]
    status: str = "pending"
    run_dir: str | None = None
    error: str | None = None
    attempts: int = 0
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    best_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "values": dict(self.values),
            "status": self.status,
            "run_dir": self.run_dir,
            "error": self.error,
            "attempts": self.attempts,
            "started": self.started,
            "finished": self.finished,
            "seconds": self.seconds,
            "best_score": self.best_score,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> VariantState:
        status = data.get("status", "pending")
        if status not in STATUSES:
            raise SweepError(f"{source}: variant {data.get('name')!r} has unknown status {status!r}")
        return cls(
            name=str(data["name"]),
            values=dict(data.get("values") or {}),
            status=status,
            run_dir=data.get("run_dir"),
            error=data.get("error"),
            attempts=int(data.get("attempts") or 0),
            started=data.get("started"),
            finished=data.get("finished"),
            seconds=data.get("seconds"),
            best_score=data.get("best_score"),
        )


class SweepState:
    """sweep.json: the sweep's settings and every variant's state; `save` writes it atomically."""

    def __init__(self, path: Path, header: dict[str, Any], variants: dict[str, VariantState]) -> None:
        self.path = path
        self.header = header
        self.variants = variants

    @classmethod
    def load(cls, path: Path) -> SweepState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SweepError(f"{path}: cannot read the sweep state ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
            raise SweepError(f"{path}: not a carid sweep state (no 'variants' list)")
        variants = {}
        for item in data["variants"]:
            state = VariantState.from_dict(item, str(path))
            variants[state.name] = state
        header = {key: value for key, value in data.items() if key != "variants"}
        return cls(path, header, variants)

    def update(self, name: str, **changes: Any) -> VariantState:
        self.variants[name] = replace(self.variants[name], **changes)
        self.save()
        return self.variants[name]

    def save(self) -> None:
        data = {**self.header, "updated": _now(), "variants": [v.to_dict() for v in self.variants.values()]}
        write_json(self.path, data)


# ----------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did. variants: the state of each grid point, in grid order; comparison: over
    the finished runs (None when none finished)."""

    out_dir: Path
    state_path: Path
    variants: tuple[VariantState, ...]
    comparison: ComparisonResult | None = None
    skipped: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> list[VariantState]:
        return [v for v in self.variants if v.status == "failed"]

    @property
    def done(self) -> list[VariantState]:
        return [v for v in self.variants if v.status == "done"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "state": str(self.state_path),
            "variants": [v.to_dict() for v in self.variants],
            "skipped": list(self.skipped),
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
        }


TrainFunction = Callable[..., Any]


def _default_train(config: Config, resume: bool, progress: bool) -> Any:
    from carid.training.fit import train

    return train(config, resume=resume, progress=progress)


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def run_sweep(
    base_config_path: Path | str | None,
    grid: Mapping[str, Sequence[Any]],
    out_dir: Path | str,
    resume: bool = True,
    *,
    overrides: Sequence[str] = (),
    prefix: str = DEFAULT_PREFIX,
    metric: str = "val/acc",
    progress: bool = False,
    train_fn: TrainFunction | None = None,
    say: Callable[[str], None] | None = None,
) -> SweepResult:
    """Train every variant of `grid` on top of the base config (+ `overrides`), then compare them.

    base_config_path: a carid YAML config (None: the defaults). out_dir: the sweep folder; runs go
    to out_dir/<variant name>. resume: continue a sweep already in out_dir (with resume=False an
    existing sweep.json is an error). train_fn(config, resume=..., progress=...): the trainer
    (default `carid.training.fit.train`; tests pass a wrapper). say: called with a line per
    variant as it starts, is skipped or fails (the CLI prints them; default: the log).
    Raises SweepError / ConfigError for a bad grid, key or value before anything is trained.
    """
    tell = say or log.info
    out_dir = Path(out_dir).expanduser().resolve()
    trainer = train_fn or _default_train
    check_grid_keys(grid)
    variants = expand_grid(grid, prefix)
    base = load_config(base_config_path, list(overrides))
    configs = {variant.name: variant_config(base, variant, out_dir) for variant in variants}

    state_path = out_dir / STATE_FILE
    if state_path.exists() and not resume:
        raise SweepError(
            f"{out_dir} already holds a sweep ({STATE_FILE}); resume it or choose another folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = SweepState.load(state_path) if state_path.exists() else None
    header = {
        "carid_version": __version__,
        "created": previous.header.get("created", _now()) if previous else _now(),
        "base_config": None if base_config_path is None else str(Path(base_config_path).resolve()),
        "overrides": list(overrides),
        "grid": {key: list(values) for key, values in grid.items()},
        "prefix": prefix,
        "metric": metric,
    }
    # Variants of an earlier grid that this one lacks stay in the file (their runs are not touched).
    states: dict[str, VariantState] = {} if previous is None else dict(previous.variants)
    for variant in variants:
        if variant.name not in states:
            states[variant.name] = VariantState(
                variant.name, dict(variant.values), run_dir=str(out_dir / variant.name)
            )
    state = SweepState(state_path, header, states)
    state.save()

    skipped: list[str] = []
    for index, variant in enumerate(variants, start=1):
        entry = state.variants[variant.name]
        run_dir = out_dir / variant.name
        if entry.status == "done" and _is_finished(run_dir):
            tell(f"sweep {index}/{len(variants)} {variant.name}: done earlier, skipped")
            skipped.append(variant.name)
            continue
        # An interrupted or failed variant continues in its folder (from last.ckpt when there is one).
        resuming = run_dir.is_dir()
        tell(f"sweep {index}/{len(variants)} {variant.name}: {'resuming' if resuming else 'training'}")
        state.update(
            variant.name,
            status="running",
            attempts=entry.attempts + 1,
            started=_now(),
            error=None,
            finished=None,
            run_dir=str(run_dir),
        )
        started = time.perf_counter()
        try:
            result = trainer(configs[variant.name], resume=resuming, progress=progress)
        except Exception as exc:  # one failed variant must not stop the sweep; the error is recorded
            tell(f"sweep {index}/{len(variants)} {variant.name}: failed: {exc}")
            state.update(
                variant.name,
                status="failed",
                error=f"{type(exc).__name__}: {exc}",
                finished=_now(),
                seconds=round(time.perf_counter() - started, 2),
            )
            continue
        metrics = getattr(result, "metrics", {}) or {}
        state.update(
            variant.name,
            status="done",
            finished=_now(),
            seconds=round(time.perf_counter() - started, 2),
            best_score=metrics.get("best_score"),
        )

    finished = [out_dir / v.name for v in variants if state.variants[v.name].status == "done"]
    comparison = None
    if finished:
        try:
            comparison = compare_runs(finished, metric=metric, out_dir=out_dir)
        except CompareError as exc:
            tell(f"cannot compare the sweep's runs: {exc}")
    return SweepResult(
        out_dir=out_dir,
        state_path=state_path,
        variants=tuple(state.variants[v.name] for v in variants),
        comparison=comparison,
        skipped=tuple(skipped),
    )
