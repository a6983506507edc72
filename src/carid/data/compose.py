"""Boxes for crop-only datasets: paste labelled object crops onto real background photos.

A dataset of photos already cropped to the car (the Stanford crops, a scraped folder of close-ups)
has no box left to learn, so a network trained on it cannot localize. `compose` pastes each crop,
scaled and placed at random (seeded), onto a background photo with no car in it (for example the
car-free frames of a street dataset); where it was pasted is the box. The result is written in
carid's ``csv-boxes`` format (``images/`` + ``boxes.csv``: ``image_id,xmin,ymin,xmax,ymax,label``)
with a ``manifest.json`` saying which crop went onto which background where, so
`carid train` reads it like any boxed dataset.

The paste border is feathered (a blurred alpha mask) so the network cannot find the car by a sharp
rectangular seam alone; real photos have no seam at all, which is why the figures on real uncropped
photos (benchmarks/RESULTS.md) are the ones to trust.

Written by hand: albumentations has no copy-paste with a box target for whole-image objects, and
the job is a few Pillow calls. Unreadable crops or backgrounds are reported naming the file and
skipped; the rest of the work goes on. Nothing is written outside ``out``.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageFilter

from carid.data.samples import Sample
from carid.images import IMAGE_SUFFIXES, ImageError, load_rgb

BOX_CSV = "boxes.csv"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ComposeConfig:
    """How crops are placed.

    per_object: composites written per crop (each on a background drawn at random).
    width_range: the pasted crop's width as a share of the background's width, drawn uniformly;
        the aspect ratio is kept and the crop is shrunk further when it would be taller than the
        background.
    max_side: backgrounds are shrunk so their longer side is at most this (pixels).
    feather: blur radius (pixels) of the paste mask's border; 0 pastes a hard rectangle.
    hflip: probability of mirroring the crop.
    """

    seed: int = 0
    per_object: int = 1
    width_range: tuple[float, float] = (0.35, 0.9)
    max_side: int = 512
    feather: float = 3.0
    hflip: float = 0.5
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.width_range)
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"ComposeConfig.width_range: need 0 < min <= max <= 1, got {self.width_range!r}")
        object.__setattr__(self, "width_range", (low, high))
        if self.per_object < 1:
            raise ValueError(f"ComposeConfig.per_object: must be >= 1, got {self.per_object}")
        if self.max_side < 32:
            raise ValueError(f"ComposeConfig.max_side: must be >= 32 pixels, got {self.max_side}")
        if self.feather < 0 or not 0.0 <= self.hflip <= 1.0:
            raise ValueError("ComposeConfig: feather must be >= 0 and hflip in [0, 1]")


@dataclass
class ComposeReport:
    """What `compose` wrote and what it skipped (each problem names the file)."""

    out: Path
    written: int = 0
    objects: int = 0
    backgrounds: int = 0
    problems: list[str] = field(default_factory=list)


def list_backgrounds(folder: Path, exclude: Iterable[str] = ()) -> list[Path]:
    """Image files in `folder` (sorted), leaving out file names or stems in `exclude`."""
    skip = set(exclude)
    return [
        p
        for p in sorted(Path(folder).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in skip and p.stem not in skip
    ]


def _load_backgrounds(
    paths: Sequence[Path], max_side: int, report: ComposeReport
) -> list[tuple[Path, Image.Image]]:
    loaded = []
    for path in paths:
        try:
            image = load_rgb(path)
        except ImageError as exc:
            report.problems.append(f"background skipped: {exc}")
            continue
        scale = min(1.0, max_side / max(image.size))
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
        loaded.append((path, image))
    return loaded


def paste(
    background: Image.Image, crop: Image.Image, rng: random.Random, config: ComposeConfig
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """`crop` pasted onto a copy of `background`; returns the composite and the box (x1, y1, x2, y2).

    The box is in pixels of the composite, xyxy with x2/y2 exclusive (carid.boxes conventions).
    """
    canvas_w, canvas_h = background.size
    width = rng.uniform(*config.width_range) * canvas_w
    height = width * crop.height / crop.width
    if height > canvas_h:
        width, height = width * canvas_h / height, float(canvas_h)
    width_px, height_px = max(1, round(width)), max(1, round(height))
    if rng.random() < config.hflip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crop = crop.resize((width_px, height_px), Image.Resampling.BILINEAR)
    x1 = rng.randint(0, canvas_w - width_px)
    y1 = rng.randint(0, canvas_h - height_px)
    mask = Image.new("L", (width_px, height_px), 255)
    if config.feather > 0 and min(width_px, height_px) > 4 * config.feather:
        inner = round(config.feather)
        mask = Image.new("L", (width_px, height_px), 0)
        mask.paste(255, (inner, inner, width_px - inner, height_px - inner))
        mask = mask.filter(ImageFilter.GaussianBlur(config.feather / 2))
    composite = background.copy()
    composite.paste(crop, (x1, y1), mask)
    return composite, (x1, y1, x1 + width_px, y1 + height_px)


def compose(
    objects: Iterable[Sample],
    backgrounds: Sequence[Path],
    out: Path,
    config: ComposeConfig | None = None,
    limit: int | None = None,
) -> ComposeReport:
    """Write composites of labelled `objects` on `backgrounds` into `out` (csv-boxes format).

    Samples without a label are skipped (reported); an existing boxes.csv in `out` is refused so a
    second run cannot mix two datasets.
    """
    config = config or ComposeConfig()
    out = Path(out)
    report = ComposeReport(out=out)
    if (out / BOX_CSV).exists():
        raise FileExistsError(f"{out / BOX_CSV}: already exists; compose into an empty folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    pool = _load_backgrounds(backgrounds, config.max_side, report)
    report.backgrounds = len(pool)
    if not pool:
        raise ValueError(f"no usable background among {len(backgrounds)} file(s)")
    rng = random.Random(config.seed)
    rows: list[list[object]] = []
    manifest: list[dict[str, object]] = []
    for sample in objects:
        if limit is not None and report.objects >= limit:
            break
        if sample.label is None:
            report.problems.append(f"{sample.path}: no label, skipped")
            continue
        try:
            crop = load_rgb(sample.path)
        except ImageError as exc:
            report.problems.append(f"object skipped: {exc}")
            continue
        report.objects += 1
        for k in range(config.per_object):
            background_path, background = pool[rng.randrange(len(pool))]
            composite, box = paste(background, crop, rng, config)
            name = f"{sample.path.stem}_{k}.jpg"
            composite.save(out / "images" / name, format="JPEG", quality=config.jpeg_quality)
            rows.append([name, *box, sample.label])
            manifest.append(
                {
                    "image": name,
                    "object": str(sample.path),
                    "background": str(background_path),
                    "box": list(box),
                }
            )
            report.written += 1
    with open(out / BOX_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "xmin", "ymin", "xmax", "ymax", "label"])
        writer.writerows(rows)
    summary = {"config": asdict(config), "problems": report.problems, "images": manifest}
    (out / MANIFEST).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return report
