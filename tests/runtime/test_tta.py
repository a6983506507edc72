"""Tests for carid.runtime.tta: the mirror-image average, on stub backends whose outputs the test chooses,
and through `Predictor` (boxes back in photo pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from carid.preprocess import PreprocessSpec
from carid.runtime.backends import PredictorError
from carid.runtime.predictor import Predictor
from carid.runtime.tta import FlipBackend, TtaError, check_mode, mirror_boxes, tta_of, with_tta
from tests.runtime.test_predictor import StubBackend, stub_predictor

LEFT_BOX = (0.1, 0.2, 0.3, 0.6)  # normalized xyxy in the network input; its mirror is (0.7, 0.2, 0.9, 0.6)


class HalvesBackend:
    """logits = [mean of the left half, mean of the right half]; box: where the bright pixels are
    (so it follows the image when mirrored); embedding: mean over rows of the first channel."""

    name = "halves"
    output_names = ("logits", "box", "embedding")

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(batch.copy())
        width, height = batch.shape[3], batch.shape[2]
        half = width // 2
        logits = np.stack([batch[..., :half].mean(axis=(1, 2, 3)), batch[..., half:].mean(axis=(1, 2, 3))], 1)
        boxes = []
        for image in batch:
            ys, xs = np.nonzero(image[0] > 0.5)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            boxes.append([x0 / width, y0 / height, x1 / width, y1 / height])
        return {
            "logits": logits.astype(np.float32),
            "box": np.asarray(boxes, dtype=np.float32),
            "embedding": batch[:, 0].mean(axis=1).astype(np.float32),
        }


def bright_rectangle(x0: int, x1: int, y0: int, y1: int, size: int = 16) -> np.ndarray:
    image = np.zeros((1, 3, size, size), dtype=np.float32)
    image[0, :, y0:y1, x0:x1] = 1.0
    return image


def test_mirror_boxes_swaps_and_reflects_the_x_edges() -> None:
    boxes = np.array([LEFT_BOX, (0.0, 0.0, 1.0, 1.0)])
    np.testing.assert_allclose(mirror_boxes(boxes), [(0.7, 0.2, 0.9, 0.6), (0.0, 0.0, 1.0, 1.0)])
    np.testing.assert_allclose(mirror_boxes(mirror_boxes(boxes)), boxes)
    assert mirror_boxes(boxes) is not boxes and boxes[0, 0] == pytest.approx(0.1)  # input kept


def test_a_box_that_follows_the_image_comes_back_where_it_was() -> None:
    inner = HalvesBackend()
    batch = bright_rectangle(2, 6, 3, 12)  # bright on the left
    plain, averaged = inner.run(batch), FlipBackend(inner).run(batch)
    np.testing.assert_allclose(averaged["box"], plain["box"], atol=1e-6)  # (2/16, 3/16, 6/16, 12/16)
    # The class scores of the two views swap halves, so their mean is the same for both.
    left, right = plain["logits"][0]
    np.testing.assert_allclose(averaged["logits"], [[(left + right) / 2] * 2], atol=1e-6)
    # The second batch the network saw was the first one, mirrored left-right.
    np.testing.assert_array_equal(inner.batches[-1], batch[..., ::-1])
    np.testing.assert_allclose(averaged["embedding"], (plain["embedding"] + plain["embedding"][:, ::-1]) / 2)


def test_a_fixed_box_is_averaged_with_its_mirror() -> None:
    backend = with_tta(StubBackend([2.0, 1.0, 0.0, -1.0], box=LEFT_BOX), "hflip")
    outputs = backend.run(np.zeros((3, 3, 8, 8), dtype=np.float32))
    np.testing.assert_allclose(outputs["box"], [(0.4, 0.2, 0.6, 0.6)] * 3, atol=1e-6)
    np.testing.assert_allclose(outputs["logits"], [[2.0, 1.0, 0.0, -1.0]] * 3)
    assert outputs["box"].dtype == np.float32 and backend.name == "stub" and tta_of(backend) == "hflip"


def test_modes_and_their_errors() -> None:
    stub = StubBackend([1.0, 0.0])
    assert with_tta(stub, "none") is stub and with_tta(stub, None) is stub and tta_of(stub) == "none"
    assert check_mode(None) == "none" and check_mode("hflip") == "hflip"
    with pytest.raises(TtaError, match="'vflip' is not one of none, hflip"):
        with_tta(stub, "vflip")
    wrapped = with_tta(stub, "hflip")
    assert wrapped.logits is stub.logits  # other attributes are the inner backend's


def test_predictor_maps_the_averaged_box_to_photo_pixels(tmp_path: Path) -> None:
    spec = PreprocessSpec(image_size=(32, 32), resize_mode="letterbox")
    plain, _ = stub_predictor(spec=spec, box=LEFT_BOX)
    mirrored, backend = stub_predictor(spec=spec, box=LEFT_BOX)
    tta = Predictor(backend, mirrored.metadata, source="stub", tta="hflip")
    assert (tta.tta, plain.tta) == ("hflip", "none") and tta.info()["tta"] == "hflip"
    photo = tmp_path / "wide.png"
    Image.new("RGB", (64, 32), (200, 30, 30)).save(photo)
    # The averaged network box (0.4, 0.2, 0.6, 0.6) is what a stub answering it would give.
    expected, _ = stub_predictor(spec=spec, box=(0.4, 0.2, 0.6, 0.6))
    (result,) = tta.predict([photo])
    (reference,) = expected.predict([photo])
    assert result.box is not None and reference.box is not None
    np.testing.assert_allclose(result.box.to_list(), reference.box.to_list(), atol=1e-4)
    assert len(backend.batches) == 2  # one batch, run on the photo and on its mirror


def test_load_refuses_an_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="'rotate' is not one of none, hflip"):
        Predictor.load(tmp_path, tta="rotate")


@pytest.mark.slow
def test_a_real_model_averages_a_photo_and_its_mirror(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """On the tiny trained bundle: the TTA box is the mean of the photo's box and the mirror photo's
    box reflected back, and ONNX Runtime and PyTorch still agree with TTA on."""
    from tests.test_export import tiny_bundle_dir, tiny_run_dir

    run, bundle = tiny_run_dir(tmp_path_factory), tiny_bundle_dir(tmp_path_factory)
    photos = sorted((run.parent.parent / "data" / "images").glob("*.png"))[:6]
    mirrors = []
    for photo in photos:
        mirrors.append(tmp_path / photo.name)
        ImageOps.mirror(Image.open(photo)).save(mirrors[-1])
    plain = Predictor.load(bundle)
    onnx, torch = Predictor.load(bundle, tta="hflip"), Predictor.load(bundle, backend="torch", tta="hflip")
    for photo, original, mirror, with_tta_onnx, with_tta_torch in zip(
        photos,
        plain.predict(photos),
        plain.predict(mirrors),
        onnx.predict(photos),
        torch.predict(photos),
        strict=True,
    ):
        assert original.box is not None and mirror.box is not None and with_tta_onnx.box is not None
        width = original.image_size[0]
        x0, y0, x1, y1 = mirror.box.to_list()
        reflected = np.array([width - x1, y0, width - x0, y1])
        expected = (np.array(original.box.to_list()) + reflected) / 2
        np.testing.assert_allclose(with_tta_onnx.box.to_list(), expected, atol=0.05, err_msg=str(photo))
        assert with_tta_torch.box is not None
        np.testing.assert_allclose(with_tta_onnx.box.to_list(), with_tta_torch.box.to_list(), atol=0.05)
        assert with_tta_onnx.label == with_tta_torch.label
