"""Fixtures shared by all tests: the shared real datasets (skipped when absent) and image makers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carid.config import shared_datasets_dir
from tests.skipped_summary import (  # noqa: F401  (the skipped-browser warning)
    pytest_sessionfinish,
    pytest_terminal_summary,
)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """`../shared/datasets`; tests using it are skipped with a reason when it is absent."""
    root = shared_datasets_dir()
    if root is None:
        pytest.skip("../shared/datasets is not present beside this checkout")
    return root


def shared_dataset(root: Path, name: str) -> Path:
    path = root / name
    if not path.exists():
        pytest.skip(f"shared dataset {name} is not present in {root}")
    return path


def write_image(
    path: Path,
    size: tuple[int, int] = (64, 48),
    color: tuple[int, int, int] = (120, 60, 30),
    fmt: str | None = None,
    mode: str = "RGB",
    seed: int | None = None,
) -> Path:
    """Write a small image (random texture when `seed` is given, else a flat colour)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if seed is not None:
        rng = np.random.default_rng(seed)
        array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(array, "RGB")
    else:
        image = Image.new("RGB", size, color)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


@pytest.fixture
def image_factory(tmp_path: Path):
    """`image_factory("a/b.jpg", size=(w, h), seed=1)` writes an image under tmp_path."""

    def make(relative: str, **kwargs) -> Path:
        return write_image(tmp_path / relative, **kwargs)

    return make
