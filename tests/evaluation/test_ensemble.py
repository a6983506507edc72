"""Tests of carid.evaluation.ensemble: combination math, weight fitting, the ensemble bundle format,
the ensemble behind Predictor / open_score_source / evaluate, and calibration stored into bundles.

The math tests use small synthetic probability arrays with hand-computed answers. The bundle tests
use two tiny models trained on the same drawn images (3 classes, one box each) at two input sizes
and two resize modes: the 32 px stretch model of tests/test_export.py and a 40 px letterbox one
trained here; both are exported to RUN/export and built into ensembles.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carid.artifacts.bundle import METADATA_FILE, Bundle, update_calibration
from carid.artifacts.ensemble import (
    ENSEMBLE_FORMAT,
    Ensemble,
    EnsembleError,
    EnsembleMetadata,
    class_columns,
    update_ensemble_calibration,
    weight_matrix,
)
from carid.artifacts.run_dir import locate
from carid.config import Config, from_dict, save_config
from carid.data.samples import Sample, SampleTable
from carid.data.split import save_split
from carid.evaluation.calibrate import calibrate_model
from carid.evaluation.comparison import evaluate_ensemble
from carid.evaluation.ensemble import MemberSource, build_ensemble, resolve_member, training_overlap_notes
from carid.evaluation.ensemble_fit import EXPERT_SMOOTHING, expert_weights, fit_ensemble, fit_mixture_weights
from carid.evaluation.metrics import top_k_accuracy
from carid.evaluation.sources import EnsembleScoreSource, open_score_source
from carid.runtime.backends import PredictorError
from carid.runtime.calibration import apply_temperature
from carid.runtime.ensemble import (
    EnsemblePredictor,
    combine_boxes,
    combine_probabilities,
    probabilities_to_logits,
)
from carid.runtime.predictor import Predictor
from carid.runtime.results import Prediction

# --- combination math on synthetic probabilities ---------------------------------------------------


def test_mean_and_weighted_combination_by_hand() -> None:
    first = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    second = np.array([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    members = np.stack([first, second])
    np.testing.assert_allclose(
        combine_probabilities(members, [0.5, 0.5]), [[0.4, 0.4, 0.2], [0.15, 0.15, 0.7]]
    )
    # 0.25 * first + 0.75 * second, row by row
    np.testing.assert_allclose(
        combine_probabilities(members, [1.0, 3.0]), [[0.25, 0.5, 0.25], [0.175, 0.175, 0.65]]
    )
    # per-class weights: class 0 only from the first member, the others equally, then renormalised
    per_class = np.array([[1.0, 0.5, 0.5], [0.0, 0.5, 0.5]])
    raw = np.array([[0.7, 0.4, 0.2], [0.1, 0.15, 0.7]])
    expected = raw / raw.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(combine_probabilities(members, per_class), expected)
    np.testing.assert_allclose(np.exp(probabilities_to_logits(expected)), expected)


def test_weight_matrix_normalises_columns_and_refuses_bad_weights() -> None:
    np.testing.assert_allclose(weight_matrix([2.0, 6.0], 2, 3), [[0.25] * 3, [0.75] * 3])
    for bad, message in (
        ([1.0, 1.0, 1.0], "shape"),
        ([1.0, -1.0], ">= 0"),
        ([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]], "column 1"),
        ([np.nan, 1.0], "finite"),
    ):
        with pytest.raises(ValueError, match=message):
            weight_matrix(bad, 2, 3)


def test_em_finds_the_hand_derived_optimum() -> None:
    # Labels all 0; the true-class probabilities are (0.9, 0.1, 0.9) for the first member and
    # (0.1, 0.9, 0.1) for the second. NLL(w) = -[2 log(0.1 + 0.8 w) + log(0.9 - 0.8 w)] / 3 has
    # its minimum where 1.6 / (0.1 + 0.8 w) = 0.8 / (0.9 - 0.8 w), i.e. w = 17 / 24.
    first = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
    labels = np.zeros(3, dtype=np.int64)
    fit = fit_mixture_weights(np.stack([first, 1.0 - first]), labels)
    assert fit.converged
    np.testing.assert_allclose(fit.weights, [17 / 24, 7 / 24], atol=1e-4)
    assert fit.weights.sum() == pytest.approx(1.0)
    grid = np.linspace(0.01, 0.99, 99)
    nll = [-np.mean(np.log(w * first[:, 0] + (1 - w) * (1 - first[:, 0]))) for w in grid]
    assert fit.nll <= min(nll) + 1e-9 and fit.nll < fit.start_nll
    # Unlabeled rows are ignored; no labeled row at all is an error.
    with_unlabeled = fit_mixture_weights(
        np.stack([np.vstack([first, [[0.5, 0.5]]]), np.vstack([1 - first, [[0.0, 1.0]]])]),
        np.array([0, 0, 0, -1]),
    )
    np.testing.assert_allclose(with_unlabeled.weights, fit.weights, atol=1e-6)
    with pytest.raises(ValueError, match="no labeled"):
        fit_mixture_weights(np.stack([first, 1 - first]), np.full(3, -1))


def _toy_experts() -> tuple[np.ndarray, np.ndarray]:
    """Classes A, B, C, 10 samples each. Member 0 is right on A (and C) but calls B a C; member 1
    is right on B (and C) but calls A a C, confidently enough that plain averaging also fails."""
    rows_first = {0: [0.6, 0.1, 0.3], 1: [0.05, 0.15, 0.8], 2: [0.1, 0.1, 0.8]}
    rows_second = {0: [0.15, 0.05, 0.8], 1: [0.1, 0.6, 0.3], 2: [0.1, 0.1, 0.8]}
    labels = np.repeat([0, 1, 2], 10)
    first = np.array([rows_first[label] for label in labels])
    second = np.array([rows_second[label] for label in labels])
    return np.stack([first, second]), labels


def test_expert_weights_are_the_documented_f1_ratio_and_beat_both_members() -> None:
    members, labels = _toy_experts()
    weights, f1 = expert_weights(members, labels)
    # member 0: F1 1 on A, 0 on B, 2/3 on C (C predicted for 20 samples, 10 right); member 1 mirrored
    np.testing.assert_allclose(f1, [[1.0, 0.0, 2 / 3], [0.0, 1.0, 2 / 3]])
    s = EXPERT_SMOOTHING
    np.testing.assert_allclose(weights[:, 0], [(1 + s) / (1 + 2 * s), s / (1 + 2 * s)])
    np.testing.assert_allclose(weights[:, 2], [0.5, 0.5])
    accuracy = {
        "member 0": top_k_accuracy(members[0], labels, 1),
        "member 1": top_k_accuracy(members[1], labels, 1),
    }
    for mode in ("mean", "weighted", "expert"):
        fit = fit_ensemble(mode, members, labels, with_box=[False, False])
        accuracy[mode] = top_k_accuracy(combine_probabilities(members, fit.weights), labels, 1)
    assert accuracy["member 0"] == accuracy["member 1"] == pytest.approx(2 / 3)
    assert accuracy["mean"] == pytest.approx(1 / 3)  # both confident mistakes outvote the right one
    assert accuracy["expert"] == 1.0
    assert accuracy["expert"] > max(accuracy["member 0"], accuracy["member 1"], accuracy["weighted"])


def test_boxes_are_averaged_over_the_members_with_a_box() -> None:
    first = np.array([[0.0, 0.0, 10.0, 10.0]])
    second = np.array([[2.0, 4.0, 14.0, 18.0]])
    np.testing.assert_allclose(combine_boxes([first, second], [0.5, 0.5]), [[1.0, 2.0, 12.0, 14.0]])
    np.testing.assert_allclose(combine_boxes([first, second, None], [1.0, 3.0, 1.0]), [[1.5, 3, 13, 16]])
    assert combine_boxes([None, None], [0.5, 0.5]) is None
    fit = fit_ensemble("mean", None, None, with_box=[True, False, True])
    np.testing.assert_allclose(fit.box_weights, [0.5, 0.0, 0.5])
    best = fit_ensemble("mean", None, None, with_box=[True, True], box_mode="best", member_iou=[0.4, 0.7])
    np.testing.assert_allclose(best.box_weights, [0.0, 1.0])
    with pytest.raises(ValueError, match="needs the members' probabilities"):
        fit_ensemble("weighted", None, None, with_box=[False, False])


def test_class_names_map_by_name_and_other_names_are_refused() -> None:
    columns = class_columns(["red", "green", "blue"], ["blue", "red", "green"], "member b")
    np.testing.assert_array_equal(
        np.array([["blue", "red", "green"]])[:, columns], [["red", "green", "blue"]]
    )
    with pytest.raises(EnsembleError, match=r"member b: .*missing 'blue'; not in the ensemble 'yellow'"):
        class_columns(["red", "green", "blue"], ["red", "green", "yellow"], "member b")


def _metadata_dict(**changes: object) -> dict:
    data = {
        "format": ENSEMBLE_FORMAT,
        "version": 1,
        "name": "pair",
        "mode": "weighted",
        "members": [
            {"name": "a", "path": "members/a", "image_size": [32, 32], "with_box": True},
            {"name": "b", "path": "members/b", "image_size": [40, 40], "with_box": False},
        ],
        "weights": [0.3, 0.7],
        "box_weights": [1.0, 0.0],
        "class_names": ["red", "green", "blue"],
        "temperature": 1.5,
        "unknown_threshold": None,
    }
    data.update(changes)
    return data


def test_ensemble_json_is_validated_field_by_field() -> None:
    metadata = EnsembleMetadata.from_dict(_metadata_dict())
    assert metadata.weights == (0.3, 0.7) and metadata.members[1].image_size == (40, 40)
    assert EnsembleMetadata.from_dict(metadata.to_dict()) == metadata
    members = _metadata_dict()["members"]
    for changes, message in (
        ({"format": "carid.bundle"}, "'format'"),
        ({"mode": "median"}, "'mode' must be one of mean, weighted, expert"),
        ({"weights": [1.0, 1.0, 1.0]}, "'weights'"),
        ({"weights": [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]}, "'weights'"),
        ({"box_weights": [1.0]}, "'box_weights'"),
        ({"temperature": 0}, "'temperature'"),
        ({"unknown_threshold": 1.5}, "'unknown_threshold'"),
        ({"members": [members[0], {**members[1], "path": "../elsewhere"}]}, "inside the ensemble folder"),
        ({"members": [members[0], {**members[1], "path": "/abs/b"}]}, "inside the ensemble folder"),
        ({"members": [members[0], {**members[1], "name": "a"}]}, "distinct names"),
        ({"class_names": ["red", "red", "blue"]}, "'class_names'"),
    ):
        with pytest.raises(EnsembleError, match=message):
            EnsembleMetadata.from_dict(_metadata_dict(**changes), source="x/ensemble.json")


# --- real tiny bundles at two input sizes ------------------------------------------------------------

_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(32 px stretch run, 40 px letterbox run), both trained on the same images, both exported."""
    from carid.export import export_bundle
    from carid.training.fit import train
    from tests.test_export import tiny_bundle_dir, tiny_run_dir
    from tests.training.conftest import tiny_config_tree

    first = tiny_run_dir(tmp_path_factory)
    tiny_bundle_dir(tmp_path_factory)
    if "second" not in _BUILT:
        root = tmp_path_factory.mktemp("tiny-40")
        tree = tiny_config_tree(
            first.parent.parent / "data",
            root / "runs",
            name="tiny40",
            model={"image_size": 40},
            augment={"resize_mode": "letterbox"},
            train={"epochs": 2, "test_after_fit": False, "seed": 1},
        )
        run = train(from_dict(Config, tree), progress=False).run_dir
        export_bundle(run, parity_images=4)
        _BUILT["second"] = run
    return first, _BUILT["second"]


def _photos(run: Path) -> list[Path]:
    return sorted((run.parent.parent / "data" / "images").glob("*.png"))


def _probabilities(prediction: Prediction, num_classes: int) -> np.ndarray:
    values = np.zeros(num_classes)
    for score in prediction.top_k:
        values[score.index] = score.probability
    return values


@pytest.mark.slow
def test_weighted_ensemble_round_trip_and_predictions(
    members: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = members
    built = build_ensemble([first, second], tmp_path / "pair", mode="weighted")
    ensemble = built.ensemble
    data = json.loads((tmp_path / "pair" / "ensemble.json").read_text(encoding="utf-8"))
    assert data["format"] == ENSEMBLE_FORMAT and data["mode"] == "weighted"
    assert [m["path"] for m in data["members"]] == ["members/tiny", "members/tiny40"]
    assert [m["image_size"] for m in data["members"]] == [[32, 32], [40, 40]]
    assert len(data["weights"]) == 2 and sum(data["weights"]) == pytest.approx(1.0)
    assert data["fit"]["split"] == "val" and data["fit"]["num_labeled"] > 0
    assert [m["kind"] for m in data["validation"]["models"]] == ["member", "member", "ensemble (weighted)"]
    assert data["temperature"] > 0 and data["unknown_threshold"] is None
    assert not data["notes"]  # both runs share one split: no training image among the val images
    for member in ("tiny", "tiny40"):
        assert (tmp_path / "pair" / "members" / member / METADATA_FILE).is_file()

    # Portable: copy the folder elsewhere, load it by a relative path from another working folder.
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp_path / "pair", moved)
    shutil.rmtree(tmp_path / "pair")
    monkeypatch.chdir(tmp_path / "elsewhere")
    predictor = Predictor.load("copy")
    assert isinstance(predictor, EnsemblePredictor) and predictor.backend_name == "onnx"
    info = predictor.info()
    assert info["ensemble"]["mode"] == "weighted" and info["class_names"] == ["blue", "green", "red"]

    photos = _photos(first)[::3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    results = predictor.predict([*photos, bad], top_k=3, batch_size=3)
    assert results[-1].error is not None and "broken.png" in results[-1].error
    singles = [Predictor.load(Bundle.load(run / "export").path).predict(photos, top_k=3) for run in members]
    weights = np.asarray(ensemble.metadata.weights)
    temperature = ensemble.metadata.temperature
    for row, result in enumerate(results[:-1]):
        member_probs = np.stack([_probabilities(single[row], 3) for single in singles])
        expected = apply_temperature(
            probabilities_to_logits(combine_probabilities(member_probs[:, None, :], weights))[0], temperature
        )
        np.testing.assert_allclose(_probabilities(result, 3), expected, atol=1e-5)
        assert result.label == ["blue", "green", "red"][int(np.argmax(expected))]
        expected_box = np.mean([single[row].box.to_list() for single in singles], axis=0)
        np.testing.assert_allclose(result.box.to_list(), expected_box, atol=0.05)
    with pytest.raises(PredictorError, match="no single embedding"):
        predictor.embed(photos[:1])

    # TTA is each member's: the members' mirror-averaged boxes, combined as before.
    flipped = Predictor.load("copy", tta="hflip")
    assert flipped.tta == "hflip" and all(member.tta == "hflip" for member in flipped.members)
    flipped_singles = [
        Predictor.load(Bundle.load(run / "export").path, tta="hflip").predict(photos) for run in members
    ]
    for row, result in enumerate(flipped.predict(photos)):
        expected_box = np.mean([single[row].box.to_list() for single in flipped_singles], axis=0)
        np.testing.assert_allclose(result.box.to_list(), expected_box, atol=0.05)

    # The slim install: an ensemble predicts with torch (and the evaluation extras) blocked.
    code = (
        "import sys, json\n"
        "for name in ('torch', 'torchvision', 'lightning', 'timm', 'onnx', 'matplotlib', 'scipy'):\n"
        "    sys.modules[name] = None\n"
        "from carid.runtime.predictor import Predictor\n"
        f"results = Predictor.load({str(moved)!r}).predict({[str(p) for p in photos[:2]]!r})\n"
        "print(json.dumps([r.label for r in results]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [r.label for r in results[:2]]


@pytest.mark.slow
def test_score_source_and_evaluate_accept_an_ensemble(members: tuple[Path, Path], tmp_path: Path) -> None:
    from carid.data.split import load_split
    from carid.evaluation.evaluate import evaluate

    first, second = members
    ensemble_dir = build_ensemble(
        [first / "export", second], tmp_path / "expert", mode="expert"
    ).ensemble.path
    weights = np.asarray(json.loads((ensemble_dir / "ensemble.json").read_text())["weights"])
    assert weights.shape == (2, 3)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)

    assert locate(ensemble_dir).kind == "ensemble"
    source = open_score_source(ensemble_dir)
    assert isinstance(source, EnsembleScoreSource)
    samples = [s for s in load_split(first / "split.csv").samples if s.split == "test"]
    scores = source.score(samples)
    assert scores.ok.all() and scores.boxes is not None
    predicted = Predictor.load(ensemble_dir).predict([s.path for s in samples], top_k=3)
    for row, result in enumerate(predicted):
        np.testing.assert_allclose(scores.probabilities[row], _probabilities(result, 3), atol=1e-5)
        np.testing.assert_allclose(scores.boxes[row], result.box.to_list(), atol=0.05)

    report = evaluate(ensemble_dir, first / "split.csv", "test", tmp_path / "report")
    assert report.model["kind"] == "ensemble" and (tmp_path / "report" / "report.html").is_file()
    assert report.counts["scored"] == len(samples)

    side_by_side = evaluate_ensemble(ensemble_dir, split="test", out_dir=tmp_path / "side")
    assert [s.kind for s in side_by_side.summaries] == ["member", "member", "ensemble (expert)"]
    assert side_by_side.summaries[-1].accuracy == pytest.approx(report.result.accuracy)
    written = json.loads((tmp_path / "side" / "comparison.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in written["models"]] == ["tiny", "tiny40", "expert"]
    assert "tiny40" in (tmp_path / "side" / "comparison.html").read_text(encoding="utf-8")
    assert (tmp_path / "side" / "members" / "tiny" / "report.html").is_file()


@pytest.mark.slow
def test_members_with_other_classes_or_without_export_are_refused(
    members: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = members
    renamed = tmp_path / "renamed"
    shutil.copytree(second / "export", renamed)
    data = json.loads((renamed / METADATA_FILE).read_text(encoding="utf-8"))
    data["class_names"] = ["blue", "green", "yellow"]
    data["taxonomy"] = None
    (renamed / METADATA_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(EnsembleError, match=r"missing 'red'; not in the ensemble 'yellow'"):
        build_ensemble([first, renamed], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    # An ensemble whose member was changed afterwards no longer loads, with the member named.
    pair = build_ensemble([first, second], tmp_path / "pair").ensemble.path
    shutil.rmtree(pair / "members" / "tiny40")
    shutil.copytree(renamed, pair / "members" / "tiny40")
    with pytest.raises(EnsembleError, match=r"member 'tiny40'.*yellow"):
        Predictor.load(pair)

    fake_run = tmp_path / "run"
    (fake_run / "checkpoints").mkdir(parents=True)
    (fake_run / "checkpoints" / "best.ckpt").write_bytes(b"")
    (fake_run / "config.yaml").write_text("{}", encoding="utf-8")
    with pytest.raises(EnsembleError, match=r"carid export .*run"):
        resolve_member(fake_run)
    with pytest.raises(EnsembleError, match="at least 2 members"):
        build_ensemble([first], tmp_path / "single")
    with pytest.raises(EnsembleError, match="already exists"):
        build_ensemble([first, second], pair)


@pytest.mark.slow
def test_calibration_stored_into_a_bundle_changes_probabilities_and_unknown_flags(
    members: tuple[Path, Path], tmp_path: Path
) -> None:
    first, _ = members
    bundle = tmp_path / "bundle"
    shutil.copytree(first / "export", bundle)
    photos = _photos(first)[::4]
    before = Predictor.load(bundle).predict(photos, top_k=3)

    update = calibrate_model(bundle, first / "split.csv", target_precision=0.5)
    stored = Bundle.load(bundle).metadata
    assert stored.temperature == pytest.approx(update.fit.temperature)
    # the threshold is stored when it reaches the target precision on the validation images
    assert update.threshold_stored == update.fit.threshold.achievable
    threshold = update.fit.threshold.threshold if update.threshold_stored else None
    assert stored.unknown_threshold == threshold
    assert update.before == {"temperature": 1.0, "unknown_threshold": None}
    after = Predictor.load(bundle).predict(photos, top_k=3)
    for old, new in zip(before, after, strict=True):
        # softmax(logits / T) == softmax(log(softmax(logits)) / T)
        expected = apply_temperature(np.log(_probabilities(old, 3)), stored.temperature)
        np.testing.assert_allclose(_probabilities(new, 3), expected, atol=1e-5)
        assert new.unknown == (threshold is not None and new.probability < threshold)

    update_calibration(bundle, unknown_threshold=max(p.probability for p in after) + 1e-3)
    assert all(p.unknown and p.label == "unknown" for p in Predictor.load(bundle).predict(photos))

    # The same for an ensemble: ensemble.json holds its temperature and threshold.
    pair = build_ensemble([first, members[1]], tmp_path / "pair", calibrate=False).ensemble.path
    assert Ensemble.load(pair).metadata.temperature == 1.0
    plain = Predictor.load(pair).predict(photos, top_k=3)
    update_ensemble_calibration(pair, temperature=3.0)
    for old, new in zip(plain, Predictor.load(pair).predict(photos, top_k=3), strict=True):
        expected = apply_temperature(np.log(_probabilities(old, 3)), 3.0)
        np.testing.assert_allclose(_probabilities(new, 3), expected, atol=1e-5)
    result = calibrate_model(pair, first / "split.csv", set_threshold=False)
    assert result.kind == "ensemble" and result.after["unknown_threshold"] is None
    assert Ensemble.load(pair).metadata.temperature == pytest.approx(result.fit.temperature)
    with pytest.raises(ValueError, match="carid export"):
        calibrate_model(first / "checkpoints" / "best.ckpt")


def test_overlap_notes_count_the_val_images_of_a_refit_member(tmp_path: Path) -> None:
    samples = [Sample(tmp_path / f"{i}.jpg", "red") for i in range(6)]
    run_dir = tmp_path / "run"
    save_split(
        SampleTable(samples, ["red"], tmp_path, "test"),
        ["train"] * 2 + ["val"] * 2 + ["test"] * 2,
        run_dir / "split.csv",
    )
    member = MemberSource(bundle=None, run_dir=run_dir, name="m")  # type: ignore[arg-type]
    val = samples[2:4]
    save_config(Config(), run_dir / "config.yaml")
    assert training_overlap_notes(val, [member], "val") == []
    assert training_overlap_notes(samples[:3], [member], "val")[0].startswith("2 of the 3 'val' images")

    refit = from_dict(Config, {"train": {"fit_on_val": True}})
    save_config(refit, run_dir / "config.yaml")
    notes = training_overlap_notes(val, [member], "val")
    assert len(notes) == 1 and notes[0].startswith("2 of the 2 'val' images are training images of member m")
