"""Car class names -> make / model / body type / year, and the hierarchy between them.

Stanford Cars names its 196 classes "<Make> <Model> <Body> <Year>" ("Audi TTS Coupe 2012",
"Chevrolet Silverado 2500HD Regular Cab 2012"). `parse_car_name` splits such a name with three
small vocabularies instead of a hard-coded list of the 196 names, so that other datasets written
the same way parse too:

- `MULTI_WORD_MAKES`: makes of more than one word ("Aston Martin", "AM General", "Land Rover");
  any other make is the first word.
- `BODY_PHRASES`: the words a name ends with before the year ("Sedan", "Crew Cab", "Cargo Van"),
  each mapped to one of the canonical `BODY_TYPES`; the longest matching phrase wins.
- `BODY_TYPE_BY_MODEL`: the few Stanford models whose name carries a trim instead of a body word
  ("Chevrolet Corvette ZR1 2012", "FIAT 500 Abarth 2012"), with a body type decided from
  real-world knowledge. docs/taxonomy.md gives the reason for each.

A name that does not parse ("Hyundai Creta 2021", "foo") still gets a make (the first word, or a
known multi-word make), its year when present, body type "Unknown" and `parsed=False`;
`Taxonomy.unparsed` lists such names.

`Taxonomy` holds the parsed classes of one model, maps each class to its value at a level
(class, make, body_type, year) and `roll_up` sums class probabilities into level probabilities.
It is stored as JSON in checkpoints and model bundles (`to_dict` / `from_dict`).

This module needs numpy only (no torch, scipy or pandas): the slim predictor imports it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# The canonical body types, in display order. Vans and minivans are one type ("Van"); every
# pickup cab variant (Regular/Extended/Crew/... Cab, SuperCab, SuperCrew) is "Pickup".
BODY_TYPES: tuple[str, ...] = ("Sedan", "SUV", "Coupe", "Convertible", "Hatchback", "Wagon", "Van", "Pickup")
UNKNOWN = "Unknown"  # body type, make or year of a name that does not say it

Level = Literal["class", "make", "body_type", "year"]
LEVELS: tuple[str, ...] = ("class", "make", "body_type", "year")

MULTI_WORD_MAKES: tuple[str, ...] = (
    "AM General",
    "Alfa Romeo",
    "Aston Martin",
    "Great Wall",
    "Land Rover",
    "Mercedes Benz",
    "Rolls Royce",
)

# Last words of a name (before the year) -> canonical body type. Matched case-insensitively,
# longest phrase first.
BODY_PHRASES: Mapping[str, str] = {
    "Sedan": "Sedan",
    "Saloon": "Sedan",
    "SUV": "SUV",
    "Coupe": "Coupe",
    "Convertible": "Convertible",
    "Cabriolet": "Convertible",
    "Roadster": "Convertible",
    "Hatchback": "Hatchback",
    "Wagon": "Wagon",
    "Estate": "Wagon",
    "Van": "Van",
    "Cargo Van": "Van",
    "Passenger Van": "Van",
    "Wagon Van": "Van",
    "Minivan": "Van",
    "Cargo Van Minivan": "Van",
    "Pickup": "Pickup",
    "Cab": "Pickup",
    "Regular Cab": "Pickup",
    "Extended Cab": "Pickup",
    "Club Cab": "Pickup",
    "Crew Cab": "Pickup",
    "Quad Cab": "Pickup",
    "Double Cab": "Pickup",
    "King Cab": "Pickup",
    "Access Cab": "Pickup",
    "Mega Cab": "Pickup",
    "SuperCab": "Pickup",
    "SuperCrew": "Pickup",
}

# (make, model) of names without a body word -> body type; matched case-insensitively and for any
# year. Exactly the Stanford Cars models that need it; reasons in docs/taxonomy.md.
BODY_TYPE_BY_MODEL: Mapping[tuple[str, str], str] = {
    ("Acura", "Integra Type R"): "Coupe",
    ("Acura", "TL Type-S"): "Sedan",
    ("Buick", "Regal GS"): "Sedan",
    ("Chevrolet", "Cobalt SS"): "Coupe",
    ("Chevrolet", "Corvette Ron Fellows Edition Z06"): "Coupe",
    ("Chevrolet", "Corvette ZR1"): "Coupe",
    ("Chevrolet", "HHR SS"): "Wagon",
    ("Chevrolet", "TrailBlazer SS"): "SUV",
    ("Chrysler", "300 SRT-8"): "Sedan",
    ("Dodge", "Challenger SRT8"): "Coupe",
    ("Dodge", "Charger SRT-8"): "Sedan",
    ("FIAT", "500 Abarth"): "Hatchback",
    ("Infiniti", "G Coupe IPL"): "Coupe",
    ("Jaguar", "XK XKR"): "Coupe",
    ("Lamborghini", "Gallardo LP 570-4 Superleggera"): "Coupe",
}

_YEAR = re.compile(r"(19|20)\d\d")
_MAKES_BY_WORDS = {tuple(make.casefold().split()): make for make in MULTI_WORD_MAKES}
_BODY_BY_WORDS = {tuple(phrase.casefold().split()): body for phrase, body in BODY_PHRASES.items()}
_LONGEST_PHRASE = max(len(words) for words in _BODY_BY_WORDS)
_BODY_BY_MODEL = {
    (make.casefold(), model.casefold()): body for (make, model), body in BODY_TYPE_BY_MODEL.items()
}

_FORMAT = "carid.taxonomy"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CarName:
    """One class name split into its parts.

    name: the class name exactly as given. make: as spelled in the name ("FIAT", "smart"), or
    "Unknown" for an empty name. model: the words between make and body phrase ("" when none).
    body_type: one of `BODY_TYPES`, or "Unknown". year: model year, or None.
    parsed: True when make, model, body type and year were all found.
    """

    name: str
    make: str
    model: str
    body_type: str
    year: int | None
    parsed: bool

    def level_value(self, level: str) -> str:
        """This name's value at a taxonomy level, as a string (year "Unknown" when absent)."""
        if level == "class":
            return self.name
        if level == "make":
            return self.make
        if level == "body_type":
            return self.body_type
        if level == "year":
            return UNKNOWN if self.year is None else str(self.year)
        raise ValueError(f"unknown taxonomy level {level!r}; expected one of {', '.join(LEVELS)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "make": self.make,
            "model": self.model,
            "body_type": self.body_type,
            "year": self.year,
            "parsed": self.parsed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "car name") -> CarName:
        """Inverse of `to_dict`; `where` names the record in error messages."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        missing = [key for key in ("name", "make", "model", "body_type", "year", "parsed") if key not in data]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        for key in ("name", "make", "model", "body_type"):
            if not isinstance(data[key], str):
                raise ValueError(f"{where}: field {key!r} must be a string, got {data[key]!r}")
        year = data["year"]
        if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
            raise ValueError(f"{where}: field 'year' must be an integer or null, got {year!r}")
        if not isinstance(data["parsed"], bool):
            raise ValueError(f"{where}: field 'parsed' must be true or false, got {data['parsed']!r}")
        if data["body_type"] not in (*BODY_TYPES, UNKNOWN):
            raise ValueError(
                f"{where}: body_type {data['body_type']!r} is not one of {', '.join((*BODY_TYPES, UNKNOWN))}"
            )
        return cls(
            name=data["name"],
            make=data["make"],
            model=data["model"],
            body_type=data["body_type"],
            year=year,
            parsed=data["parsed"],
        )


def parse_car_name(name: str) -> CarName:
    """Split "<Make> <Model> <Body> <Year>" into its parts; never raises on odd names.

    "Ford F-150 Regular Cab 2012" -> make "Ford", model "F-150", body type "Pickup", year 2012.
    """
    words = name.split()
    year = None
    if words and _YEAR.fullmatch(words[-1]):
        year = int(words[-1])
        words = words[:-1]
    make, rest = _split_make(words)
    body_type, model_words = _split_body(rest)
    if body_type is None:
        body_type = _BODY_BY_MODEL.get((make.casefold(), " ".join(rest).casefold()))
        model_words = rest
    model = " ".join(model_words)
    parsed = bool(make) and bool(model) and body_type is not None and year is not None
    return CarName(
        name=name,
        make=make or UNKNOWN,
        model=model,
        body_type=body_type or UNKNOWN,
        year=year,
        parsed=parsed,
    )


def _split_make(words: Sequence[str]) -> tuple[str, list[str]]:
    """(make, remaining words): a known multi-word make if the name starts with one, else the first word."""
    for length in sorted({len(key) for key in _MAKES_BY_WORDS}, reverse=True):
        if len(words) >= length and tuple(word.casefold() for word in words[:length]) in _MAKES_BY_WORDS:
            return " ".join(words[:length]), list(words[length:])
    if not words:
        return "", []
    return words[0], list(words[1:])


def _split_body(words: Sequence[str]) -> tuple[str | None, list[str]]:
    """(body type, model words) from the longest body phrase ending the words.

    A phrase that leaves at least one model word is preferred ("Ram C/V Cargo Van Minivan" -> model
    "C/V"); a phrase that is all there is still gives the body type, with an empty model.
    """
    folded = [word.casefold() for word in words]
    whole_match: str | None = None
    for length in range(min(_LONGEST_PHRASE, len(words)), 0, -1):
        body_type = _BODY_BY_WORDS.get(tuple(folded[-length:]))
        if body_type is None:
            continue
        if length < len(words):
            return body_type, list(words[:-length])
        whole_match = body_type
    return whole_match, [] if whole_match else list(words)


@dataclass(frozen=True)
class TaxonomySummary:
    """Counts of classes per body type (canonical order), make and year, plus the unparsed names."""

    num_classes: int
    body_type_counts: Mapping[str, int]
    make_counts: Mapping[str, int]
    year_counts: Mapping[str, int]
    unparsed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "body_type_counts": dict(self.body_type_counts),
            "make_counts": dict(self.make_counts),
            "year_counts": dict(self.year_counts),
            "unparsed": list(self.unparsed),
        }


@dataclass(frozen=True)
class Taxonomy:
    """The classes of one model and their make / body type / year.

    classes: class names in class-index order (the order of the model's outputs).
    entries: `parse_car_name` of each class, aligned with `classes`.
    """

    classes: tuple[str, ...]
    entries: tuple[CarName, ...]

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.entries):
            raise ValueError(f"taxonomy has {len(self.classes)} classes but {len(self.entries)} entries")
        for index, (class_name, entry) in enumerate(zip(self.classes, self.entries, strict=True)):
            if entry.name != class_name:
                raise ValueError(
                    f"taxonomy entry {index} is for {entry.name!r}, but class {index} is {class_name!r}"
                )
        duplicates = sorted(name for name, count in Counter(self.classes).items() if count > 1)
        if duplicates:
            raise ValueError(
                f"taxonomy class names must be unique; repeated: {', '.join(map(repr, duplicates))}"
            )

    @classmethod
    def from_class_names(cls, names: Iterable[str]) -> Taxonomy:
        """Parse every class name; the order of `names` is the class-index order."""
        classes = tuple(names)
        for index, name in enumerate(classes):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"class {index}: class name must be a non-empty string, got {name!r}")
        return cls(classes=classes, entries=tuple(parse_car_name(name) for name in classes))

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def labels(self, level: str) -> list[str]:
        """Each class's value at `level`, aligned with `classes`."""
        return [entry.level_value(level) for entry in self.entries]

    def values(self, level: str) -> list[str]:
        """The distinct values at `level`, in a fixed order.

        class: the classes in class-index order; body_type: canonical `BODY_TYPES` order;
        make: alphabetical ignoring case; year: ascending. "Unknown", when present, comes last.
        """
        labels = self.labels(level)
        if level == "class":
            return list(self.classes)
        present = set(labels)
        if level == "body_type":
            ordered = [body for body in BODY_TYPES if body in present]
        else:
            ordered = sorted(present - {UNKNOWN}, key=lambda value: (value.casefold(), value))
        if UNKNOWN in present and UNKNOWN not in ordered:
            ordered.append(UNKNOWN)
        return ordered

    def index_matrix(self, level: str) -> np.ndarray:
        """int64 [num_classes]: for each class index, the index of its value in `values(level)`."""
        position = {value: index for index, value in enumerate(self.values(level))}
        return np.array([position[label] for label in self.labels(level)], dtype=np.int64)

    @property
    def unparsed(self) -> tuple[str, ...]:
        """Class names that did not parse fully (body type or year missing), in class order."""
        return tuple(entry.name for entry in self.entries if not entry.parsed)

    def summary(self) -> TaxonomySummary:
        def counts(level: str) -> dict[str, int]:
            counter = Counter(self.labels(level))
            return {value: counter[value] for value in self.values(level)}

        return TaxonomySummary(
            num_classes=self.num_classes,
            body_type_counts=counts("body_type"),
            make_counts=counts("make"),
            year_counts=counts("year"),
            unparsed=self.unparsed,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"format", "version", "classes": [...], "entries": [CarName.to_dict(), ...]}."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "classes": list(self.classes),
            "entries": [entry.to_dict() for entry in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Taxonomy:
        """Inverse of `to_dict`. The stored entries are used as they are (not re-parsed), so a
        checkpoint keeps the taxonomy it was trained with; without "entries" the classes are parsed.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"taxonomy: expected an object, got {type(data).__name__}")
        if data.get("format", _FORMAT) != _FORMAT:
            raise ValueError(f"taxonomy: format is {data.get('format')!r}, expected {_FORMAT!r}")
        if data.get("version", _FORMAT_VERSION) != _FORMAT_VERSION:
            raise ValueError(
                f"taxonomy: version {data.get('version')!r} is not supported (expected {_FORMAT_VERSION})"
            )
        classes = data.get("classes")
        if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
            raise ValueError("taxonomy: field 'classes' must be a list of strings")
        if "entries" not in data:
            return cls.from_class_names(classes)
        entries = data["entries"]
        if not isinstance(entries, list):
            raise ValueError("taxonomy: field 'entries' must be a list")
        return cls(
            classes=tuple(classes),
            entries=tuple(
                CarName.from_dict(entry, where=f"taxonomy entry {index}")
                for index, entry in enumerate(entries)
            ),
        )


def roll_up(probabilities: np.ndarray, taxonomy: Taxonomy, level: str) -> np.ndarray:
    """Sum class probabilities into probabilities of the values at `level`.

    probabilities: [N, C] (or [C]) with C = taxonomy.num_classes, columns in class-index order.
    Returns [N, V] (or [V]) with columns in `taxonomy.values(level)` order; each row keeps the sum
    of its input row. Float32 input stays float32, anything else becomes float64.
    """
    array = np.asarray(probabilities)
    if array.ndim not in (1, 2) or array.shape[-1] != taxonomy.num_classes:
        raise ValueError(
            f"roll_up: probabilities must have shape [N, {taxonomy.num_classes}] or "
            f"[{taxonomy.num_classes}], got {list(array.shape)}"
        )
    dtype = array.dtype if array.dtype == np.float32 else np.float64
    class_to_value = taxonomy.index_matrix(level)
    one_hot = np.zeros((taxonomy.num_classes, len(taxonomy.values(level))), dtype=dtype)
    one_hot[np.arange(taxonomy.num_classes), class_to_value] = 1
    return array.astype(dtype, copy=False) @ one_hot
