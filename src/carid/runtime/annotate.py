"""What `carid predict` shows people: annotated copies of the photos and the console table.

    caption(car)                  "1  Audi TTS Coupe 2012  87%" or "2  not sure (47%): Volvo 240 Sedan 1993?"
    annotate_image(prediction, photo) -> a copy with every car's box, its number and its caption
    write_annotated(predictions, out_dir) -> the annotated copies, keeping the inputs' folders
    print_predictions(predictions, console) -> a rich table, one row per car

An answer below the unknown threshold is written "not sure" with its best guess and that guess's
probability ("not sure (47%): Volvo 240 Sedan 1993?"), never "unknown 79%", which reads as "79 %
unknown". The table names each photo by its path below the photos' common folder (the part that
tells rows apart) and folds long names instead of cutting them. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from carid.data.text import console_text
from carid.images import ImageError, load_rgb
from carid.runtime.results import LevelScore, Prediction

BOX_COLOUR = (255, 200, 0)
UNKNOWN_COLOUR = (255, 80, 80)


def answer_text(car: Prediction) -> str:
    """ "Audi TTS Coupe 2012 87%", "not sure (47%): Volvo 240 Sedan 1993?" or the reason/error."""
    if not car.ok:
        return f"error: {car.error}"
    if car.label is None or car.probability is None:
        return car.reason or "no answer"
    if car.unknown and car.top1 is not None:
        return f"not sure ({car.top1.probability:.0%}): {car.top1.label}?"
    return f"{car.label} {car.probability:.0%}"


def caption(car: Prediction, number: int | None = None) -> str:
    """A car's caption on an annotated photo: its number (when the photo has several) and answer."""
    text = answer_text(car)
    return text if number is None else f"{number}  {text}"


def annotate_image(prediction: Prediction, image: Image.Image) -> Image.Image:
    """A copy of the photo (RGB, original pixels) with every car's box, number and caption drawn;
    a photo with no car gets its reason written in the corner."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    side = min(canvas.size)
    line = max(2, round(side / 200))
    font = _font(max(12, round(side / 30)))
    cars = prediction.all_cars
    numbered = prediction.cars is not None
    if not cars:
        _label(draw, canvas, caption(prediction), (0.0, 0.0), UNKNOWN_COLOUR, line, font)
        return canvas
    for car in cars:
        colour = UNKNOWN_COLOUR if car.unknown else BOX_COLOUR
        if car.box is not None:
            draw.rectangle(car.box.to_list(), outline=colour, width=line)
    # captions after every box, so that no box is drawn over a caption
    for number, car in enumerate(cars, start=1):
        colour = UNKNOWN_COLOUR if car.unknown else BOX_COLOUR
        anchor = (car.box.x1, car.box.y1) if car.box is not None else (0.0, 0.0)
        _label(draw, canvas, caption(car, number if numbered else None), anchor, colour, line, font)
    return canvas


def _label(
    draw: ImageDraw.ImageDraw,
    canvas: Image.Image,
    text: str,
    anchor: tuple[float, float],
    colour: tuple[int, int, int],
    line: int,
    font: Any,
) -> None:
    """`text` on a filled tag just above `anchor` (below it at the photo's top edge), kept inside."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 2 * line, bottom - top + 2 * line
    x = min(max(0.0, anchor[0]), max(0.0, canvas.width - width))
    y = anchor[1] - height if anchor[1] - height >= 0 else anchor[1]
    draw.rectangle([x, y, x + width, y + height], fill=colour)
    draw.text((x + line - left, y + line - top), text, fill=(0, 0, 0), font=font)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def annotated_path(source: Path, out_dir: Path, root: Path | None) -> Path:
    """Where the annotated copy of `source` goes: its path under `root` (else its name) in out_dir;
    suffixes Pillow may not write become .png."""
    try:
        relative = source.resolve().relative_to(root) if root is not None else Path(source.name)
    except ValueError:
        relative = Path(source.name)
    suffix = source.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png", ".bmp", ".webp"):
        relative = relative.with_suffix(".png")
    return out_dir / relative


def write_annotated(predictions: Sequence[Prediction], out_dir: Path | str) -> list[Path]:
    """Annotated copies of the predicted files (failed ones skipped) under out_dir, keeping the
    folder structure below the inputs' common folder."""
    out_dir = Path(out_dir)
    good = [p for p in predictions if p.ok and Path(p.source).is_file()]
    if not good:
        return []
    root = _common_folder([p.source for p in good])
    written: list[Path] = []
    for prediction in good:
        source = Path(prediction.source)
        target = annotated_path(source, out_dir, root)
        try:
            image = load_rgb(source)
        except ImageError:
            continue  # it decoded for the prediction; a file changed meanwhile is simply not annotated
        target.parent.mkdir(parents=True, exist_ok=True)
        annotate_image(prediction, image).save(target)
        written.append(target)
    return written


def _common_folder(sources: Sequence[str]) -> Path | None:
    parents = [str(Path(source).resolve().parent) for source in sources if Path(source).is_file()]
    return Path(os.path.commonpath(parents)) if parents else None


def shown_names(predictions: Sequence[Prediction]) -> list[str]:
    """How each photo is named in the table: its path below the photos' common folder (a name, or
    sub/name), so that rows differ in what is shown; inputs that are not files keep their source."""
    root = _common_folder([p.source for p in predictions])
    names = []
    for prediction in predictions:
        path = Path(prediction.source)
        try:
            names.append(
                path.resolve().relative_to(root).as_posix() if root and path.is_file() else str(path)
            )
        except ValueError:
            names.append(str(path))
    return names


def print_predictions(predictions: Sequence[Prediction], console: Any, limit: int = 20) -> None:
    """A rich table of the first `limit` photos, one row per car: photo, car number, answer (the best
    guess beside every "not sure"), probability, make, body type and year each with its rolled-up
    probability ("Audi 0.91"), box; columns empty for every row are left out, so that names fit.
    Names, labels and errors are shown as text: rich markup escaped, control characters as \\x1b,
    \\n, ... (`console_text`)."""
    from rich.table import Table

    headers = ("photo", "car", "answer", "prob.", "make", "body type", "year", "box (px)")
    rows: list[list[str]] = []
    shown = predictions[:limit]
    for name, prediction in zip(shown_names(shown), shown, strict=True):
        photo = console_text(name)
        if not prediction.ok:
            rows.append([photo, "", f"[red]{console_text(prediction.error or '')}[/]"])
            continue
        cars = prediction.all_cars
        if not cars:
            rows.append([photo, "-", console_text(prediction.reason or "no car found")])
            continue
        for number, car in enumerate(cars, start=1):
            answer = console_text(answer_text(car) if car.unknown else car.label or "")
            rows.append(
                [
                    photo if number == 1 else "",
                    str(number),
                    f"[yellow]{answer}[/]" if car.unknown else answer,
                    f"{car.probability:.3f}" if car.probability is not None else "",
                    _level_cell(car.make),
                    _level_cell(car.body_type),
                    _level_cell(car.year),
                    "" if car.box is None else " ".join(f"{v:.0f}" for v in car.box.to_list()),
                ]
            )
    used = [i for i in range(len(headers)) if i in (0, 2) or any(i < len(row) and row[i] for row in rows)]
    table = Table(*(headers[i] for i in used))
    longest = max((len(row[0]) for row in rows), default=5)
    table.columns[0].min_width = min(longest, 28)
    for column in table.columns:
        column.overflow = "fold"
    for row in rows:
        table.add_row(*(row[i] if i < len(row) else "" for i in used))
    console.print(table)
    if len(predictions) > limit:
        console.print(f"... and {len(predictions) - limit} more")


def _level_cell(score: LevelScore | None) -> str:
    """ "Audi 0.912" for a taxonomy level's value and probability (shown as text), "" when absent."""
    return "" if score is None else f"{console_text(score.value)} {score.probability:.3f}"
