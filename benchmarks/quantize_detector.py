"""An experiment, not a carid feature: a detector bundle's graph quantized to int8 by ONNX Runtime.

`carid export --quantize int8` quantizes classifier bundles only. This script tried the same static
quantization on a detector bundle (benchmarks/RESULTS.md, "An int8 detector"): it copies the bundle,
calibrates on training frames of a split CSV letterboxed by the runtime's own `letterbox`, and
writes the int8 graph in place of model.onnx. `--head-fp32` keeps the detection head's convolutions
in fp32 (those whose weights are shared across pyramid levels). Then build a pipeline from the copy
(`carid pipeline COPY IDENTIFIER --out P`) and time it with `benchmarks/bench_pipeline.py P`, or
score it with `carid evaluate COPY SPLIT.csv --split val`.

    .venv/bin/python benchmarks/quantize_detector.py DETECTOR SPLIT.csv --out /tmp/det-int8 [--head-fp32]
"""

from __future__ import annotations

import argparse
import collections
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from carid.artifacts.bundle import INPUT_NAME, MODEL_FILE
from carid.data.split import load_split
from carid.runtime.detection import Detector, letterbox


class Frames(CalibrationDataReader):
    """The calibration frames, one letterboxed photo per batch (the exported graph takes batch 1)."""

    def __init__(self, paths: list[Path], detector: Detector) -> None:
        self.batches: Iterator[dict[str, np.ndarray]] = (
            {INPUT_NAME: letterbox(np.asarray(Image.open(path).convert("RGB")), detector.spec)[0][None]}
            for path in paths
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def head_convolutions(model: Path) -> list[str]:
    """Conv nodes whose weight is shared by several nodes: the detection head, run at every level."""
    graph = onnx.load(str(model)).graph
    uses = collections.Counter(node.input[1] for node in graph.node if node.op_type == "Conv")
    return [node.name for node in graph.node if node.op_type == "Conv" and uses[node.input[1]] > 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a detector bundle (carid export of a task: detect run)")
    parser.add_argument("split", type=Path, help="the split CSV whose training frames calibrate")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--head-fp32", action="store_true")
    args = parser.parse_args()
    detector = Detector.load(args.bundle)
    train = [Path(s.path) for s in load_split(args.split).samples if s.split == "train"]
    frames = train[:: max(1, len(train) // args.frames)][: args.frames]
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(args.bundle, args.out)
    prepared = args.out / "prepared.onnx"
    quant_pre_process(str(args.bundle / MODEL_FILE), str(prepared))
    kept = head_convolutions(prepared) if args.head_fp32 else []
    quantize_static(
        str(prepared),
        str(args.out / MODEL_FILE),
        Frames(frames, detector),
        quant_format=QuantFormat.QOperator,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=kept,
    )
    prepared.unlink()
    print(f"{args.out}: int8 graph calibrated on {len(frames)} frames; {len(kept)} head convolutions in fp32")


if __name__ == "__main__":
    main()
