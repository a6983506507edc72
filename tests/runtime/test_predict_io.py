"""Tests for carid.runtime.predict_io: gathering photos, CSV/JSON outputs, annotated copies, the whole run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carid.runtime.annotate import BOX_COLOUR, annotate_image, caption, print_predictions, write_annotated
from carid.runtime.predict_io import (
    CSV_COLUMNS,
    PREDICTIONS_FORMAT,
    InputError,
    gather_images,
    gather_inputs,
    run_predict,
    write_predictions,
)
from carid.runtime.predictor import Predictor
from tests.conftest import write_image
from tests.data.bad_entries import UNDECODABLE_SHOWN, deny_listing, fifo, symlink_loop, undecodable_file
from tests.runtime.test_predictor import CAR_CLASSES, stub_predictor


def test_gather_folders_globs_and_files(tmp_path: Path) -> None:
    a = write_image(tmp_path / "photos" / "a.jpg")
    b = write_image(tmp_path / "photos" / "nested" / "deeper" / "b.png")
    (tmp_path / "photos" / "readme.txt").write_text("x", encoding="utf-8")
    c = write_image(tmp_path / "more" / "c.png")
    d = write_image(tmp_path / "more" / "d.webp")
    odd = tmp_path / "odd.dat"
    odd.write_bytes(b"named explicitly: kept, it will get a per-image error")
    found = gather_images([tmp_path / "photos", str(tmp_path / "more" / "*.png"), odd, a])
    assert found == [a, b, c, odd], (
        "folder sorted and recursive, glob filtered, explicit file kept, no repeats"
    )
    assert gather_images([str(tmp_path / "**" / "*.webp")]) == [d]
    assert gather_images([str(tmp_path / "mo*")]) == [c, d], "a glob matching a folder takes its images"


def test_gather_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no photos given"):
        gather_images([])
    missing = tmp_path / "missing.jpg"
    with pytest.raises(InputError, match=f"{missing}: no such file or folder"):
        gather_images([missing])
    with pytest.raises(InputError, match="no image files match"):
        gather_images([str(tmp_path / "*.jpg")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="empty: no images in this folder"):
        gather_images([tmp_path / "empty"])


def _predictions(tmp_path: Path):
    photos = [
        write_image(tmp_path / "in" / f"{name}.png", size=(64, 48), seed=i) for i, name in enumerate("ab")
    ]
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_text("not a photo", encoding="utf-8")
    predictor, _ = stub_predictor(logits=[1.2, 1.2, 0.0, 1.5])
    return predictor, predictor.predict([photos[0], broken, photos[1]], top_k=3)


def test_csv_and_json_outputs_parse(tmp_path: Path) -> None:
    predictor, predictions = _predictions(tmp_path)
    csv_path = write_predictions(predictions, tmp_path / "out" / "p.csv")
    with csv_path.open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS and len(rows) == 3
    good, bad = rows[0], rows[1]
    first = predictions[0]
    assert good["path"] == first.source and good["label"] == "BMW M3 Coupe 2012" == good["class"]
    assert float(good["probability"]) == pytest.approx(first.probability, abs=1e-6)
    assert (good["make"], good["model"], good["body_type"], good["year"]) == ("Audi", "M3", "Coupe", "2012")
    assert float(good["make_probability"]) == pytest.approx(first.make.probability, abs=1e-6)
    assert first.body_type is not None and first.year is not None
    assert float(good["body_type_probability"]) == pytest.approx(first.body_type.probability, abs=1e-6)
    assert float(good["year_probability"]) == pytest.approx(first.year.probability, abs=1e-6)
    assert good["unknown"] == "false" and good["error"] == "" and good["reason"] == ""
    assert first.box is not None
    np.testing.assert_allclose(
        [float(good[k]) for k in ("x1", "y1", "x2", "y2")], first.box.to_list(), atol=0.01
    )
    assert float(good["total_ms"]) > 0
    assert bad["label"] == "" and "broken.jpg" in bad["error"] and bad["x1"] == ""

    json_path = write_predictions(predictions, tmp_path / "out" / "p.json", model=predictor.info())
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data["format"] == PREDICTIONS_FORMAT and data["model"]["class_names"] == list(CAR_CLASSES)
    assert data["predictions"] == [json.loads(json.dumps(p.to_dict())) for p in predictions]
    with pytest.raises(InputError, match=r"\.csv or \.json"):
        write_predictions(predictions, tmp_path / "p.txt")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.csv", "p.json"]


def test_annotated_copies(tmp_path: Path) -> None:
    _, predictions = _predictions(tmp_path)
    first = predictions[0]
    photo = Image.open(first.source).convert("RGB")
    drawn = annotate_image(first, photo)
    assert drawn.size == photo.size and drawn is not photo
    assert first.box is not None
    x2, y2 = int(first.box.x2) - 1, int(first.box.y2) - 1  # bottom-right corner: the box outline
    assert drawn.getpixel((x2, y2)) == BOX_COLOUR
    assert np.asarray(photo).tobytes() == np.asarray(Image.open(first.source).convert("RGB")).tobytes()
    assert caption(first).startswith("BMW M3 Coupe 2012 ") and caption(first).endswith("%")

    written = write_annotated(predictions, tmp_path / "annotated")
    assert sorted(p.name for p in written) == ["a.png", "b.png"], "failed photos are skipped"
    assert all(p.parent == tmp_path / "annotated" for p in written)
    assert Image.open(written[0]).size == (64, 48)


@pytest.mark.slow
def test_run_predict_end_to_end_on_the_tiny_bundle(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from tests.test_export import tiny_bundle_dir, tiny_run_dir

    bundle = tiny_bundle_dir(tmp_path_factory)
    photos = tiny_run_dir(tmp_path_factory).parent.parent / "data" / "images"
    seen: list[int] = []
    result = run_predict(
        bundle,
        [photos],
        top_k=2,
        batch_size=10,
        out=tmp_path / "p.json",
        annotate_dir=tmp_path / "annotated",
        progress=True,
        on_batch=lambda batch: seen.append(len(batch)),
    )
    assert seen == [10, 10, 4] and len(result.predictions) == 24 and result.num_failed == 0
    data = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert len(data["predictions"]) == 24 and data["model"]["backend"] == "onnx"
    assert all(len(p["top_k"]) == 2 for p in data["predictions"])
    assert len(result.annotated) == 24 and all(p.is_file() for p in result.annotated)
    assert result.to_dict()["num_images"] == 24
    with pytest.raises(InputError, match=r"expected a \.csv or \.json"):
        run_predict(bundle, [photos], out=tmp_path / "p.xml")


def test_printed_table_shows_each_level_with_its_probability(tmp_path: Path) -> None:
    from rich.console import Console

    _, predictions = _predictions(tmp_path)
    console = Console(record=True, width=250)
    print_predictions(predictions, console)
    text = console.export_text()
    first = predictions[0]
    assert first.make is not None and first.body_type is not None and first.year is not None
    for level in (first.make, first.body_type, first.year):
        assert f"{level.value} {level.probability:.3f}" in text


# --- entries that must not stop a run (issue 23) ---------------------------------------------------


def _stub_run(monkeypatch: pytest.MonkeyPatch, **changes):
    """run_predict's model loading replaced by a stub predictor; returns (predictor, backend)."""
    predictor, backend = stub_predictor(logits=[1.2, 1.2, 0.0, 1.5], **changes)
    monkeypatch.setattr(Predictor, "load", classmethod(lambda cls, *args, **kwargs: predictor))
    return predictor, backend


@pytest.mark.timeout(60)
def test_a_fifo_among_the_inputs_is_a_row_never_opened(tmp_path: Path, monkeypatch) -> None:
    a = write_image(tmp_path / "photos" / "a.jpg")
    pipe = fifo(tmp_path / "photos" / "x.jpg")
    gathered = gather_inputs([tmp_path / "photos", pipe])
    assert gathered.images == [a]
    assert [(s.path, s.kind) for s in gathered.skipped] == [(pipe, "not_a_regular_file")]
    assert gather_images([tmp_path / "photos"]) == [a]
    _stub_run(monkeypatch)
    result = run_predict("stub", [tmp_path / "photos"], out=tmp_path / "p.csv", progress=False)
    rows = {row["path"]: row for row in csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8"))}
    assert set(rows) == {str(a), str(pipe)} and result.num_failed == 1
    assert "not a regular file" in rows[str(pipe)]["error"] and "FIFO" in rows[str(pipe)]["error"]
    assert rows[str(a)]["error"] == ""


def test_unreadable_folders_and_loops_among_the_inputs_are_rows(tmp_path: Path, monkeypatch) -> None:
    a = write_image(tmp_path / "photos" / "a.jpg")
    write_image(tmp_path / "photos" / "locked" / "b.jpg")
    deny_listing(monkeypatch, tmp_path / "photos" / "locked")
    loop, _ = symlink_loop(tmp_path / "photos" / "links")
    gathered = gather_inputs([tmp_path / "photos"])
    assert gathered.images == [a]
    skipped = {s.path: s for s in gathered.skipped}
    assert skipped[tmp_path / "photos" / "locked"].kind == "unreadable_folder"
    assert "Permission denied" in skipped[tmp_path / "photos" / "locked"].reason
    assert loop not in skipped, "a link loop without an image name is no photo: passed over"


def test_undecodable_names_are_predicted_and_shown_escaped(tmp_path: Path, monkeypatch) -> None:
    a = write_image(tmp_path / "photos" / "a.jpg")
    odd = undecodable_file(tmp_path / "photos", a.read_bytes())
    _stub_run(monkeypatch)
    for name in ("p.csv", "p.json"):
        result = run_predict("stub", [tmp_path / "photos"], out=tmp_path / name, progress=False)
        assert result.num_failed == 0 and odd in [Path(p.source) for p in result.predictions]
    shown = str(odd.parent / UNDECODABLE_SHOWN)
    rows = list(csv.DictReader((tmp_path / "p.csv").open(encoding="utf-8")))
    assert [row["path"] for row in rows] == [str(a), shown]
    data = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert [p["source"] for p in data["predictions"]] == [str(a), shown]
    from rich.console import Console

    console = Console(record=True, width=300)
    print_predictions(result.predictions, console)
    assert UNDECODABLE_SHOWN in console.export_text()


def test_a_batch_that_raises_is_retried_a_photo_at_a_time(tmp_path: Path, monkeypatch) -> None:
    photos = [write_image(tmp_path / "photos" / f"{i}.jpg", seed=i) for i in range(5)]
    _, backend = _stub_run(monkeypatch)
    real_run = backend.run

    def run(batch):
        if len(batch) > 1:
            raise RuntimeError("the runtime choked on this batch")
        if batch[0].mean() == 0.0:  # no photo here is all black; exercised below
            raise RuntimeError("never")
        return real_run(batch)

    backend.run = run
    result = run_predict("stub", photos, batch_size=2, out=tmp_path / "p.csv", progress=False)
    assert [Path(p.source) for p in result.predictions] == photos and result.num_failed == 0

    backend.run = lambda batch: (_ for _ in ()).throw(MemoryError("out of memory"))
    result = run_predict("stub", photos, batch_size=2, out=tmp_path / "q.csv", progress=False)
    assert result.num_failed == 5 and all("MemoryError: out of memory" in p.error for p in result.predictions)
    assert len(list(csv.DictReader((tmp_path / "q.csv").open(encoding="utf-8")))) == 5


def test_finished_rows_survive_an_interrupted_run(tmp_path: Path, monkeypatch) -> None:
    photos = [write_image(tmp_path / "photos" / f"{i}.jpg", seed=i) for i in range(5)]
    _stub_run(monkeypatch)
    calls: list[int] = []

    def interrupt(batch) -> None:
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt

    for name in ("p.csv", "p.json"):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            run_predict("stub", photos, batch_size=2, out=tmp_path / name, on_batch=interrupt, progress=False)
        assert not (tmp_path / name).exists(), "no output that looks complete"
        partial = tmp_path / f"{name}.partial"
        lines = partial.read_text(encoding="utf-8").splitlines()
        assert len(lines) == (5 if name.endswith(".csv") else 4), "the two finished batches, row by row"
    rows = list(csv.DictReader((tmp_path / "p.csv.partial").open(encoding="utf-8")))
    assert [row["path"] for row in rows] == [str(p) for p in photos[:4]]
    records = [
        json.loads(line) for line in (tmp_path / "p.json.partial").read_text(encoding="utf-8").splitlines()
    ]
    assert [r["source"] for r in records] == [str(p) for p in photos[:4]]
    run_predict("stub", photos, out=tmp_path / "p.csv", progress=False)
    assert (tmp_path / "p.csv").is_file() and not (tmp_path / "p.csv.partial").exists()


def test_printed_table_escapes_markup_and_control_characters(tmp_path: Path) -> None:
    from rich.console import Console

    from carid.runtime.results import LevelScore, Prediction

    predictions = [
        Prediction(
            source="[bold]a\x1b[31m.jpg",
            label="[red]Evil\nCar",
            probability=0.5,
            make=LevelScore("[i]Make\x07", 0.5),
        ),
        Prediction(source="b\n.jpg", error="b\n.jpg: [blink]cannot\x1b[2J"),
    ]
    console = Console(record=True, width=300)
    print_predictions(predictions, console)
    text = console.export_text()
    for shown in (
        "[bold]a\\x1b[31m.jpg",
        "[red]Evil\\nCar",
        "[i]Make\\x07 0.500",
        "b\\n.jpg: [blink]cannot\\x1b[2J",
    ):
        assert shown in text
    assert "\x1b" not in text and "\x07" not in text


def test_the_csv_says_why_an_answer_is_unknown(tmp_path: Path) -> None:
    predictor, _ = stub_predictor()
    sliver = write_image(tmp_path / "sliver.png", size=(10, 400))
    (prediction,) = predictor.predict([sliver])
    assert prediction.unknown and prediction.reason
    with write_predictions([prediction], tmp_path / "p.csv").open(encoding="utf-8", newline="") as stream:
        (row,) = list(csv.DictReader(stream))
    assert row["unknown"] == "true" and row["reason"] == prediction.reason
