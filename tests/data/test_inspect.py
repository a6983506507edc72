"""The data job's `data.exclude`: matching files never reach a split."""

from __future__ import annotations

from pathlib import Path

from carid.config import CheckConfig, DataConfig
from carid.data.inspect import inspect_dataset
from tests.conftest import write_image


def _folder_dataset(root: Path) -> Path:
    for label in ("audi", "bmw"):
        for i in range(12):
            write_image(
                root / label / f"{label}_{i:02d}.jpg", size=(48, 40), seed=i + (0 if label == "audi" else 50)
            )
    return root


def test_excluded_files_are_in_no_split(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path / "data")
    data = DataConfig(exclude=("audi_0[0-2].jpg", "bmw/bmw_11.jpg"))
    inspection = inspect_dataset(root, data, CheckConfig(workers=1), split=True, progress=False)
    names = {sample.path.name for sample in inspection.report.usable().samples}
    assert len(names) == 20
    assert not names & {"audi_00.jpg", "audi_01.jpg", "audi_02.jpg", "bmw_11.jpg"}
    assert inspection.splits is not None and len(inspection.splits) == 20


def test_no_exclude_keeps_everything(tmp_path: Path) -> None:
    root = _folder_dataset(tmp_path / "data")
    inspection = inspect_dataset(root, DataConfig(), CheckConfig(workers=1), split=True, progress=False)
    assert len(inspection.report.usable().samples) == 24
