"""Tests for carid.enroll.store and prepare: enrolment on a real exported bundle (the tiny run of
tests/test_export.py), through the Predictor, the CLI and the REST API."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from carid.artifacts.bundle import Bundle, BundleMetadata, write_metadata
from carid.artifacts.enrolment import (
    ENROLMENT_FILE_PATTERN,
    EnrolError,
    enrolment_file,
    load_enrolment,
    require_enrolment,
)
from carid.cli import app
from carid.enroll.store import enroll, listing, remove
from carid.runtime.backends import PredictorError
from carid.runtime.calibration import apply_temperature
from carid.runtime.inputs import prepare_image
from carid.runtime.predictor import Predictor, with_enrolled_classes
from carid.serve.api import ServeSettings, build_app
from carid.taxonomy import Taxonomy
from tests.conftest import write_image
from tests.test_export import tiny_bundle_dir
from tests.test_files import hidden_leftovers, killed_at_every_point

NEW = "Hyundai Creta 2021"


@pytest.fixture
def bundle(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of the tiny exported bundle (enrolment mutates it)."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir(tmp_path_factory), copy)
    return copy


def photos(folder: Path, count: int, seed: int = 100) -> list[Path]:
    return [write_image(folder / f"new_{i}.png", seed=seed + i) for i in range(count)]


def test_export_fits_the_enrolment_space(bundle: Path) -> None:
    loaded = Bundle.load(bundle)
    enrolment = require_enrolment(loaded)
    arrays = enrolment_file(loaded)
    assert arrays is not None and arrays.is_file() and enrolment.classes == ()
    assert ENROLMENT_FILE_PATTERN.match(arrays.name) and arrays.name != "enrolment.npz"
    assert enrolment.space.dim == loaded.metadata.embedding_dim
    info = loaded.metadata.enrolment
    assert info is not None and info["space"]["calibrated_on"] in ("val", "train")
    assert info["space"]["classes"] == 3 and info["calibration"]["scale"] > 0
    assert loaded.metadata.summary()["can_enrol"] is True


def test_an_enrolled_class_is_scored_after_the_trained_ones(bundle: Path, tmp_path: Path) -> None:
    photo = photos(tmp_path / "new", 1)[0]
    result = enroll(bundle, f"  {NEW} ", [photo])
    assert (result.label, result.new_class, result.photos, result.classes) == (NEW, True, 1, (NEW,))

    predictor = Predictor.load(bundle)
    trained = Predictor.load(bundle, enrolled=False)
    assert predictor.class_names == (*trained.class_names, NEW)
    assert predictor.trained_classes == trained.metadata.num_classes == 3
    # The photo the class was enrolled from: cosine 1 with its own prototype, so its logit is
    # exactly scale + bias, appended to the unchanged trained logits.
    calibration = load_enrolment(Bundle.load(bundle)).calibration  # type: ignore[union-attr]
    item = prepare_image(photo, predictor.spec, str(photo))
    logits = trained.backend.run(item.array[None])["logits"].astype(np.float64)
    expected = apply_temperature(
        np.concatenate([logits, [[calibration.scale + calibration.bias]]], axis=1),
        predictor.metadata.temperature,
    )[0]
    [prediction] = predictor.predict([photo], top_k=4)
    got = {score.label: score.probability for score in prediction.top_k}
    for index, name in enumerate(predictor.class_names):
        assert got[name] == pytest.approx(expected[index], abs=1e-6)
    info = predictor.info()
    assert info["num_classes"] == 4 and info["num_trained_classes"] == 3
    assert [entry["label"] for entry in info["enrolled_classes"]] == [NEW]


def test_more_photos_add_to_a_class_and_replace_starts_over(bundle: Path, tmp_path: Path) -> None:
    first, second, third = photos(tmp_path / "new", 3)
    enroll(bundle, NEW, [first])
    grown = enroll(bundle, NEW, [second, third])
    assert (grown.new_class, grown.photos) == (False, 3)
    entry = require_enrolment(Bundle.load(bundle)).classes[0]
    assert entry.photos == 3 and entry.sources == (str(first), str(second), str(third))
    again = enroll(bundle, NEW, [third], replace_photos=True)
    entry = require_enrolment(Bundle.load(bundle)).classes[0]
    assert (again.photos, entry.photos, entry.sources) == (1, 1, (str(third),))
    assert entry.added <= entry.updated


def test_bad_photos_are_skipped_and_named(bundle: Path, tmp_path: Path) -> None:
    good = photos(tmp_path / "new", 1)[0]
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    copy = tmp_path / "copy.png"
    shutil.copy(good, copy)
    result = enroll(bundle, NEW, [good, text, copy, tmp_path / "missing.jpg"])
    assert result.added_photos == (str(good),) and len(result.skipped) == 3
    reasons = "\n".join(result.skipped)
    assert str(text) in reasons and f"{copy}: the same file as {good}" in reasons
    assert f"{tmp_path / 'missing.jpg'}: cannot read" in reasons


def test_enrolment_errors_change_nothing(bundle: Path, tmp_path: Path) -> None:
    before = (bundle / "model.json").read_bytes()
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    trained = Bundle.load(bundle).metadata.class_names[0]
    with pytest.raises(EnrolError, match="none of the 1 photos can be used; nothing was changed"):
        enroll(bundle, NEW, [text])
    with pytest.raises(EnrolError, match="trained on this class already"):
        enroll(bundle, trained, photos(tmp_path, 1))
    with pytest.raises(EnrolError, match="'unknown' is what the model answers"):
        enroll(bundle, "unknown", photos(tmp_path, 1))
    with pytest.raises(EnrolError, match="the class name is empty"):
        enroll(bundle, "   ", photos(tmp_path, 1))
    with pytest.raises(EnrolError, match="no photos given"):
        enroll(bundle, NEW, [])
    assert (bundle / "model.json").read_bytes() == before


def test_remove_and_list(bundle: Path, tmp_path: Path) -> None:
    enroll(bundle, NEW, photos(tmp_path / "a", 1))
    enroll(bundle, "Tesla Cybertruck Pickup 2024", photos(tmp_path / "b", 1, seed=7))
    with pytest.raises(EnrolError, match=r"not enrolled: 'Lada Niva'.*enrolled: 'Hyundai Creta 2021'"):
        remove(bundle, ["Lada Niva"])
    assert remove(bundle, [NEW]) == ("Tesla Cybertruck Pickup 2024",)
    _, enrolment = listing(bundle)
    assert enrolment is not None and enrolment.labels == ("Tesla Cybertruck Pickup 2024",)
    assert Predictor.load(bundle).class_names[-1] == "Tesla Cybertruck Pickup 2024"


def test_a_bundle_without_a_space_says_to_re_export(bundle: Path, tmp_path: Path) -> None:
    loaded = Bundle.load(bundle)
    write_metadata(bundle, replace(loaded.metadata, enrolment=None))
    with pytest.raises(EnrolError, match=r"cannot take new classes.*carid export RUN --force"):
        enroll(bundle, NEW, photos(tmp_path, 1))
    assert listing(bundle)[1] is None
    assert Predictor.load(bundle).class_names == loaded.metadata.class_names


def test_a_broken_enrolment_file_is_named(bundle: Path, tmp_path: Path) -> None:
    enroll(bundle, NEW, photos(tmp_path, 1))
    arrays = enrolment_file(Bundle.load(bundle))
    assert arrays is not None
    arrays.unlink()
    with pytest.raises(PredictorError, match=f"{arrays.name}: missing"):
        Predictor.load(bundle)
    metadata = json.loads((bundle / "model.json").read_text())
    metadata["enrolment"]["classes"].append({"label": "extra"})
    (bundle / "model.json").write_text(json.dumps(metadata))
    np.savez(arrays, mean=np.zeros(2), projection=np.eye(2), sums=np.zeros((1, 2)), counts=[1])
    with pytest.raises(EnrolError, match=r"2 classes in model\.json but 1 prototypes"):
        load_enrolment(Bundle.load(bundle))


def test_enrolled_names_join_the_taxonomy() -> None:
    names = ("Audi TTS Coupe 2012", "BMW M3 Coupe 2012")
    metadata = BundleMetadata(
        class_names=names,
        preprocess={"image_size": [32, 32]},
        with_box=False,
        taxonomy=Taxonomy.from_class_names(names).to_dict(),
    )
    grown = with_enrolled_classes(metadata, ["Hyundai Creta SUV 2021"])
    taxonomy = Taxonomy.from_dict(grown.taxonomy)  # type: ignore[arg-type]
    assert taxonomy.classes == (*names, "Hyundai Creta SUV 2021")
    assert "Hyundai" in taxonomy.values("make") and "SUV" in taxonomy.values("body_type")
    plain = replace(metadata, taxonomy=None)
    assert with_enrolled_classes(plain, ["x"]).taxonomy is None


def test_cli_enroll_list_remove(bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    folder = tmp_path / "creta"
    photos(folder, 2)
    added = runner.invoke(app, ["enroll", str(bundle), "--label", NEW, str(folder)])
    assert added.exit_code == 0, added.output
    assert f"enrolled '{NEW}' from 2 photo(s)" in added.output
    listed = runner.invoke(app, ["enroll", str(bundle), "--list"])
    assert listed.exit_code == 0 and NEW in listed.output
    refused = runner.invoke(app, ["enroll", str(bundle), "--label", "red", str(folder)])
    assert refused.exit_code != 0 and "trained on this class already" in refused.output
    gone = runner.invoke(app, ["enroll", str(bundle), "--remove", NEW])
    assert gone.exit_code == 0 and "enrolled classes left: 0" in gone.output
    nothing = runner.invoke(app, ["enroll", str(bundle)])
    assert nothing.exit_code == 0 and "enrolled classes of" in nothing.output


def test_serve_answers_with_enrolled_classes(bundle: Path, tmp_path: Path) -> None:
    photo = photos(tmp_path, 1)[0]
    enroll(bundle, NEW, [photo])
    client = TestClient(build_app(Predictor.load(bundle), ServeSettings()))
    model = client.get("/model").json()
    assert model["class_names"][-1] == NEW
    assert [entry["label"] for entry in model["enrolled_classes"]] == [NEW]
    with photo.open("rb") as stream:
        answer = client.post("/predict", files={"file": ("car.png", stream, "image/png")}).json()
    assert NEW in [score["label"] for score in answer["top_k"]]


@pytest.mark.slow
@pytest.mark.parametrize("action", ["add", "remove"])
def test_a_kill_at_any_point_of_enroll_leaves_the_old_or_the_new_classes(
    bundle: Path, tmp_path: Path, action: str
) -> None:
    """`carid enroll` killed (SIGKILL) before each of its file operations in turn: the bundle still
    loads and answers with the old or the new classes, `--list` works, and the next run succeeds and
    removes what the killed one left."""
    tesla = "Tesla Cybertruck Pickup 2024"
    tesla_photo = photos(tmp_path / "tesla", 1, seed=7)[0]
    enroll(bundle, tesla, [tesla_photo])
    photos(tmp_path / "creta", 2)
    if action == "add":
        arguments, old, new = ["--label", NEW, str(tmp_path / "creta")], (tesla,), (tesla, NEW)
    else:
        enroll(bundle, NEW, photos(tmp_path / "creta-first", 1, seed=40))
        arguments, old, new = ["--remove", NEW], (tesla, NEW), (tesla,)
    start = tmp_path / "start"
    shutil.copytree(bundle, start)
    probe = photos(tmp_path / "probe", 1, seed=50)[0]
    runner = CliRunner()

    def restart() -> None:
        shutil.rmtree(bundle)
        shutil.copytree(start, bundle)

    operations: list[str] = []  # what each killed run was killed before
    for where in killed_at_every_point(["enroll", str(bundle), *arguments], bundle, restart):
        operations.append(where)
        predictor = Predictor.load(bundle)
        enrolled = predictor.class_names[predictor.trained_classes :]
        assert enrolled in (old, new), f"{where}: {enrolled}"
        assert predictor.predict([probe])[0].top_k, where
        listed = runner.invoke(app, ["enroll", str(bundle), "--list"])
        assert listed.exit_code == 0 and "Tesla" in listed.output, f"{where}: {listed.output}"
        again = arguments if enrolled == old else ["--label", tesla, str(tesla_photo)]
        rerun = runner.invoke(app, ["enroll", str(bundle), *again])
        assert rerun.exit_code == 0, f"{where}: {rerun.output}"
        assert Predictor.load(bundle).class_names[3:] == new
        referenced = json.loads((bundle / "model.json").read_text())["enrolment"]["file"]
        assert sorted(p.name for p in bundle.iterdir()) == sorted(["model.json", "model.onnx", referenced])
        assert hidden_leftovers(bundle) == [], where
    assert any("replace" in item and "model.json" in item for item in operations), operations
    assert any("unlink" in item for item in operations), operations


def test_a_new_label_with_control_characters_is_refused_by_name() -> None:
    from carid.enroll.store import clean_label

    with pytest.raises(EnrolError, match=r"control characters \(U\+001B\)"):
        clean_label("Red\x1b[31m\nCar", trained=())
    assert clean_label("  Hyundai   Creta 2021 ", trained=()) == "Hyundai Creta 2021"
