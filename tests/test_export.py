"""Tests for carid.export: a parity-checked bundle from a tiny trained run, and loud parity failures.

`tiny_run_dir` / `tiny_bundle_dir` train (about 3 s) and export (about 10 s) once per test session;
the inference and slim-install tests import them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from carid.artifacts.bundle import METADATA_FILE, MODEL_FILE, Bundle
from carid.artifacts.enrolment import ENROLMENT_FILE_PATTERN
from carid.config import Config, from_dict
from carid.data.split import load_split
from carid.export import (
    ExportError,
    ParityError,
    check_parity,
    default_bundle_dir,
    export_bundle,
    parity_candidates,
    resolve_checkpoint,
)
from carid.runtime.backends import OnnxBackend, TorchBackend, file_sha256
from carid.training.fit import train
from tests.conftest import write_image
from tests.test_files import hidden_leftovers, killed_at_every_point
from tests.training.conftest import draw_boxed_dataset, tiny_config_tree

_BUILT: dict[str, Path] = {}


def tiny_run_dir(factory: pytest.TempPathFactory) -> Path:
    """A run trained for 2 epochs on 24 boxed synthetic images (3 classes), once per session."""
    if "run" not in _BUILT:
        root = factory.mktemp("tiny-run")
        data = draw_boxed_dataset(root / "data")
        tree = tiny_config_tree(
            data, root / "runs", name="tiny", train={"epochs": 2, "test_after_fit": False}
        )
        _BUILT["run"] = train(from_dict(Config, tree), progress=False).run_dir
    return _BUILT["run"]


def tiny_bundle_dir(factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported to RUN/export (the default place), once per session."""
    if "bundle" not in _BUILT:
        _BUILT["bundle"] = export_bundle(tiny_run_dir(factory)).bundle.path
    return _BUILT["bundle"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle_dir(tmp_path_factory)


class PerturbedBackend:
    """Another backend's outputs with one image's logits (or box) pushed off."""

    def __init__(self, inner, row: int, logits_shift: float = 0.0, box_shift: float = 0.0) -> None:
        self.inner = inner
        self.name = "perturbed"
        self.output_names = inner.output_names
        self.row = row
        self.logits_shift = logits_shift
        self.box_shift = box_shift
        self.calls = 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = {name: value.copy() for name, value in self.inner.run(batch).items()}
        if self.calls == 0:  # the first batch holds the images the tests name
            outputs["logits"][self.row, 0] += self.logits_shift
            outputs["box"][self.row] = np.clip(outputs["box"][self.row] + self.box_shift, 0, 1)
        self.calls += 1
        return outputs


@pytest.mark.slow
def test_export_writes_a_parity_checked_bundle(tiny_run: Path, tiny_bundle: Path) -> None:
    assert tiny_bundle == tiny_run / "export"
    files = sorted(p.name for p in tiny_bundle.iterdir())
    arrays = json.loads((tiny_bundle / METADATA_FILE).read_text())["enrolment"]["file"]
    assert files == sorted([METADATA_FILE, MODEL_FILE, arrays]) and ENROLMENT_FILE_PATTERN.match(arrays)
    assert not [p for p in tiny_run.iterdir() if p.name.startswith(".export")], "staging folder left behind"
    metadata = Bundle.load(tiny_bundle).metadata
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)["carid"]
    assert metadata.class_names == tuple(stored["class_names"]) == ("blue", "green", "red")
    assert metadata.preprocess == stored["preprocess"] and metadata.taxonomy == stored["taxonomy"]
    assert metadata.with_box and metadata.output_names == ("logits", "box", "embedding")
    assert metadata.input_name == "images" and metadata.dynamic_batch
    assert metadata.temperature == 1.0 and metadata.unknown_threshold is None
    assert metadata.source_checkpoint == str(checkpoint.resolve())
    assert metadata.source_sha256 == file_sha256(checkpoint)
    assert {"carid", "torch", "onnxruntime"} <= set(metadata.versions)
    assert metadata.created and metadata.opset and metadata.embedding_dim == 16

    parity = metadata.parity
    assert parity is not None and parity["passed"] is True
    held_out = {s.path for s in load_split(tiny_run / "split.csv").samples if s.split in ("val", "test")}
    assert {image["source"] for image in parity["images"]} == {str(p) for p in held_out}
    assert parity["num_images"] == len(held_out) and parity["worst_image"] in {str(p) for p in held_out}
    assert parity["max_probability_diff"] <= 1e-3 and parity["max_box_diff_px"] <= 1.0

    # the graph takes any batch size
    session = onnxruntime.InferenceSession(str(tiny_bundle / MODEL_FILE), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        logits, box, embedding = session.run(None, {"images": np.zeros((batch, 3, 32, 32), np.float32)})
        assert logits.shape == (batch, 3) and box.shape == (batch, 4) and embedding.shape == (batch, 16)


@pytest.mark.slow
def test_the_enrolment_calibration_of_a_refit_run_is_flagged_optimistic(
    tiny_run: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """A refit run (train.fit_on_val) trained on the val photos its enrolment calibration is
    simulated on: model.json and the export's messages say the figures are optimistic."""
    plain = Bundle.load(tiny_bundle).metadata.enrolment["space"]
    assert plain["calibrated_on"] == "val" and plain["calibration_trained_on"] is False
    refit = tmp_path / "refit"
    shutil.copytree(tiny_run, refit, ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load((refit / "config.yaml").read_text(encoding="utf-8"))
    config["train"]["fit_on_val"], config["train"]["early_stopping_patience"] = True, 0
    (refit / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    lines: list[str] = []
    bundle = export_bundle(refit, parity_images=0, say=lines.append).bundle
    assert bundle.metadata.enrolment["space"]["calibration_trained_on"] is True
    calibration = [line for line in lines if line.startswith("enrolment calibration")]
    assert len(calibration) == 1 and "optimistic: the network trained on these photos" in calibration[0]


@pytest.mark.slow
def test_parity_check_names_the_image_that_disagrees(tiny_run: Path, tiny_bundle: Path) -> None:
    metadata = Bundle.load(tiny_bundle).metadata
    spec = metadata.preprocess_spec()
    reference, _ = TorchBackend.from_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    exported = OnnxBackend(tiny_bundle / MODEL_FILE)
    candidates, data = parity_candidates(tiny_run, None, count=4)
    assert check_parity(reference, exported, candidates, spec, count=4, data=data).passed

    logits_off = PerturbedBackend(exported, row=2, logits_shift=0.5)
    report = check_parity(reference, logits_off, candidates, spec, count=4, data=data)
    assert not report.passed and len(report.failed) == 1
    assert report.worst is not None and report.worst.source == str(candidates[2])
    assert report.worst.probability_diff > 1e-3
    assert "FAILED" in report.describe() and str(candidates[2]) in report.describe()
    logits_off = PerturbedBackend(exported, row=2, logits_shift=0.5)
    named = check_parity(reference, logits_off, candidates, spec, 4, data, metadata.class_names)
    assert named.worst is not None
    assert f"top-1 class {metadata.class_names[named.worst.top1_torch]!r}" in named.describe()
    assert report.to_dict()["worst_image"] == str(candidates[2])

    box_off = PerturbedBackend(exported, row=1, box_shift=0.2)  # 0.2 of 32 px -> > 1 px of a 64x48 photo
    report = check_parity(reference, box_off, candidates, spec, count=4, data=data)
    assert not report.passed and report.worst is not None and report.worst.source == str(candidates[1])
    assert report.worst.top1_agrees and report.worst.box_diff_px is not None
    assert report.worst.box_diff_px > 1.0


@pytest.mark.slow
def test_a_failing_parity_check_writes_no_bundle(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_run = OnnxBackend.run

    def broken_run(self, batch):  # as if the exported weights were tampered with
        outputs = original_run(self, batch)
        outputs["logits"] = outputs["logits"] + np.arange(outputs["logits"].shape[1], dtype=np.float32)
        return outputs

    monkeypatch.setattr(OnnxBackend, "run", broken_run)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError) as caught:
        export_bundle(tiny_run, out=out, parity_images=3, optimize=False)
    message = str(caught.value)
    worst = caught.value.report.worst
    assert worst is not None and worst.source in message
    assert "FAILED" in message and "not written" in message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "the staging folder was left behind"


@pytest.mark.slow
def test_export_errors_name_the_problem(tiny_run: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no such file or folder"):
        export_bundle(tmp_path / "missing")
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(ExportError, match=r"not a run folder \(no checkpoints/best\.ckpt\)"):
        export_bundle(tmp_path / "not-a-run")
    with pytest.raises(ExportError, match=r"expected a run folder or a \.ckpt"):
        export_bundle(write_image(tmp_path / "photo.png"))
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_bundle(tiny_run, out=tiny_run / "export")

    loose = tmp_path / "loose.ckpt"  # a checkpoint outside any run: no split to take photos from
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", loose)
    with pytest.raises(ExportError, match="--parity-data FOLDER"):
        export_bundle(loose)
    with pytest.raises(ExportError, match="not a folder"):
        export_bundle(loose, parity_data=tmp_path / "nothing-here")

    photos = tmp_path / "photos"
    write_image(photos / "a.png", seed=1)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ExportError, match="not a carid checkpoint"):
        export_bundle(foreign, parity_data=photos)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "foreign.ckpt",
        "loose.ckpt",
        "not-a-run",
        "photo.png",
        "photos",
    ]


@pytest.mark.slow
def test_a_kill_at_any_point_of_export_leaves_a_bundle_that_loads(
    tiny_run: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """`carid export --force` over a bundle, killed (SIGKILL) before each of its file operations in
    turn: the old bundle (one enrolled class) or the new one (none) loads and answers; the run that
    completes removes every leftover of the killed ones."""
    from carid.enroll.store import enroll
    from carid.runtime.predictor import Predictor

    parent = tmp_path / "bundles"
    out = parent / "bundle"
    shutil.copytree(tiny_bundle, out)
    photo = write_image(tmp_path / "niva.png", seed=100)
    enroll(out, "Lada Niva", [photo])
    arguments = ["export", str(tiny_run), "--out", str(out), "--force", "--parity-images", "0"]
    operations: list[str] = []  # what each killed run was killed before
    for where in killed_at_every_point(arguments, parent):
        operations.append(where)
        predictor = Predictor.load(out)
        enrolled = predictor.class_names[predictor.trained_classes :]
        assert enrolled in (("Lada Niva",), ()), f"{where}: {enrolled}"
        assert predictor.predict([photo])[0].top_k, where
    assert any("_exchange" in item for item in operations), operations
    assert hidden_leftovers(parent) == [] and hidden_leftovers(out) == []
    assert Predictor.load(out).class_names == ("blue", "green", "red")


def test_parity_candidates_from_a_folder_spread_over_it(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for index in range(10):
        write_image(photos / f"sub{index % 2}" / f"{index:02d}.png")
    (photos / "notes.txt").write_text("not a photo", encoding="utf-8")
    candidates, data = parity_candidates(None, photos, count=3)
    assert data == str(photos)
    every = sorted(p for p in photos.rglob("*.png"))
    assert sorted(candidates) == every, "every image is a candidate, the chosen first, then reserves"
    assert candidates[:3] == [every[0], every[4], every[9]]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match="no image files"):
        parity_candidates(None, empty, count=3)


def test_resolve_checkpoint_and_default_bundle_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"")
    assert resolve_checkpoint(run) == (run / "checkpoints" / "best.ckpt", run)
    best, run_dir = resolve_checkpoint(run / "checkpoints" / "best.ckpt")
    assert run_dir == run and default_bundle_dir(best, run_dir) == run / "export"
    last, run_dir = resolve_checkpoint(run / "checkpoints" / "last.ckpt")
    assert default_bundle_dir(last, run_dir) == run / "checkpoints" / "last-export"
    (tmp_path / "model.ckpt").write_bytes(b"")
    assert resolve_checkpoint(tmp_path / "model.ckpt") == (tmp_path / "model.ckpt", None)


def test_model_json_of_the_export_is_plain_json(tmp_path: Path) -> None:
    """The parity report and metadata survive json (no numpy scalars)."""
    from carid.export import ParityImage, ParityReport

    report = ParityReport(
        images=(ParityImage("a.png", 1, 1, False, 1e-7, 0.01, True),), data="photos", unreadable=("b.png: x",)
    )
    text = json.dumps(report.to_dict())
    assert json.loads(text)["worst_image"] == "a.png" and report.passed
    assert "passed on 1 images" in report.describe() and "probability 1e-07" in report.describe()


def test_export_at_a_larger_input_size_keeps_the_training_size(tiny_run: Path, tmp_path: Path) -> None:
    """Testing at a higher resolution than training ("FixRes"): the bundle resizes to the new size,
    records the training size and passes its parity check there. A box head that reads a fixed-size
    feature map cannot: the error says so."""
    data = draw_boxed_dataset(tmp_path / "data")
    tree = tiny_config_tree(
        data, tmp_path / "runs", name="nobox", model={"box_head": "off"}, train={"test_after_fit": False}
    )
    run = train(from_dict(Config, tree), progress=False).run_dir
    result = export_bundle(run, out=tmp_path / "larger", input_size=(48, 40), enrol_images=0)
    metadata = result.bundle.metadata
    assert metadata.preprocess["image_size"] == [40, 48] and metadata.extra["trained_input_size"] == [32, 32]
    assert result.parity is not None and result.parity.passed and result.parity.images
    with pytest.raises(ExportError, match="at least 32"):
        export_bundle(run, out=tmp_path / "small", input_size=(24, 24))
    with pytest.raises(ExportError, match="different input size"):
        export_bundle(tiny_run, out=tmp_path / "boxed", input_size=(48, 40), enrol_images=0)


def test_input_size_and_quantize_together_are_refused_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from carid.cli import app

    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        app, ["export", str(tmp_path), "--input-size", "224x224", "--quantize", "int8", "--out", str(out)]
    )
    assert result.exit_code == 2 and "--input-size and --quantize" in result.output, result.output
    assert not out.exists()
