"""The colour-order check: its statistic and sign test, and real Stanford crops as stored and swapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carid.data.colour_order import (
    ColourOrderVerdict,
    check_colour_order,
    compare_with_references,
    reference_pairs,
    sample_paths,
    sign_test,
    verdict_from_gradients,
    vertical_gradient,
)
from carid.data.samples import Sample, Severity
from carid.images import load_rgb, swap_red_blue
from tests.conftest import shared_dataset

# Real crops scored per direction: the acceptance sample (the check's default size and seed).
REAL_SAMPLE = 200


def outdoor_like(seed: int, size: tuple[int, int] = (90, 60)) -> Image.Image:
    """Sky blue above, warm ground below, noise everywhere: what the check expects of a photo."""
    width, height = size
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 40, size=(height, width, 3)).astype(np.int64)
    pixels[: height // 2] += np.array([110, 160, 215])
    pixels[height // 2 :] += np.array([120, 95, 60])
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def test_swapping_red_and_blue_negates_the_gradient() -> None:
    image = outdoor_like(0)
    swapped = swap_red_blue(image)
    assert np.array_equal(np.asarray(swapped)[..., 0], np.asarray(image)[..., 2])
    assert np.array_equal(np.asarray(swap_red_blue(swapped)), np.asarray(image))
    assert vertical_gradient(image) > 50
    assert vertical_gradient(swapped) == pytest.approx(-vertical_gradient(image))
    grey = Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8))
    assert vertical_gradient(grey) == 0.0


def test_sign_test_is_the_exact_binomial_tail() -> None:
    assert sign_test(0, 10) == 1.0
    assert sign_test(10, 10) == pytest.approx(1 / 1024)
    assert sign_test(9, 10) == pytest.approx(11 / 1024)
    assert sign_test(3, 0) == 1.0


def test_verdicts_from_gradients() -> None:
    flagged = verdict_from_gradients([-5.0] * 30 + [5.0] * 5 + [0.2] * 4)
    assert flagged.verdict == "swapped" and flagged.flagged
    assert (flagged.redder_top, flagged.bluer_top, flagged.ties) == (30, 5, 4)
    problem = flagged.problem("/data/cars")
    assert problem is not None and problem.severity is Severity.WARNING and problem.kind == "colour_order"
    assert "data.swap_rb" in problem.message and "fix-colours /data/cars" in problem.message
    assert "30 are redder at the top" in problem.message
    stored = verdict_from_gradients([5.0] * 30 + [-5.0] * 5)
    assert stored.verdict == "ok" and stored.problem("/data/cars") is None
    # too few decided images, or a split vote, decide nothing
    assert verdict_from_gradients([-5.0] * 5).verdict == "undecided"
    assert verdict_from_gradients([-5.0] * 50 + [5.0] * 50).verdict == "undecided"
    assert verdict_from_gradients([0.0] * 40).verdict == "undecided"
    assert set(stored.to_dict()) >= {"verdict", "p_swapped", "p_stored", "bluer_top", "redder_top"}


def test_synthetic_dataset_flagged_only_once_swapped(tmp_path: Path) -> None:
    stored, swapped = [], []
    for i in range(20):
        image = outdoor_like(i)
        stored.append(tmp_path / "stored" / f"{i}.png")
        swapped.append(tmp_path / "swapped" / f"{i}.png")
        stored[-1].parent.mkdir(exist_ok=True)
        swapped[-1].parent.mkdir(exist_ok=True)
        image.save(stored[-1])
        swap_red_blue(image).save(swapped[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert check_colour_order([*stored, tmp_path / "broken.png"]).verdict == "ok"
    verdict = check_colour_order(swapped)
    assert verdict.flagged and verdict.scored == 20
    # data.swap_rb: the check scores the images as training will see them
    assert check_colour_order(swapped, swap=True).verdict == "ok"
    assert check_colour_order([*stored, tmp_path / "broken.png"], sample=0).unreadable == 1


def test_sample_is_seeded_distinct_and_sorted() -> None:
    paths = [Path(f"/d/{i:03d}.jpg") for i in range(50)] + [Path("/d/000.jpg")]
    first = sample_paths(paths, 10, seed=3)
    assert first == sample_paths(paths, 10, seed=3) and first == sorted(set(first)) and len(first) == 10
    assert sample_paths(paths, 10, seed=4) != first
    assert len(sample_paths(paths, 0)) == len(sample_paths(paths, 100)) == 50


def _swapped_copies(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        copy = folder / path.name
        swap_red_blue(load_rgb(path)).save(copy, quality=95)
        copies.append(copy)
    return copies


@pytest.mark.shared_data
def test_real_stanford_crops_flagged_once_swapped_and_not_as_they_are(
    shared_datasets: Path, tmp_path: Path
) -> None:
    crops = shared_dataset(shared_datasets, "stanford-cars-crops") / "images"
    sample = sample_paths(sorted(crops.glob("*.jpg")), REAL_SAMPLE, seed=0)
    as_stored = check_colour_order(sample)
    assert not as_stored.flagged and as_stored.verdict == "ok", as_stored.evidence
    swapped = check_colour_order(_swapped_copies(sample, tmp_path / "swapped"))
    assert swapped.flagged, swapped.evidence
    assert swapped.p_swapped < 0.01 < as_stored.p_swapped


@pytest.mark.shared_data
def test_crops_compared_with_their_devkit_photos(shared_datasets: Path, tmp_path: Path) -> None:
    from scipy.io import loadmat

    crops = shared_dataset(shared_datasets, "stanford-cars-crops") / "images"
    devkit = shared_dataset(shared_datasets, "stanford-cars-devkit")
    annotations = loadmat(devkit / "cars_train_annos.mat", squeeze_me=True)["annotations"]
    photos = [  # the devkit's 1-based inclusive boxes as xyxy pixels
        Sample(
            path=devkit / "cars_train" / str(row["fname"]),
            label=None,
            boxes=[[row["bbox_x1"] - 1, row["bbox_y1"] - 1, row["bbox_x2"], row["bbox_y2"]]],
        )
        for row in annotations
        if (devkit / "cars_train" / str(row["fname"])).is_file()
    ]
    crop_samples = [Sample(path=crops / p.path.name, label=None) for p in photos]
    crop_samples = [crop for crop in crop_samples if crop.path.is_file()]
    pairs = reference_pairs(crop_samples, photos)
    assert len(pairs) >= 5  # the devkit photos that have a crop
    stored = compare_with_references(pairs)
    assert stored.pairs == len(pairs) and not stored.swapped and stored.mad_stored < stored.mad_swapped
    copies = _swapped_copies([crop for crop, _, _ in pairs], tmp_path / "swapped")
    swapped_pairs = [(copy, photo, box) for copy, (_, photo, box) in zip(copies, pairs, strict=True)]
    swapped = compare_with_references(swapped_pairs)
    assert swapped.swapped and swapped.swapped_closer == swapped.pairs
    verdict: ColourOrderVerdict = check_colour_order(copies, reference=swapped)
    assert verdict.flagged and "reference photos" in verdict.evidence
