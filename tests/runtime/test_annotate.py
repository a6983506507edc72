"""What `carid predict` shows: one CSV row and one numbered box per car, the best guess beside every
"not sure", and names that tell rows apart."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from rich.console import Console

from carid.runtime.annotate import (
    BOX_COLOUR,
    UNKNOWN_COLOUR,
    annotate_image,
    answer_text,
    caption,
    print_predictions,
    shown_names,
)
from carid.runtime.predict_io import prediction_rows
from carid.runtime.results import Box, ClassScore, Prediction

VOLVO = ClassScore(index=3, label="Volvo 240 Sedan 1993", probability=0.47)
AUDI = ClassScore(index=1, label="Audi TTS Coupe 2012", probability=0.87)


def car(box: tuple[float, ...], score: float, sure: bool = True) -> Prediction:
    top = AUDI if sure else VOLVO
    return Prediction(
        source="street.jpg",
        label=top.label if sure else "unknown",
        probability=top.probability,
        unknown=not sure,
        top_k=(top,),
        box=Box(*box),
        detection_score=score,
        reason=None if sure else "the top class's probability 0.470 is under the unknown threshold 0.600",
    )


def street() -> Prediction:
    cars = (car((10, 10, 60, 40), 0.9), car((70, 20, 90, 35), 0.6, sure=False))
    return Prediction(source="street.jpg", label=cars[0].label, probability=0.87, box=cars[0].box, cars=cars)


def test_one_csv_row_per_car_and_one_for_a_photo_without_car() -> None:
    rows = prediction_rows(street())
    assert [row["car"] for row in rows] == [1, 2]
    assert [row["detection_score"] for row in rows] == [0.9, 0.6]
    assert [row["label"] for row in rows] == ["Audi TTS Coupe 2012", "unknown"]
    assert rows[1]["class"] == "Volvo 240 Sedan 1993" and rows[1]["unknown"] == "true"
    assert [row["x1"] for row in rows] == [10, 70]
    empty = Prediction(source="road.jpg", reason="no car found: ...", cars=())
    [row] = prediction_rows(empty)
    assert (
        row["car"] == ""
        and row["label"] == ""
        and row["reason"] == "no car found: ..."
        and row["unknown"] == ""
    )
    single = Prediction(source="crop.jpg", label="Audi TTS Coupe 2012", probability=0.9, top_k=(AUDI,))
    [row] = prediction_rows(single)
    assert row["car"] == 1 and row["detection_score"] == ""


def test_not_sure_reads_as_a_guess_not_as_a_percentage_of_unknown() -> None:
    assert answer_text(car((0, 0, 1, 1), 0.5, sure=False)) == "not sure (47%): Volvo 240 Sedan 1993?"
    assert caption(car((0, 0, 1, 1), 0.5), 2) == "2  Audi TTS Coupe 2012 87%"
    assert answer_text(Prediction(source="x", reason="no car found: y", cars=())) == "no car found: y"


def test_every_car_gets_its_box_drawn() -> None:
    photo = Image.new("RGB", (100, 60), (0, 0, 0))
    drawn = annotate_image(street(), photo)
    assert drawn.getpixel((59, 39)) == BOX_COLOUR  # bottom-right corner of car 1
    assert drawn.getpixel((89, 34)) == UNKNOWN_COLOUR  # car 2, not sure
    blank = annotate_image(Prediction(source="x", reason="no car found", cars=()), photo)
    assert blank.getpixel((1, 1)) == UNKNOWN_COLOUR  # the reason's tag in the corner


def test_table_tells_photos_apart_and_shows_the_best_guess(tmp_path: Path) -> None:
    folder = tmp_path / "a-long-folder-name-that-would-fill-the-column" / "photos"
    folder.mkdir(parents=True)
    paths = [folder / "north" / "one.jpg", folder / "south" / "one.jpg"]
    for path in paths:
        path.parent.mkdir()
        Image.new("RGB", (8, 8)).save(path)
    predictions = [
        Prediction(source=str(paths[0]), label="unknown", probability=0.47, unknown=True, top_k=(VOLVO,)),
        Prediction(source=str(paths[1]), reason="no car found: none above 0.40", cars=()),
    ]
    assert shown_names(predictions) == ["north/one.jpg", "south/one.jpg"]
    console = Console(record=True, width=80)
    print_predictions(predictions, console)
    text = console.export_text()
    assert "north/one.jpg" in text and "south/one.jpg" in text
    assert "not sure (47%):" in text and "Volvo 240" in text
    assert "no car found" in text
