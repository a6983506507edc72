"""Shared pieces of the carid.scale tests: a real ONNX bundle built by hand in a few milliseconds
(no training: its logits are a fixed linear map of each photo's mean colour, so different photos
get different answers), and folders of small random photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carid.artifacts.bundle import MODEL_FILE, BundleMetadata, write_metadata
from carid.preprocess import PreprocessSpec
from carid.taxonomy import Taxonomy
from tests.conftest import write_image

CLASSES = ("Audi TTS Coupe 2012", "Audi R8 Coupe 2012", "BMW X5 SUV 2007", "BMW M3 Coupe 2012")


def build_bundle(folder: Path) -> Path:
    """A bundle whose graph maps the mean colour of the input to 4 logits, a fixed box and the
    3-value embedding (the mean colour itself)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    constants = {
        "weights": rng.normal(0, 4, size=(3, len(CLASSES))).astype(np.float32),
        "zeros": np.zeros((3, 4), dtype=np.float32),
        "box_values": np.array([[0.2, 0.25, 0.8, 0.75]], dtype=np.float32),
    }
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["embedding"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["embedding", "weights"], ["logits"]),
        helper.make_node("MatMul", ["embedding", "zeros"], ["nothing"]),
        helper.make_node("Add", ["nothing", "box_values"], ["box"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mean_colour_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)]),
            helper.make_tensor_value_info("box", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
        ],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / MODEL_FILE))
    metadata = BundleMetadata(
        class_names=CLASSES,
        preprocess=PreprocessSpec(image_size=(32, 32)).to_dict(),
        with_box=True,
        taxonomy=Taxonomy.from_class_names(CLASSES).to_dict(),
        output_names=("logits", "box", "embedding"),
        embedding_dim=3,
    )
    write_metadata(folder, metadata)
    return folder


def write_photos(folder: Path, count: int) -> list[Path]:
    """`count` small photos of different colours in two sub-folders (PNG and JPEG)."""
    return [
        write_image(
            folder / f"part{i % 2}" / f"photo-{i:04d}.{'png' if i % 3 else 'jpg'}",
            (40, 30),
            color=((i * 37) % 256, (i * 91) % 256, (i * 53) % 256),
        )
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def scale_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("scale-bundle") / "bundle")
