"""Is there a car in this photo? A car score from the ImageNet head of a pretrained backbone.

EfficientNet-Lite0 with its offline ImageNet weights (`carid.models.weights`) and its original
1000-class classifier puts a photo of a car in one of a handful of vehicle classes;
`carid.models.imagenet.car_probability` sums their probabilities. That needs no car training, so it
works on any dataset, labelled or not.

Views: a wide roadside frame with a small car far away gives little car probability when squeezed
whole into 224 x 224, so the score can also look at tiles. `grid = (columns, rows)` adds
columns x rows overlapping tiles (each tile is 2/(columns+1) of the width and 2/(rows+1) of the
height, so neighbours overlap by half); the photo's score is the largest car probability over the
whole photo and its tiles. (1, 1) is the whole photo only. `benchmarks/bench_nocar.py` measured
which grid and threshold separate car-frames' frames with and without cars (docs/curate.md).

`ImageNetCarScorer` is a plain callable (paths -> scores) that fits `carid.data.curate.CarScorer`:
curation takes the scorer as an argument and never imports this module (tests inject a fake;
nothing here is needed to curate without the no-car filter). The caller (`carid data curate`,
`benchmarks/bench_nocar.py`) builds it. Building the ImageNet scorer needs torch and timm, the
`train` extra; `CarScoreError` says so when they are missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from carid.errors import CaridError
from carid.images import ImageError, load_rgb
from carid.models.imagenet import car_probability
from carid.preprocess import PreprocessSpec, preprocess

IMAGENET_BACKBONE = "tf_efficientnet_lite0"
IMAGENET_INPUT = 224


class CarScoreError(CaridError, RuntimeError):
    """The ImageNet car scorer cannot be built (torch/timm or the offline weights are missing)."""


def tile_boxes(width: int, height: int, grid: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """The views of a width x height photo: the whole photo, then columns x rows half-overlapping tiles.

    Returns (left, top, right, bottom) pixel boxes; (1, 1) gives only the whole photo.
    """
    columns, rows = grid
    if columns < 1 or rows < 1:
        raise ValueError(f"tile grid must be at least 1 x 1, got {columns} x {rows}")
    boxes = [(0, 0, width, height)]
    if (columns, rows) == (1, 1):
        return boxes
    tile_w, tile_h = 2 * width / (columns + 1), 2 * height / (rows + 1)
    for row in range(rows):
        for column in range(columns):
            left, top = column * tile_w / 2, row * tile_h / 2
            boxes.append((round(left), round(top), round(left + tile_w), round(top + tile_h)))
    return boxes


def view_count(grid: tuple[int, int]) -> int:
    """Views `tile_boxes` gives per photo for `grid`: the whole photo plus columns x rows tiles."""
    return 1 if tuple(grid) == (1, 1) else 1 + grid[0] * grid[1]


@dataclass
class ImageNetCarScorer:
    """Car score of photos from EfficientNet-Lite0's ImageNet head, batched, on the CPU by default.

    grid: (columns, rows) of tiles scored besides the whole photo (see the module docstring).
    batch_size: network inputs (views, not photos) per forward pass.
    threads: torch intra-op threads (None: torch's default).
    progress: show a progress bar (stderr) over the photos.
    last_views: after a call, the car probability of every view [N, 1 + columns * rows] (NaN rows
        for unreadable files): the benchmark compares grids from one pass.
    """

    grid: tuple[int, int] = (1, 1)
    batch_size: int = 32
    threads: int | None = None
    progress: bool = True
    device: str = "cpu"
    last_views: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)), repr=False)
    _model: Any = field(default=None, repr=False)
    _spec: PreprocessSpec | None = field(default=None, repr=False)

    def _load(self) -> tuple[Any, PreprocessSpec]:
        if self._model is not None and self._spec is not None:
            return self._model, self._spec
        try:
            import timm
            import torch
        except ImportError as exc:
            raise CarScoreError(
                f"the no-car score runs the ImageNet head of {IMAGENET_BACKBONE} and needs torch and timm "
                f"({exc}); install the train extra: pip install 'carid[train]'"
            ) from None
        from carid.models.weights import WeightsError, load_offline_weights

        if self.threads:
            torch.set_num_threads(self.threads)
        model = timm.create_model(IMAGENET_BACKBONE, pretrained=False, num_classes=1000)
        try:
            load_offline_weights(model, IMAGENET_BACKBONE)
        except WeightsError as exc:
            raise CarScoreError(f"the no-car score needs ImageNet weights: {exc}") from None
        data_config = timm.data.resolve_data_config({}, model=model)
        self._spec = PreprocessSpec(
            image_size=(IMAGENET_INPUT, IMAGENET_INPUT),
            mean=tuple(data_config["mean"]),
            std=tuple(data_config["std"]),
            interpolation=str(data_config["interpolation"]),
        )
        self._model = model.eval().to(self.device)
        return self._model, self._spec

    def _views(self, paths: Sequence[Path], spec: PreprocessSpec) -> Iterator[tuple[int, np.ndarray | None]]:
        """(photo index, network inputs [V, 3, H, W] of its views, or None when unreadable)."""
        for index, path in enumerate(paths):
            try:
                image = load_rgb(Path(path))
            except ImageError:
                yield index, None
                continue
            crops = [image.crop(box) for box in tile_boxes(image.width, image.height, self.grid)]
            yield index, np.stack([preprocess(crop, spec)[0] for crop in crops])

    def __call__(self, paths: Sequence[Path]) -> np.ndarray:
        """Car score [N] in [0, 1] of each photo (largest car probability over its views); NaN when
        the file cannot be decoded (the data checks report why)."""
        import torch

        model, spec = self._load()
        views_per_photo = view_count(self.grid)
        views = np.full((len(paths), views_per_photo), np.nan)
        pending: list[tuple[int, np.ndarray]] = []

        def run() -> None:
            batch = torch.from_numpy(np.concatenate([inputs for _, inputs in pending]))
            with torch.inference_mode():
                probabilities = torch.softmax(model(batch.to(self.device)), dim=1).cpu().numpy()
            scores = car_probability(probabilities).reshape(len(pending), views_per_photo)
            for (index, _), row in zip(pending, scores, strict=True):
                views[index] = row
            pending.clear()

        columns = (TextColumn("no-car score"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), disable=not self.progress) as bar:
            task = bar.add_task("score", total=len(paths))
            for index, inputs in self._views(paths, spec):
                if inputs is not None:
                    pending.append((index, inputs))
                    if len(pending) * views_per_photo >= self.batch_size:
                        run()
                bar.advance(task)
            if pending:
                run()
        self.last_views = views
        with np.errstate(all="ignore"):
            return np.max(views, axis=1)
