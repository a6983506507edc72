"""The pipeline folder format: a car detector and an identifier in one folder, read and written here.

A photo of a street holds several cars; a pipeline answers it the way commercial car-recognition
services do: find every car (the detector), crop each one as the identifier's training crops were
made, and name it (the identifier). `carid pipeline DETECTOR IDENTIFIER --out DIR` builds one;
`carid.runtime.pipeline.PipelinePredictor` reads it (`Predictor.load(DIR)` hands it over), and so do
`carid predict` and `carid serve`.

    DIR/pipeline.json
      {
        "format": "carid.pipeline", "version": 1,
        "detector": "detector",          a detector bundle folder (model.json "format": "carid.detector")
        "identifier": "identifier",      any classifier carid exports: a bundle (with its enrolled
                                         classes and calibration) or an ensemble folder
        "crop": {"margin": 0.0, "square": false, "min_side": 16},
        "max_cars": 20,                  the largest cars kept per photo
        "created": "...", "versions": {...}, "extra": {...}
      }
    DIR/detector/    copied from DETECTOR
    DIR/identifier/  copied from IDENTIFIER

The crop rule (`CropRule`) is how a detected box becomes the identifier's input. It must match how
the identifier's training crops were made: the Stanford Cars crops are the official box itself
(margin 0, not squared); a dataset cropped with context would use a margin. The builder writes the
whole folder beside its target and renames it into place, so a reader finds the old pipeline or the
new one, never half of one. Torch-free.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carid import __version__
from carid.artifacts.bundle import ENSEMBLE_FILE, METADATA_FILE
from carid.errors import CaridError
from carid.files import make_staging_folder, move_folder_into_place, write_json

PIPELINE_FORMAT = "carid.pipeline"
PIPELINE_VERSION = 1
PIPELINE_FILE = "pipeline.json"
DETECTOR_DIR = "detector"
IDENTIFIER_DIR = "identifier"
DETECTOR_FORMAT = "carid.detector"


class PipelineError(CaridError, ValueError):
    """A pipeline folder (or the parts given to build one) that cannot be used; names file and field."""


def is_pipeline_dir(path: Path | str) -> bool:
    """A pipeline folder: one with pipeline.json."""
    path = Path(path)
    return path.is_dir() and (path / PIPELINE_FILE).is_file()


@dataclass(frozen=True)
class CropRule:
    """How a detected box is cut out of the photo for the identifier.

    margin: fraction of the box's width (height) added on the left and right (top and bottom).
    square: grow the shorter side of the (margined) box to the longer one, centred.
    min_side: boxes whose shorter side, in photo pixels, is under this are too small to name: such
        a car is listed with its box and answered "unknown" with the reason.
    """

    margin: float = 0.0
    square: bool = False
    min_side: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 1.0:
            raise PipelineError(f"crop margin must be between 0 and 1, got {self.margin}")
        if self.min_side < 1:
            raise PipelineError(f"crop min_side must be at least 1, got {self.min_side}")

    def region(self, box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, ...]:
        """The integer pixel region (left, top, right, bottom) to crop for `box` in a width x height
        photo: the box with its margin (and squared), clipped to the photo, at least 1 px."""
        x1, y1, x2, y2 = box
        box_width, box_height = x2 - x1, y2 - y1
        x1, x2 = x1 - self.margin * box_width, x2 + self.margin * box_width
        y1, y2 = y1 - self.margin * box_height, y2 + self.margin * box_height
        if self.square:
            side = max(x2 - x1, y2 - y1)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            x1, x2, y1, y2 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
        left = min(max(0, round(x1)), width - 1)
        top = min(max(0, round(y1)), height - 1)
        right = max(min(width, round(x2)), left + 1)
        bottom = max(min(height, round(y2)), top + 1)
        return left, top, right, bottom

    def to_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "square": self.square, "min_side": self.min_side}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "crop") -> CropRule:
        unknown = set(data) - {"margin", "square", "min_side"}
        if unknown:
            raise PipelineError(f"{where}: unknown field(s) {sorted(unknown)}")
        try:
            return cls(
                margin=float(data.get("margin", 0.0)),
                square=bool(data.get("square", False)),
                min_side=int(data.get("min_side", 16)),
            )
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Pipeline:
    """A pipeline folder, validated: where its parts are and how detections are cropped."""

    path: Path
    crop: CropRule = field(default_factory=CropRule)
    max_cars: int = 20
    created: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def detector(self) -> Path:
        return self.path / DETECTOR_DIR

    @property
    def identifier(self) -> Path:
        return self.path / IDENTIFIER_DIR

    @property
    def metadata_path(self) -> Path:
        return self.path / PIPELINE_FILE

    @classmethod
    def load(cls, path: Path | str) -> Pipeline:
        """Read and validate DIR/pipeline.json (or the file itself); errors name the file and field."""
        path = Path(path)
        folder = path.parent if path.name == PIPELINE_FILE else path
        metadata_path = folder / PIPELINE_FILE
        try:
            data = json.loads(metadata_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PipelineError(f"{folder}: not a pipeline folder (no {PIPELINE_FILE})") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PipelineError(f"{metadata_path}: cannot read it ({exc})") from None
        if not isinstance(data, dict):
            raise PipelineError(f"{metadata_path}: expected a JSON object")
        if data.get("format") != PIPELINE_FORMAT:
            raise PipelineError(f"{metadata_path}: field 'format' must be {PIPELINE_FORMAT!r}")
        if data.get("version") != PIPELINE_VERSION:
            raise PipelineError(
                f"{metadata_path}: field 'version' is {data.get('version')!r}; this carid reads "
                f"version {PIPELINE_VERSION}"
            )
        for name, expected in (("detector", DETECTOR_DIR), ("identifier", IDENTIFIER_DIR)):
            if data.get(name) != expected:
                raise PipelineError(f"{metadata_path}: field {name!r} must be {expected!r}")
        crop = data.get("crop", {})
        if not isinstance(crop, dict):
            raise PipelineError(f"{metadata_path}: field 'crop' must be an object")
        max_cars = data.get("max_cars", 20)
        if not isinstance(max_cars, int) or isinstance(max_cars, bool) or max_cars < 1:
            raise PipelineError(f"{metadata_path}: field 'max_cars' must be a positive integer")
        pipeline = cls(
            path=folder,
            crop=CropRule.from_dict(crop, where=f"{metadata_path}: field 'crop'"),
            max_cars=max_cars,
            created=data.get("created"),
            versions=dict(data.get("versions") or {}),
            extra=dict(data.get("extra") or {}),
        )
        check_detector(pipeline.detector)
        check_identifier(pipeline.identifier)
        return pipeline

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PIPELINE_FORMAT,
            "version": PIPELINE_VERSION,
            "detector": DETECTOR_DIR,
            "identifier": IDENTIFIER_DIR,
            "crop": self.crop.to_dict(),
            "max_cars": self.max_cars,
            "created": self.created,
            "versions": dict(self.versions),
            "extra": dict(self.extra),
        }


def check_detector(folder: Path) -> None:
    """Raise PipelineError unless `folder` is a detector bundle (model.json with format carid.detector)."""
    metadata = folder / METADATA_FILE
    try:
        data = json.loads(metadata.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(
            f"{folder}: not a detector bundle (no {METADATA_FILE}); export a detector "
            "run with `carid export RUN`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{metadata}: cannot read it ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != DETECTOR_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise PipelineError(
            f"{folder}: not a detector bundle ({METADATA_FILE} 'format' is {found!r}, "
            f"expected {DETECTOR_FORMAT!r})"
        )


def check_identifier(folder: Path) -> None:
    """Raise PipelineError unless `folder` is a classifier bundle or an ensemble folder."""
    if (folder / ENSEMBLE_FILE).is_file():
        return
    metadata = folder / METADATA_FILE
    try:
        data = json.loads(metadata.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(
            f"{folder}: not an identifier (no {METADATA_FILE} or {ENSEMBLE_FILE}); give an exported "
            "classifier bundle or an ensemble folder"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{metadata}: cannot read it ({exc})") from None
    if not isinstance(data, dict) or data.get("format") == DETECTOR_FORMAT:
        raise PipelineError(f"{folder}: a detector bundle cannot be the identifier; give a classifier")


def _part_folder(path: Path, what: str) -> Path:
    """A bundle given as its folder, its model.json / ensemble.json, or a run folder with export/."""
    path = Path(path)
    if path.is_file() and path.name in (METADATA_FILE, ENSEMBLE_FILE):
        return path.parent
    if path.is_dir() and not (path / METADATA_FILE).is_file() and (path / "export" / METADATA_FILE).is_file():
        return path / "export"
    if not path.is_dir():
        raise PipelineError(f"{what} {path}: no such folder")
    return path


def build_pipeline(
    detector: Path | str,
    identifier: Path | str,
    out: Path | str,
    crop: CropRule | None = None,
    max_cars: int = 20,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Copy a detector bundle and an identifier (bundle or ensemble) into one pipeline folder `out`.

    Either part may be given as a run folder with an export. The folder is built beside `out` and
    renamed into place; an existing `out` is replaced only with `overwrite`. Returns the loaded
    pipeline (so a folder that was written is a folder that reads).
    """
    detector_dir = _part_folder(Path(detector), "detector")
    identifier_dir = _part_folder(Path(identifier), "identifier")
    check_detector(detector_dir)
    check_identifier(identifier_dir)
    out = Path(out)
    if out.exists() and not overwrite:
        raise PipelineError(
            f"{out}: exists already; refusing to replace it", hint="pass --force to replace it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_folder(out)
    try:
        shutil.copytree(detector_dir, staging / DETECTOR_DIR)
        shutil.copytree(identifier_dir, staging / IDENTIFIER_DIR)
        pipeline = Pipeline(
            path=out,
            crop=crop or CropRule(),
            max_cars=max_cars,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            versions={"carid": __version__},
            extra={
                "detector_source": str(detector_dir),
                "identifier_source": str(identifier_dir),
                **(extra or {}),
            },
        )
        write_json(staging / PIPELINE_FILE, pipeline.to_dict())
        move_folder_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Pipeline.load(out)
