"""The slim install: the base package (no extras, no torch) predicts with an exported bundle.

A fresh virtualenv gets `pip install <copy of the project>` (non-editable, base dependencies only,
from PyPI or pip's cache), then `import torch` must fail while `carid --help`, `carid predict --help`
and `carid predict BUNDLE photo... --out p.json` work and give the same top-1 classes as the torch
backend in this process; a car detector bundle (`carid.runtime.detection`) finds the same boxes as
here, and a pipeline (a detector trained on drawn boxes + the classifier) writes the same row per
car. The project is copied first (pyproject.toml, README.md, src/) so that the build writes nothing
into the checkout.

Takes about a minute (measured: 56 s for venv + install with a cold pip cache), so it is opt-in:
    CARID_SLIM_TEST=1 .venv/bin/python -m pytest tests/test_slim_install.py -p no:xdist
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carid.runtime.detection import Detector
from carid.runtime.predictor import Predictor

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("CARID_SLIM_TEST") != "1", reason="creates a virtualenv; set CARID_SLIM_TEST=1 to run"
    ),
]


def _run(command: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _copy_project(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (PROJECT / name).exists():
            shutil.copy(PROJECT / name, target / name)
    shutil.copytree(
        PROJECT / "src",
        target / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    return target


def test_slim_install_predicts_without_torch(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from tests.runtime.test_detection import write_fake_detector
    from tests.test_export import tiny_bundle_dir, tiny_run_dir

    bundle = tiny_bundle_dir(tmp_path_factory)
    photos = sorted((tiny_run_dir(tmp_path_factory).parent.parent / "data" / "images").glob("*.png"))[::4]
    expected = [p.label for p in Predictor.load(bundle, backend="torch").predict(photos)]

    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    created = _run([base_python, "-m", "venv", str(venv)], timeout=120)
    assert created.returncode == 0, created.stderr
    python, carid = venv / "bin" / "python", venv / "bin" / "carid"
    project = _copy_project(tmp_path / "project")
    installed = _run([str(python), "-m", "pip", "install", "--quiet", str(project)], timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]

    no_torch = _run([str(python), "-c", "import torch"], timeout=60)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    imports = _run(
        [
            str(python),
            "-c",
            "import carid.runtime.predictor, carid.artifacts.bundle, carid.runtime.predict_io, carid.cli, "
            "carid.runtime.detection, carid.artifacts.detector",
        ],
        timeout=60,
    )
    assert imports.returncode == 0, imports.stderr

    # The car detector runs too: a detector bundle (the fake graph of tests/runtime/test_detection.py)
    # finds the same boxes on a photo as in this process, and nothing imported torch.
    detector = write_fake_detector(tmp_path / "detector", [[20, 10, 40, 30], [60, 20, 90, 50]], [0.9, 0.7])
    frame = np.zeros((128, 192, 3), dtype=np.uint8)
    script = (
        "import json, sys; import numpy as np; from carid.runtime.detection import Detector; "
        "found = Detector.load(sys.argv[1]).detect(np.zeros((128, 192, 3), dtype=np.uint8)); "
        "assert 'torch' not in sys.modules; print(json.dumps([d.to_dict() for d in found]))"
    )
    detected = _run([str(python), "-c", script, str(detector)], timeout=60)
    assert detected.returncode == 0, detected.stderr
    assert json.loads(detected.stdout) == [d.to_dict() for d in Detector.load(detector).detect(frame)] != []

    # A pipeline (a detector trained on drawn boxes + the classifier bundle) answers every car
    # without torch: one CSV row per car, the same boxes and names as in this process.
    from tests.runtime.test_pipeline import tiny_pipeline_dir

    pipeline = tiny_pipeline_dir(tmp_path_factory)
    frames = sorted((pipeline.parent / "frames" / "images").glob("*.png"))[:4]
    cars = [car for answer in Predictor.load(pipeline).predict(frames) for car in answer.all_cars]
    out = tmp_path / "cars.csv"
    predicted = _run(
        [str(carid), "predict", str(pipeline), *map(str, frames), "--out", str(out)], timeout=120
    )
    assert predicted.returncode == 0, predicted.stderr
    with out.open(encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["car"]]
    assert len(rows) == len(cars) > 0
    assert [row["class"] for row in rows] == [car.top1.label if car.top1 else "" for car in cars]
    assert [float(row["x1"]) for row in rows] == pytest.approx([car.box.x1 for car in cars], abs=0.01)

    for command in ([str(carid), "--help"], [str(carid), "predict", "--help"]):
        shown = _run(command, timeout=60)
        assert shown.returncode == 0, shown.stderr
    assert "predict" in _run([str(carid), "--help"], timeout=60).stdout

    out = tmp_path / "p.json"
    predicted = _run(
        [str(carid), "predict", str(bundle), *map(str, photos), "--out", str(out)], timeout=120, cwd=tmp_path
    )
    assert predicted.returncode == 0, predicted.stderr
    results = json.loads(out.read_text(encoding="utf-8"))["predictions"]
    assert [r["source"] for r in results] == [str(p) for p in photos]
    assert [r["label"] for r in results] == expected
    assert all(r["box"] is not None for r in results)

    checkpoint = _run(
        [str(carid), "predict", str(bundle.parent / "checkpoints" / "best.ckpt"), str(photos[0])], timeout=60
    )
    assert checkpoint.returncode == 2 and "needs PyTorch" in checkpoint.stderr

    # Enrolment needs no torch either: a new class from two photos, then predicted from a copy.
    enrolled = tmp_path / "enrolled-bundle"
    shutil.copytree(bundle, enrolled)
    added = _run(
        [str(carid), "enroll", str(enrolled), "--label", "Hyundai Creta 2021", *map(str, photos[:2])],
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    out = tmp_path / "enrolled.json"
    predicted = _run([str(carid), "predict", str(enrolled), str(photos[0]), "--out", str(out)], timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    [result] = json.loads(out.read_text(encoding="utf-8"))["predictions"]
    assert "Hyundai Creta 2021" in [score["label"] for score in result["top_k"]]
