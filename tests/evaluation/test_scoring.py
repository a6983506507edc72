"""Score sources: model paths, PyTorch scoring against a hand-made forward pass, label alignment."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from carid.artifacts.run_dir import locate
from carid.config import Config, from_dict
from carid.data.samples import Sample, Severity
from carid.data.split import load_split
from carid.evaluation.scoring import EvaluationError, ScoreSource, align_labels, target_boxes
from carid.evaluation.sources import TorchScoreSource, open_score_source
from carid.models.checkpoint import load_for_inference
from carid.preprocess import load_and_preprocess
from carid.training.fit import train
from tests.training.conftest import draw_boxed_dataset, tiny_config_tree


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the tiny VGG on 24 drawn images (3 classes, one box each)."""
    root = tmp_path_factory.mktemp("scoring")
    data = draw_boxed_dataset(root / "data")
    config = from_dict(Config, tiny_config_tree(data, root / "runs", name="tiny"))
    return train(config, progress=False).run_dir


def test_locate_finds_the_checkpoint_of_a_run_and_the_run_of_a_checkpoint(tiny_run: Path) -> None:
    from_run = locate(tiny_run)
    assert from_run.kind == "checkpoint"
    assert from_run.path == (tiny_run / "checkpoints" / "best.ckpt").resolve()
    assert from_run.run_dir == tiny_run.resolve()

    from_file = locate(tiny_run / "checkpoints" / "last.ckpt")
    assert from_file.path.name == "last.ckpt"
    assert from_file.run_dir == tiny_run.resolve()


def test_torch_scores_equal_a_hand_made_forward_pass(tiny_run: Path) -> None:
    samples = load_split(tiny_run / "split.csv").samples[:7]
    source = open_score_source(tiny_run, batch_size=3)
    assert isinstance(source, ScoreSource)
    scores = source.score(samples)

    network, metadata = load_for_inference(tiny_run / "checkpoints" / "best.ckpt")
    spec = metadata.preprocess_spec()
    arrays, geometries = zip(*(load_and_preprocess(s.path, spec) for s in samples), strict=True)
    with torch.inference_mode():
        output = network(torch.from_numpy(np.stack(arrays)))
    np.testing.assert_allclose(scores.logits, output.logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores.probabilities.sum(axis=1), 1.0)
    expected_boxes = np.stack(
        [g.boxes_to_original(box[None, :])[0] for g, box in zip(geometries, output.box.numpy(), strict=True)]
    )
    limits = [[g.original_width, g.original_height] * 2 for g in geometries]
    expected_boxes = np.clip(expected_boxes, 0, limits)
    np.testing.assert_allclose(scores.boxes, expected_boxes, atol=1e-3)
    assert scores.ok.all()
    assert [tuple(size) for size in scores.original_sizes] == [(64, 48)] * len(samples)  # the drawn size
    assert source.class_names == metadata.class_names
    assert source.describe()["parameters"] == sum(p.numel() for p in network.parameters())


def test_hflip_tta_averages_a_hand_made_forward_pass_and_its_mirror(tiny_run: Path) -> None:
    samples = load_split(tiny_run / "split.csv").samples[:5]
    source = open_score_source(tiny_run, batch_size=2, tta="hflip")
    assert source.describe()["tta"] == "hflip" and open_score_source(tiny_run).describe()["tta"] == "none"
    scores = source.score(samples)

    network, metadata = load_for_inference(tiny_run / "checkpoints" / "best.ckpt")
    spec = metadata.preprocess_spec()
    arrays, geometries = zip(*(load_and_preprocess(s.path, spec) for s in samples), strict=True)
    images = torch.from_numpy(np.stack(arrays))
    with torch.inference_mode():
        plain, mirrored = network(images), network(images.flip(-1))
    np.testing.assert_allclose(scores.logits, ((plain.logits + mirrored.logits) / 2).numpy(), atol=1e-5)
    back = mirrored.box.numpy()[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [1, 0, 1, 0]  # x -> 1 - x
    average = (plain.box.numpy() + back) / 2
    for row, geometry in enumerate(geometries):
        expected = geometry.boxes_to_original(average[row][None, :])[0]
        expected = np.clip(expected, 0, [geometry.original_width, geometry.original_height] * 2)
        np.testing.assert_allclose(scores.boxes[row], expected, atol=1e-3)
    with pytest.raises(EvaluationError, match="'flip' is not one of"):
        open_score_source(tiny_run, tta="flip")


def test_an_unreadable_image_is_flagged_and_the_others_scored(tiny_run: Path, tmp_path: Path) -> None:
    good = load_split(tiny_run / "split.csv").samples[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    samples = [good[0], Sample(broken, "red", source="test row 2"), good[1]]
    scores = TorchScoreSource(tiny_run / "checkpoints" / "best.ckpt").score(samples)
    assert scores.ok.tolist() == [True, False, True]
    assert len(scores.problems) == 1
    problem = scores.problems[0]
    assert problem.kind == "unreadable_image" and problem.severity is Severity.ERROR
    assert "broken.png" in problem.message and problem.source == "test row 2"
    kept = scores.subset(scores.ok)
    assert len(kept) == 2 and kept.boxes.shape == (2, 4)


def test_labels_are_aligned_by_name_and_unknown_ones_reported() -> None:
    samples = [
        Sample(Path("a.jpg"), "blue"),
        Sample(Path("b.jpg"), "purple", source="extra.csv line 3"),
        Sample(Path("c.jpg"), None),
        Sample(Path("d.jpg"), "red"),
    ]
    alignment = align_labels(samples, ("red", "green", "blue"))
    assert alignment.labels.tolist() == [2, -1, -1, 0]
    assert alignment.unknown == {"purple": 1}
    assert alignment.unlabeled == 1
    assert alignment.absent_classes == ("green",)
    (problem,) = alignment.problems
    assert problem.source == "extra.csv line 3" and "'purple'" in problem.message
    kinds = {note.kind: note for note in alignment.summary()}
    assert set(kinds) == {"unknown_class", "unlabeled", "class_without_samples"}
    assert "'purple' (1)" in kinds["unknown_class"].message
    assert "green" in kinds["class_without_samples"].message


def test_labels_map_to_the_taxonomy_level_the_model_was_trained_on() -> None:
    samples = [
        Sample(Path("a.jpg"), "Audi TTS Coupe 2012"),
        Sample(Path("b.jpg"), "BMW X5 SUV 2007"),
        Sample(Path("c.jpg"), "Ford F-150 Regular Cab 2012"),
        Sample(Path("d.jpg"), "Coupe"),  # already a value of the level
    ]
    alignment = align_labels(samples, ("Coupe", "SUV", "Sedan"), label_level="body_type")
    assert alignment.labels.tolist() == [0, 1, -1, 0]
    assert alignment.unknown == {"Ford F-150 Regular Cab 2012": 1}
    assert "its body_type 'Pickup'" in alignment.problems[0].message


def test_target_boxes_take_the_largest_box_inside_the_photo() -> None:
    samples = [
        Sample(Path("a.jpg"), "x", boxes=[[0, 0, 10, 10], [5, 5, 60, 40]]),
        Sample(Path("b.jpg"), "x"),
        Sample(Path("c.jpg"), "x", boxes=[[-20, -20, 30, 30]]),
    ]
    boxes, has_box = target_boxes(samples, np.array([[64, 48], [64, 48], [64, 48]]))
    assert has_box.tolist() == [True, False, True]
    np.testing.assert_allclose(boxes[0], [5, 5, 60, 40])
    np.testing.assert_allclose(boxes[2], [0, 0, 30, 30])  # clipped to the photo
    assert np.isnan(boxes[1]).all()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("carid.runtime.predictor") is None, reason="carid.runtime.predictor is missing"
)
def test_a_bundle_scores_like_its_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    from carid.export import export_bundle

    bundle = export_bundle(tiny_run, out=tmp_path / "bundle", parity_images=0).bundle.path
    samples = load_split(tiny_run / "split.csv").samples[:5]
    source = open_score_source(bundle)
    assert source.describe()["kind"] == "bundle"
    from_bundle = source.score(samples)
    from_checkpoint = open_score_source(tiny_run).score(samples)
    assert source.class_names == open_score_source(tiny_run).class_names
    np.testing.assert_allclose(from_bundle.probabilities, from_checkpoint.probabilities, atol=1e-4)
    np.testing.assert_allclose(from_bundle.boxes, from_checkpoint.boxes, atol=0.05)
    np.testing.assert_array_equal(from_bundle.original_sizes, from_checkpoint.original_sizes)
    # With TTA the bundle on ONNX Runtime still scores like its checkpoint on PyTorch.
    flipped_bundle = open_score_source(bundle, tta="hflip").score(samples)
    flipped_checkpoint = open_score_source(tiny_run, tta="hflip").score(samples)
    np.testing.assert_allclose(flipped_bundle.probabilities, flipped_checkpoint.probabilities, atol=1e-4)
    np.testing.assert_allclose(flipped_bundle.boxes, flipped_checkpoint.boxes, atol=0.05)
    assert not np.allclose(flipped_bundle.boxes, from_bundle.boxes, atol=1e-4)
