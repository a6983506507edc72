"""The ImageNet no-car score: the tiles it looks at, and the real scorer on car-frames (needs torch)."""

from __future__ import annotations

import numpy as np
import pytest

from carid.models.nocar import tile_boxes, view_count
from tests.conftest import shared_dataset


def test_tiles_cover_the_photo_with_half_overlap():
    boxes = tile_boxes(676, 380, (3, 2))
    assert len(boxes) == view_count((3, 2)) == 7
    assert boxes[0] == (0, 0, 676, 380) and boxes[1] == (0, 0, 338, 253) and boxes[-1] == (338, 127, 676, 380)
    assert tile_boxes(10, 10, (1, 1)) == [(0, 0, 10, 10)]


@pytest.mark.shared_data
def test_imagenet_scorer_on_real_car_frames(shared_datasets):
    pytest.importorskip("torch")
    from carid.models.nocar import CarScoreError, ImageNetCarScorer

    frames = shared_dataset(shared_datasets, "car-frames")
    with_car = frames / "images" / "vid_4_1000.jpg"
    listed = {line.split(",")[0] for line in (frames / "boxes.csv").read_text().splitlines()[1:]}
    without = sorted(p for p in (frames / "images").glob("*.jpg") if p.name not in listed)[:2]
    scorer = ImageNetCarScorer(progress=False)
    try:
        scores = scorer([with_car, *without])
    except CarScoreError as exc:
        pytest.skip(str(exc))
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
