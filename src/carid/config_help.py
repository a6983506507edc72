"""What the settings mean to a person: every key with its type, default and help; "did you mean" for
a misspelt key; the rule for relative paths in a config file; the message for a missing dataset.

The help text is not kept here: it is parsed from the docstrings of the config dataclasses
(`carid.config`), whose "key: meaning" lines are the one description of each key. The functions work
on any tree of dataclasses and import nothing from `carid.config` (which uses them). The docstring
parser is hand-written because the format is ours: one "key: meaning" line per key (several keys may
share one: "a, b: meaning"; two may sit on one line: "a: ...; b: ..."), continued by indented lines.

Relative paths in a config file (`data.path`, `data.split_csv`, `data.train_extra`): a path that
exists seen from the current folder means what it always meant; otherwise it is tried against the
config file's own folder, then each folder above it, and the first that exists is used (so a shipped
recipe's `../shared/datasets/...`, written for the project root, also works from elsewhere). A path
found nowhere stays as written, and the error for it names the rule.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

# a "key: meaning" line of a docstring, also "key_a, key_b: meaning"
_ENTRY = re.compile(r"^([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.*)$")
# "...; other_key: meaning" inside an entry: the rest belongs to other_key
_INNER = re.compile(r"; ([a-z_][a-z0-9_]*): ")


@dataclass(frozen=True)
class KeyHelp:
    """One setting: dotted key, type as written in config.py, default as YAML text, help ("" if none)."""

    key: str
    type: str
    default: str
    help: str


def section_summary(cls: type) -> str:
    """The first paragraph of a dataclass's docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def field_help(cls: type) -> dict[str, str]:
    """{field name: its help}, parsed from the "key: meaning" lines of the dataclass's docstring."""
    names = {f.name for f in dataclasses.fields(cls)}
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (inspect.getdoc(cls) or "").splitlines():
        match = _ENTRY.match(line)
        keys = match.group(1).split(", ") if match else []
        if keys and all(key in names for key in keys):
            current = [match.group(2)]  # type: ignore[union-attr]
            for key in keys:
                entries[key] = current
        elif line.startswith((" ", "\t")) and current is not None:
            current.append(line.strip())
        elif line.split(" ", 1)[0] in entries and line.strip():  # "backbone_args may not set ..."
            current = entries[line.split(" ", 1)[0]]
            current.append(line.strip())
        else:
            current = None
    helps: dict[str, str] = {}
    for key, parts in entries.items():
        if key in helps:
            continue
        text = " ".join(parts)
        pieces = _INNER.split(text)  # [text of key, key2, text of key2, ...]
        helps[key] = pieces[0]
        for inner, inner_text in zip(pieces[1::2], pieces[2::2], strict=True):
            if inner in names:
                helps[inner] = inner_text
            else:
                helps[key] += f"; {inner}: {inner_text}"
    return helps


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested(hint: Any) -> type | None:
    """The dataclass a field holds, directly or as the items of a tuple / list; else None."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if typing.get_origin(hint) in (tuple, list):
        args = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def type_text(hint: Any) -> str:
    """A type as written in a config class: "float", "str | None", "Literal['a', 'b']"."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return re.sub(r"\b(?:[a-z_][a-z0-9_]*\.)+([A-Za-z_]\w*)", r"\1", str(hint))


def yaml_text(value: Any) -> str:
    """A default as it is written in a YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(yaml_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {yaml_text(item)}" for key, item in value.items()) + "}"
    if dataclasses.is_dataclass(value):
        return yaml_text(dataclasses.asdict(value))  # type: ignore[arg-type]
    return str(value)


def describe(cls: type, prefix: str = "") -> list[KeyHelp]:
    """Every setting under a dataclass, depth first in field order; sections are not listed, their
    keys are (`train.lr`)."""
    hints = _hints(cls)
    helps = field_help(cls)
    keys: list[KeyHelp] = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(describe(hint, f"{prefix}{f.name}."))  # type: ignore[arg-type]
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        keys.append(KeyHelp(f"{prefix}{f.name}", type_text(hint), yaml_text(default), helps.get(f.name, "")))
    return keys


def sections(cls: type, prefix: str = "") -> dict[str, type]:
    """{dotted section name: its dataclass} for every section under `cls` ("train", "data", ...)."""
    found: dict[str, type] = {}
    for name, hint in _hints(cls).items():
        if dataclasses.is_dataclass(hint):
            found[f"{prefix}{name}"] = hint  # type: ignore[assignment]
            found.update(sections(hint, f"{prefix}{name}."))  # type: ignore[arg-type]
    return found


def closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate `name` is most likely a misspelling of (difflib), or None."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def suggest_key(root: type, loc: Sequence[str | int]) -> str | None:
    """For an unknown key at `loc` (("train", "lrr")): the dotted key meant ("train.lr"), or None.

    Prefers a key of the same name in another section (`train.image_size` -> `model.image_size or
    detect.image_size`), then a close name in the same section, then a close name anywhere.
    """
    cls: type | None = root
    path: list[str] = []
    for part in loc[:-1]:
        if isinstance(part, int):
            path.append(str(part))
            continue
        hints = _hints(cls) if cls is not None else {}
        cls = _nested(hints.get(part))
        path.append(part)
        if cls is None:
            return None
    name = str(loc[-1])
    everywhere = [item.key for item in describe(root)] + list(sections(root))
    leaves = {key: key.rsplit(".", 1)[-1] for key in everywhere}
    same = [key for key, leaf in leaves.items() if leaf == name]
    if same:
        return " or ".join(same[:3])
    near = closest(name, [f.name for f in dataclasses.fields(cls)]) if cls is not None else None
    if near is not None:
        return ".".join([*path, near])
    near = closest(name, list(leaves.values()))
    return next((key for key, leaf in leaves.items() if leaf == near), None)


def locate_relative(path: str, config_dir: Path) -> str:
    """A path from a config file in `config_dir`, by the rule in the module docstring."""
    if not path or Path(path).expanduser().is_absolute() or Path(path).exists():
        return path
    for folder in (config_dir, *config_dir.parents):
        candidate = folder / path
        if candidate.exists():
            return os.path.normpath(candidate)
    return path


def locate_data_paths(tree: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """A config file's tree with `data.path`, `data.split_csv` and `data.train_extra` located by
    `locate_relative`; the tree given is not changed."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return tree
    data = dict(data)
    for key in ("path", "split_csv"):
        if isinstance(data.get(key), str):
            data[key] = locate_relative(data[key], config_dir)
    if isinstance(data.get("train_extra"), list | tuple):
        extra = data["train_extra"]
        data["train_extra"] = [locate_relative(i, config_dir) if isinstance(i, str) else i for i in extra]
    return {**tree, "data": data}


def _override_of(dotted: str, overrides: Sequence[str]) -> str | None:
    """The last `--set KEY=VALUE` that set the key `dotted` (itself, a section holding it, or a key
    inside it), else None."""
    found = None
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            found = item
    return found


def invalid_config_message(
    root: type, exc: ValidationError, source: str, overrides: Sequence[str] = ()
) -> str:
    """The message of a failed validation of `root`: "SOURCE: invalid config" then one line per bad
    key, grouped by where the key came from (`source`, or the `--set KEY=VALUE` that set it); an
    unknown key says which key was probably meant."""
    groups: dict[str, list[str]] = {}
    for error in exc.errors():
        loc = tuple(error["loc"])
        dotted = ".".join(str(part) for part in loc)
        message = error["msg"]
        if error["type"] in ("unexpected_keyword_argument", "extra_forbidden") and loc:
            meant = suggest_key(root, loc)  # type: ignore[arg-type]
            message = "unknown key" + (f" (did you mean {meant}?)" if meant else "")
        item = _override_of(dotted, overrides)
        groups.setdefault(source if item is None else f"--set {item}", []).append(f"{dotted}: {message}")
    return "\n".join(f"{where}: invalid config\n  " + "\n  ".join(lines) for where, lines in groups.items())


RELATIVE_RULE = (
    "a relative path in a config file is tried against the current folder, then the config file's "
    "folder and each folder above it"
)

STANFORD_HELP = (
    "To get Stanford Cars: download the images and the devkit (cars_train.tgz, "
    "cars_test.tgz, car_devkit.tgz; e.g. from the Kaggle mirror 'jessicali9530/stanford-cars-dataset' "
    "or the dataset's page, ai.stanford.edu/~jkrause/cars/car_dataset.html), unpack them into one "
    "folder so that it holds devkit/cars_train_annos.mat (or cars_train_annos.mat) and cars_train/, "
    "then run: carid data check that/folder"
)

# The shared datasets the shipped recipes read (../shared/datasets/<name>), other than Stanford Cars:
# what each one is, so that a missing one is described as itself.
SHARED_DATASETS = {
    "car-models-5": "a 'folder' dataset of web photos of 5 car models (train/<class>/*.jpg)",
    "car-frames": "a 'csv-boxes' dataset of roadside video frames (boxes.csv + images/)",
    "oxford-pets-sample": "a 'voc' dataset: part of Oxford-IIIT Pet (images/ + annotations/xmls/), "
    "from www.robots.ox.ac.uk/~vgg/data/pets/",
}


def missing_data_message(path: str | Path | None) -> str:
    """Why no dataset was found and how to get one, for the dataset `path` names (None: the default,
    Stanford Cars crops)."""
    where = (
        "Point carid at one with --data PATH (or --set data.path=PATH, or the CARID_DATA environment "
        "variable)."
    )
    if path is None:
        return f"No dataset found. {where} {STANFORD_HELP}"
    text = str(path)
    name = Path(text).name
    relative = "" if Path(text).expanduser().is_absolute() else f" ({RELATIVE_RULE})"
    head = f"{text}: no such file or directory{relative}."
    if name in SHARED_DATASETS:
        return (
            f"{head} It names the shared dataset {name!r}, {SHARED_DATASETS[name]}, kept in "
            f"shared/datasets/{name} beside the project folder. Give its folder with --data PATH "
            "(or --set data.path=PATH)."
        )
    return f"{head} {where} {STANFORD_HELP}"
