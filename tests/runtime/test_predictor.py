"""Tests for carid.runtime.predictor: Predictor and Prediction.

Most tests run the Predictor on a stub backend whose outputs the test chooses, so boxes,
temperature, the unknown threshold and the taxonomy roll-up are checked against figures derived
here. The tests marked slow use the tiny trained run and its bundle from tests/test_export.py to
compare ONNX Runtime with PyTorch.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from carid.artifacts.bundle import METADATA_FILE, BundleMetadata, update_calibration
from carid.preprocess import PreprocessSpec, load_and_preprocess
from carid.runtime.backends import PredictorError
from carid.runtime.inputs import MAX_ASPECT_RATIO, MIN_SIDE
from carid.runtime.predictor import Predictor
from carid.runtime.results import UNKNOWN_LABEL, LevelScore, Prediction
from carid.taxonomy import Taxonomy
from tests.conftest import write_image

CAR_CLASSES = ("Audi TTS Coupe 2012", "Audi R8 Coupe 2012", "BMW X5 SUV 2007", "BMW M3 Coupe 2012")
SPEC = PreprocessSpec(image_size=(32, 32))
MIDDLE_BOX = (0.25, 0.25, 0.75, 0.75)  # normalized xyxy relative to the network input


class StubBackend:
    """Fixed logits and box for every image; the embedding is each image's mean per channel."""

    name = "stub"

    def __init__(
        self,
        logits: Sequence[float],
        box: Sequence[float] | None = MIDDLE_BOX,
        embedding: bool = True,
    ) -> None:
        self.logits = np.asarray(logits, dtype=np.float32)
        self.box = None if box is None else np.asarray(box, dtype=np.float32)
        self.output_names = (
            ("logits",) + (("box",) if box is not None else ()) + (("embedding",) if embedding else ())
        )
        self.batches: list[np.ndarray] = []

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(batch.copy())
        count = len(batch)
        outputs = {"logits": np.tile(self.logits, (count, 1))}
        if self.box is not None:
            outputs["box"] = np.tile(self.box, (count, 1))
        if "embedding" in self.output_names:
            outputs["embedding"] = batch.mean(axis=(2, 3))
        return outputs


def stub_predictor(
    class_names: Sequence[str] = CAR_CLASSES,
    logits: Sequence[float] | None = None,
    spec: PreprocessSpec = SPEC,
    box: Sequence[float] | None = MIDDLE_BOX,
    **changes: Any,
) -> tuple[Predictor, StubBackend]:
    backend = StubBackend(logits if logits is not None else np.linspace(1.0, 0.0, len(class_names)), box)
    values: dict[str, Any] = {
        "class_names": tuple(class_names),
        "preprocess": spec.to_dict(),
        "with_box": box is not None,
        "taxonomy": Taxonomy.from_class_names(class_names).to_dict(),
        "output_names": backend.output_names,
        "embedding_dim": 3,
    }
    values.update(changes)
    return Predictor(backend, BundleMetadata(**values), source="stub"), backend


def softmax(values: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    exponentials = np.exp(np.asarray(values, dtype=np.float64) / temperature)
    return exponentials / exponentials.sum()


# --- boxes back in original pixels -------------------------------------------------------------------


def test_box_in_original_pixels_with_letterbox(tmp_path: Path) -> None:
    spec = PreprocessSpec(image_size=(32, 32), resize_mode="letterbox")
    predictor, _ = stub_predictor(spec=spec)
    wide = write_image(tmp_path / "wide.png", size=(64, 32), seed=1)
    tall = write_image(tmp_path / "tall.png", size=(30, 60), seed=2)
    wide_result, tall_result = predictor.predict([wide, tall])
    network_box = np.array(MIDDLE_BOX) * 32  # [8, 8, 24, 24] network pixels

    # wide 64x32: fit 32/64 -> content 32x16, centred: 8 px of padding on top
    scale, pad_top = 32 / 64, (32 - 16) // 2
    expected = (network_box - [0, pad_top, 0, pad_top]) / scale
    assert wide_result.box is not None and wide_result.image_size == (64, 32)
    np.testing.assert_allclose(wide_result.box.to_list(), expected, atol=1e-4)

    # tall 30x60: fit min(32/30, 32/60) -> content round(30 * 32/60) = 16 x 32, 8 px padding left
    content_w = round(30 * 32 / 60)
    pad_left = (32 - content_w) // 2
    expected = (network_box - [pad_left, 0, pad_left, 0]) / [content_w / 30, 32 / 60, content_w / 30, 32 / 60]
    assert tall_result.box is not None and tall_result.image_size == (30, 60)
    np.testing.assert_allclose(tall_result.box.to_list(), expected, atol=1e-4)


def test_box_in_original_pixels_with_stretch_and_reduced_jpeg_decode(tmp_path: Path) -> None:
    predictor, backend = stub_predictor(spec=PreprocessSpec(image_size=(32, 32), resize_mode="stretch"))
    small = write_image(tmp_path / "small.png", size=(64, 48), seed=1)
    big = write_image(tmp_path / "big.jpg", size=(640, 320), seed=2)  # decoded at 1/4 by the JPEG draft
    small_result, big_result = predictor.predict([small, big])
    network_box = np.array(MIDDLE_BOX) * 32
    for result, (width, height) in ((small_result, (64, 48)), (big_result, (640, 320))):
        assert result.image_size == (width, height)
        expected = network_box / [32 / width, 32 / height, 32 / width, 32 / height]
        assert result.box is not None
        np.testing.assert_allclose(result.box.to_list(), expected, atol=1e-3)
    # the network saw exactly what the one preprocessing path gives
    np.testing.assert_array_equal(backend.batches[0][1], load_and_preprocess(big, predictor.spec)[0])


def test_boxes_are_clipped_to_the_photo(tmp_path: Path) -> None:
    spec = PreprocessSpec(image_size=(32, 32), resize_mode="letterbox")
    predictor, _ = stub_predictor(spec=spec, box=(0.0, 0.0, 1.0, 1.0))  # reaches into the padding
    (result,) = predictor.predict(write_image(tmp_path / "wide.png", size=(64, 32)))
    assert result.box is not None and result.box.to_list() == [0.0, 0.0, 64.0, 32.0]


def test_no_box_head_no_box(tmp_path: Path) -> None:
    predictor, _ = stub_predictor(box=None)
    (result,) = predictor.predict(write_image(tmp_path / "a.png"))
    assert result.ok and result.box is None and result.to_dict()["box"] is None


# --- probabilities: temperature, unknown, taxonomy -------------------------------------------------


def test_temperature_and_unknown_threshold(tmp_path: Path) -> None:
    logits = [2.0, 1.0, 0.0, -1.0]
    photo = write_image(tmp_path / "a.png", seed=3)
    plain, _ = stub_predictor(logits=logits)
    hot, _ = stub_predictor(logits=logits, temperature=2.0)
    (result,) = plain.predict(photo)
    (softened,) = hot.predict(photo)
    np.testing.assert_allclose([s.probability for s in result.top_k], softmax(logits), rtol=1e-6)
    np.testing.assert_allclose([s.probability for s in softened.top_k], softmax(logits, 2.0), rtol=1e-6)
    assert softened.probability < result.probability and softened.label == result.label == CAR_CLASSES[0]

    threshold = float(softmax(logits, 2.0).max()) + 0.01
    strict, _ = stub_predictor(logits=logits, temperature=2.0, unknown_threshold=threshold)
    (unknown,) = strict.predict(photo)
    assert unknown.unknown and unknown.label == UNKNOWN_LABEL
    assert unknown.probability == pytest.approx(softmax(logits, 2.0).max())
    assert unknown.top1 is not None and unknown.top1.label == CAR_CLASSES[0] and len(unknown.top_k) == 4
    lenient, _ = stub_predictor(logits=logits, temperature=2.0, unknown_threshold=threshold - 0.02)
    (known,) = lenient.predict(photo)
    assert not known.unknown and known.label == CAR_CLASSES[0]


def test_an_unknown_answer_says_why(tmp_path: Path) -> None:
    logits = [2.0, 1.0, 0.0, -1.0]
    photo = write_image(tmp_path / "a.png", seed=3)
    threshold = float(softmax(logits).max()) + 0.01
    (below,) = stub_predictor(logits=logits, unknown_threshold=threshold)[0].predict(photo)
    assert below.unknown and below.reason is not None and "threshold" in below.reason
    (known,) = stub_predictor(logits=logits)[0].predict(photo)
    assert not known.unknown and known.reason is None and known.to_dict()["reason"] is None


# --- shapes the preprocessing cannot show the network faithfully (issue 23, defect 7) ---------------


def test_slivers_are_answered_unknown_with_the_reason(tmp_path: Path) -> None:
    predictor, _ = stub_predictor(logits=[9.0, 0.0, 0.0, 0.0])  # a model sure of the first class
    photo = write_image(tmp_path / "car.png", seed=1)
    wide = write_image(tmp_path / "wide.png", size=(10000, 10))
    tall = write_image(tmp_path / "tall.png", size=(10, 10000))
    normal, *slivers = predictor.predict([photo, wide, tall])
    assert not normal.unknown and normal.label == CAR_CLASSES[0] and normal.reason is None
    for result, size in zip(slivers, ((10000, 10), (10, 10000)), strict=True):
        assert result.ok and result.unknown and result.label == UNKNOWN_LABEL
        assert result.reason is not None and "1000:1" in result.reason and "aspect ratio" in result.reason
        # the best guess is kept, as for any unknown answer
        assert result.top1 is not None and result.top1.label == CAR_CLASSES[0] and result.probability > 0.99
        assert result.image_size == size and result.box is not None
        data = json.loads(json.dumps(result.to_dict()))
        assert data["unknown"] is True and data["label"] == UNKNOWN_LABEL and data["reason"] == result.reason


@pytest.mark.parametrize(
    ("size", "refused"),
    [
        ((int(MIN_SIDE * MAX_ASPECT_RATIO), MIN_SIDE), None),
        ((MIN_SIDE, int(MIN_SIDE * MAX_ASPECT_RATIO)), None),
        ((int(MIN_SIDE * MAX_ASPECT_RATIO) + 1, MIN_SIDE), "aspect ratio"),
        ((MIN_SIDE, int(MIN_SIDE * MAX_ASPECT_RATIO) + 1), "aspect ratio"),
        ((MIN_SIDE + 8, MIN_SIDE - 1), f"{MIN_SIDE - 1} px"),
    ],
)
def test_the_shape_limits(size: tuple[int, int], refused: str | None) -> None:
    predictor, _ = stub_predictor(logits=[9.0, 0.0, 0.0, 0.0])
    (result,) = predictor.predict(Image.new("RGB", size, (90, 90, 90)))
    assert result.ok and result.image_size == size
    if refused is None:
        assert not result.unknown and result.reason is None and result.label == CAR_CLASSES[0]
    else:
        assert result.unknown and result.label == UNKNOWN_LABEL
        assert result.reason is not None and refused in result.reason


def test_taxonomy_roll_up_gives_make_body_type_and_year(tmp_path: Path) -> None:
    # the best single class is the BMW M3, but the two Audis together make Audi the likelier make
    logits = [1.2, 1.2, 0.0, 1.5]
    predictor, _ = stub_predictor(logits=logits)
    (result,) = predictor.predict(write_image(tmp_path / "a.png"), top_k=2)
    p = softmax(logits)
    assert result.label == "BMW M3 Coupe 2012" and result.probability == pytest.approx(p[3])
    assert result.make == LevelScore("Audi", pytest.approx(p[0] + p[1]))
    assert result.body_type == LevelScore("Coupe", pytest.approx(p[0] + p[1] + p[3]))
    assert result.year == LevelScore("2012", pytest.approx(p[0] + p[1] + p[3]))
    for level in (result.make, result.body_type, result.year):
        assert level is not None and result.probability <= level.probability + 1e-9 <= 1.0 + 1e-6
    top = result.top_k[0]
    assert (top.make, top.model, top.body_type, top.year) == ("BMW", "M3", "Coupe", 2012)
    assert len(result.top_k) == 2 and result.top_k[1].label in CAR_CLASSES[:2]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["make"]["value"] == "Audi" and data["top_k"][0]["model"] == "M3"


def test_level_models_and_non_car_classes(tmp_path: Path) -> None:
    photo = write_image(tmp_path / "a.png")
    makes, _ = stub_predictor(("Audi", "BMW"), logits=[0.0, 1.0], label_level="make", taxonomy=None)
    (result,) = makes.predict(photo)
    assert result.make == LevelScore("BMW", pytest.approx(softmax([0.0, 1.0])[1]))
    assert result.body_type is None and result.year is None and result.top_k[0].make == "BMW"
    colours, _ = stub_predictor(("red", "green", "blue"))
    (result,) = colours.predict(photo)
    assert result.make is None and result.body_type is None and result.year is None
    assert result.top_k[0].make is None and result.label == "red"


# --- inputs: errors per image, image modes, in-memory images ---------------------------------------


def test_unreadable_files_get_an_error_and_the_rest_are_predicted(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png", seed=1)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image", encoding="utf-8")
    missing = tmp_path / "missing.png"
    truncated = tmp_path / "truncated.jpg"
    full = write_image(tmp_path / "full.jpg", size=(200, 150), seed=2).read_bytes()
    truncated.write_bytes(full[: len(full) // 3])
    other = write_image(tmp_path / "other.jpg", seed=4)
    predictor, backend = stub_predictor()
    results = predictor.predict([good, text, missing, truncated, other], batch_size=2)
    assert [r.source for r in results] == [str(p) for p in (good, text, missing, truncated, other)]
    assert [r.ok for r in results] == [True, False, False, False, True]
    for result, path in zip(results[1:4], (text, missing, truncated), strict=True):
        assert result.error is not None and str(path) in result.error
        assert result.label is None and result.top_k == () and result.to_dict()["ok"] is False
    assert sum(len(batch) for batch in backend.batches) == 2, "only readable images reach the network"


def test_cmyk_alpha_grey_and_palette_images(tmp_path: Path) -> None:
    cmyk = write_image(tmp_path / "cmyk.jpg", seed=1, mode="CMYK")
    grey = write_image(tmp_path / "grey.png", seed=2, mode="L")
    palette = write_image(tmp_path / "palette.png", seed=3, mode="P")
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 20, 30))  # left half fully transparent -> white
    alpha = tmp_path / "alpha.png"
    rgba.save(alpha)
    predictor, backend = stub_predictor()
    paths = [cmyk, grey, palette, alpha]
    results = predictor.predict(paths)
    assert all(r.ok for r in results), [r.error for r in results]
    assert Image.open(cmyk).mode == "CMYK"
    for row, path in enumerate(paths):
        np.testing.assert_array_equal(backend.batches[0][row], load_and_preprocess(path, predictor.spec)[0])
    left = backend.batches[0][3][:, :, :14].mean(axis=(1, 2))  # white after compositing on white
    white = (1.0 - np.array(SPEC.mean)) / np.array(SPEC.std)
    np.testing.assert_allclose(left, white, atol=1e-5)


def test_bytes_and_pil_inputs(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.jpg", size=(80, 60), seed=5)
    predictor, backend = stub_predictor()
    image = Image.open(path)
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 0))
    results = predictor.predict([path.read_bytes(), image, rgba, 42], names=None)
    assert [r.source for r in results] == ["<image 0>", str(path), "<image 2>", "<image 3>"]
    assert [r.ok for r in results] == [True, True, True, False]
    assert results[3].error is not None and "unsupported input int" in results[3].error
    np.testing.assert_array_equal(backend.batches[0][0], backend.batches[0][1])
    assert results[0].image_size == results[1].image_size == (80, 60) and results[2].image_size == (20, 10)
    named = predictor.predict([path.read_bytes()], names=["upload.jpg"])
    assert named[0].source == "upload.jpg"
    with pytest.raises(ValueError, match="2 names"):
        predictor.predict([path], names=["a", "b"])


def test_timing_batches_and_results_as_dicts(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    predictor, backend = stub_predictor()
    batches = list(predictor.predict_batches(paths, batch_size=2))
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert [len(batch) for batch in backend.batches] == [2, 2, 1]
    first, second = batches[0]
    assert first.timing.inference_ms == second.timing.inference_ms > 0
    assert first.timing.decode_ms > 0 and first.timing.preprocess_ms > 0
    assert first.timing.total_ms == pytest.approx(
        first.timing.decode_ms + first.timing.preprocess_ms + first.timing.inference_ms
    )
    data = json.loads(json.dumps(first.to_dict()))
    assert set(data) == {
        "source", "ok", "error", "label", "probability", "unknown", "top_k", "make", "body_type", "year",
        "box", "image_size", "timing", "reason", "detection_score", "cars",
    }  # fmt: skip
    assert set(data["timing"]) == {"decode_ms", "preprocess_ms", "detection_ms", "inference_ms", "total_ms"}
    # a single-model bundle answers the photo as one car: itself, without a detection score
    assert len(data["cars"]) == 1 and data["detection_score"] is None
    assert {k: v for k, v in data.items() if k != "cars"} == data["cars"][0]
    with pytest.raises(ValueError, match="top_k"):
        predictor.predict(paths, top_k=0)


def test_embed_and_warmup(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    predictor, _ = stub_predictor()
    embeddings = predictor.embed(paths, batch_size=2)
    assert embeddings.shape == (3, 3) and embeddings.dtype == np.float32
    expected = np.stack([load_and_preprocess(p, predictor.spec)[0].mean(axis=(1, 2)) for p in paths])
    np.testing.assert_allclose(embeddings, expected, rtol=1e-6)
    with pytest.raises(PredictorError, match=r"missing\.png"):
        predictor.embed([paths[0], tmp_path / "missing.png"])
    assert predictor.warmup(batch_size=2) >= 0
    no_embedding = Predictor(StubBackend([0.0, 1.0], embedding=False), stub_predictor(("a", "b"))[0].metadata)
    with pytest.raises(PredictorError, match="no 'embedding' output"):
        no_embedding.embed(paths)


def test_backend_and_metadata_must_agree(tmp_path: Path) -> None:
    metadata = stub_predictor()[0].metadata
    with pytest.raises(PredictorError, match=r"missing \['box'\]"):
        Predictor(StubBackend([0.0] * 4, box=None), metadata)
    three_logits = Predictor(StubBackend([0.0, 1.0, 2.0]), metadata)
    with pytest.raises(PredictorError, match="4 classes"):
        three_logits.predict(write_image(tmp_path / "a.png"))


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="no such file or folder"):
        Predictor.load(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(PredictorError, match="not a model"):
        Predictor.load(tmp_path / "folder")
    lone = tmp_path / "lone" / "model.onnx"
    lone.parent.mkdir()
    lone.write_bytes(b"")
    with pytest.raises(PredictorError, match=r"model\.json beside it"):
        Predictor.load(lone)
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"")
    with pytest.raises(PredictorError, match="carid export"):
        Predictor.load(checkpoint, backend="onnx")
    with pytest.raises(PredictorError, match="backend 'tensorflow'"):
        Predictor.load(checkpoint, backend="tensorflow")


def test_imports_without_torch(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"")
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'lightning', 'timm', 'albumentations', 'onnx'):\n"
        "    sys.modules[name] = None\n"
        "import carid.runtime.predictor, carid.runtime.predict_io\n"
        "from carid.runtime.predictor import Predictor, PredictorError\n"
        "try:\n"
        f"    Predictor.load({str(checkpoint)!r})\n"
        "except PredictorError as exc:\n"
        "    assert 'needs PyTorch' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('a checkpoint loaded without torch')\n"
        "loaded = [n for n in ('torch', 'lightning', 'timm') if sys.modules.get(n) is not None]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- the real tiny model: ONNX Runtime vs PyTorch -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    """(run dir, bundle dir, the run's photos) of the tiny model trained in tests/test_export.py."""
    from tests.test_export import tiny_bundle_dir, tiny_run_dir

    run, bundle = tiny_run_dir(tmp_path_factory), tiny_bundle_dir(tmp_path_factory)
    photos = sorted((run.parent.parent / "data" / "images").glob("*.png"))
    assert len(photos) == 24
    return run, bundle, photos


def _probabilities(prediction: Prediction, num_classes: int) -> np.ndarray:
    values = np.zeros(num_classes)
    for score in prediction.top_k:
        values[score.index] = score.probability
    return values


@pytest.mark.slow
def test_onnx_and_torch_backends_agree(trained: tuple[Path, Path, list[Path]]) -> None:
    run, bundle, photos = trained
    onnx = Predictor.load(bundle)
    from_bundle = Predictor.load(bundle, backend="torch")
    from_checkpoint = Predictor.load(run / "checkpoints" / "best.ckpt")
    assert (onnx.backend_name, from_bundle.backend_name, from_checkpoint.backend_name) == (
        "onnx",
        "torch",
        "torch",
    )
    reference = onnx.predict(photos, top_k=3, batch_size=7)
    for other in (from_bundle, from_checkpoint):
        for mine, theirs in zip(reference, other.predict(photos, top_k=3, batch_size=5), strict=True):
            assert mine.ok and theirs.ok and mine.label == theirs.label
            np.testing.assert_allclose(_probabilities(mine, 3), _probabilities(theirs, 3), atol=1e-5)
            assert mine.box is not None and theirs.box is not None
            np.testing.assert_allclose(mine.box.to_list(), theirs.box.to_list(), atol=0.05)
    np.testing.assert_allclose(onnx.embed(photos[:4]), from_checkpoint.embed(photos[:4]), atol=1e-4)
    assert onnx.info()["class_names"] == ["blue", "green", "red"] and onnx.info()["backend"] == "onnx"


@pytest.mark.slow
def test_run_folders_use_their_export_and_its_calibration(
    trained: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    run, _, _ = trained
    assert Predictor.load(run).backend_name == "onnx"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    update_calibration(copy / "export", temperature=2.5, unknown_threshold=0.2)
    torch_run = Predictor.load(copy, backend="torch")
    assert torch_run.backend_name == "torch" and torch_run.metadata.temperature == 2.5
    assert torch_run.metadata.unknown_threshold == 0.2
    shutil.rmtree(copy / "export")
    assert Predictor.load(copy).backend_name == "torch"  # no export: the checkpoint on PyTorch
    assert Predictor.load(copy).metadata.temperature == 1.0
    with pytest.raises(PredictorError, match="carid export"):
        Predictor.load(copy, backend="onnx")


@pytest.mark.slow
def test_calibration_set_in_model_json_is_applied(
    trained: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    _, bundle, photos = trained
    plain = Predictor.load(bundle).predict(photos[:6], top_k=3)
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    update_calibration(copy, temperature=3.0)
    softened = Predictor.load(copy).predict(photos[:6], top_k=3)
    for before, after in zip(plain, softened, strict=True):
        # softmax(logits / T) == softmax(log(softmax(logits)) / T)
        expected = softmax(np.log(_probabilities(before, 3)), 3.0)
        np.testing.assert_allclose(_probabilities(after, 3), expected, atol=1e-5)
    update_calibration(copy, unknown_threshold=max(p.probability for p in softened) + 1e-3)
    for result in Predictor.load(copy).predict(photos[:6], top_k=3):
        assert result.unknown and result.label == UNKNOWN_LABEL and len(result.top_k) == 3
    update_calibration(copy, unknown_threshold=0.0)
    assert not any(r.unknown for r in Predictor.load(copy).predict(photos[:6]))


@pytest.mark.slow
def test_torch_backend_refuses_a_changed_source_checkpoint(
    trained: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    _, bundle, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    data = json.loads((copy / METADATA_FILE).read_text(encoding="utf-8"))
    data["source_sha256"] = "0" * 64
    (copy / METADATA_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PredictorError, match="changed since the export"):
        Predictor.load(copy, backend="torch")
    data["source_checkpoint"] = str(tmp_path / "gone.ckpt")
    (copy / METADATA_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PredictorError, match=r"gone\.ckpt"):
        Predictor.load(copy, backend="torch")


@pytest.mark.slow
def test_bundle_predicts_with_torch_blocked(trained: tuple[Path, Path, list[Path]]) -> None:
    _, bundle, photos = trained
    expected = [p.label for p in Predictor.load(bundle).predict(photos[:3])]
    code = (
        "import sys, json\n"
        "for name in ('torch', 'torchvision', 'lightning', 'timm', 'onnx'):\n"
        "    sys.modules[name] = None\n"
        "from carid.runtime.predictor import Predictor\n"
        f"results = Predictor.load({str(bundle)!r}).predict({[str(p) for p in photos[:3]]!r})\n"
        "print(json.dumps([r.label for r in results]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.slow
def test_the_real_model_answers_slivers_unknown(
    trained: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    _, bundle, photos = trained
    predictor = Predictor.load(bundle)
    wide = write_image(tmp_path / "wide.png", size=(10000, 10), color=(220, 20, 20))
    tall = write_image(tmp_path / "tall.png", size=(10, 10000), color=(220, 20, 20))
    alone = predictor.predict(photos[:2], top_k=3)
    first, *slivers, second = predictor.predict([photos[0], wide, tall, photos[1]], top_k=3)
    for before, after in zip(alone, (first, second), strict=True):  # normal photos: unchanged
        assert after.reason is None and after.label == before.label and after.unknown == before.unknown
        np.testing.assert_allclose(_probabilities(after, 3), _probabilities(before, 3), atol=1e-6)
    for result in slivers:
        assert result.ok and result.unknown and result.label == UNKNOWN_LABEL
        assert result.reason is not None and "aspect ratio" in result.reason
        assert len(result.top_k) == 3 and result.probability == result.top_k[0].probability


def test_pil_image_is_not_modified(tmp_path: Path) -> None:
    predictor, _ = stub_predictor()
    image = Image.new("RGBA", (16, 16), (1, 2, 3, 4))
    before = image.tobytes()
    predictor.predict(image)
    assert image.mode == "RGBA" and image.tobytes() == before
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (from_bytes,) = predictor.predict(buffer.getvalue())
    assert from_bytes.ok


def test_the_next_batch_is_prepared_while_the_model_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    predictor, backend = stub_predictor()
    prepare, run = predictor._prepare, backend.run
    started: dict[str, threading.Event] = {str(p): threading.Event() for p in paths}
    overlapped: list[bool] = []

    def recording_prepare(images, names):
        started[names[0]].set()
        return prepare(images, names)

    def waiting_run(batch):
        # While the model runs on batch k, batch k + 1 (first image paths[2k + 2]) gets prepared.
        k = len(overlapped)
        if 2 * k + 2 < len(paths):
            overlapped.append(started[str(paths[2 * k + 2])].wait(timeout=10))
        else:
            overlapped.append(True)
        return run(batch)

    monkeypatch.setattr(predictor, "_prepare", recording_prepare)
    monkeypatch.setattr(backend, "run", waiting_run)
    results = predictor.predict(paths, batch_size=2)
    assert [r.source for r in results] == [str(p) for p in paths] and all(r.ok for r in results)
    assert overlapped == [True, True, True]
