"""`DetectionModule`: the LightningModule of `task: detect`, and `build_detection`, what `train()` calls.

The loss is torchvision's (`DetectorNet.losses`: FCOS focal + GIoU + centerness, or RetinaNet focal
+ smooth L1), logged per epoch as `{stage}/loss` and its parts (`train/classification`,
`train/bbox_regression`, `train/bbox_ctrness`). Validation and test also run torchvision's
post-processing (`DetectorNet.detect`, scores down to `EVAL_SCORE_THRESHOLD`, as COCO evaluation
does) and score the detections with torchmetrics' `MeanAveragePrecision` (the faster_coco_eval
backend): `val/map50` (AP at IoU 0.5, what the best checkpoint is chosen by), `val/map` (AP averaged
over IoU 0.5:0.95) and `val/mar100` (recall with up to 100 detections per image); `test/...` alike
when the run scores its test split at the end. Boxes are compared in network-input pixels (the
letterbox scales every photo of a dataset alike, so AP is the same as in photo pixels up to the
COCO size bins).

With `train.channels_last` (the default) the network and its inputs use the channels-last memory
layout, which makes the backbone's depthwise convolutions about 1.7x faster on CPU. Optimizer and
schedule are `CarModule`'s (AdamW / Adam / SGD; cosine, one-cycle or constant with
warmup), over `DetectorNet.parameter_groups`: the pretrained backbone at `train.lr *
train.backbone_lr_scale`, pyramid and head at `train.lr`. The checkpoint carries, under "carid", a
`ModelMetadata` with `extra["task"] == "detect"` and the DetectConfig (`detector_metadata`), which
`carid.models.detector.load_detector` rebuilds the network from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

from carid.artifacts.checkpoint import CHECKPOINT_KEY, ModelMetadata
from carid.config import Config, TrainConfig
from carid.data.samples import SampleTable
from carid.models.detector import CAR_LABEL, DetectorNet, build_detector, detector_metadata
from carid.preprocess import Geometry
from carid.training.detection_data import DetectionDataModule
from carid.training.module import CarModule

EVAL_SCORE_THRESHOLD = 0.05  # detections scored for mAP (the operating threshold is detect.score_threshold)
MONITOR = "val/map50"
METRICS = {"map50": "map_50", "map": "map", "mar100": "mar_100"}  # carid name -> torchmetrics key


def _targets(boxes: list[Tensor]) -> list[dict[str, Tensor]]:
    """Per-image box tensors -> torchvision / torchmetrics targets (every box a car)."""
    return [
        {"boxes": b.float(), "labels": torch.full((len(b),), CAR_LABEL, dtype=torch.int64, device=b.device)}
        for b in boxes
    ]


class DetectionModule(L.LightningModule):
    """Train / validate / test a `DetectorNet`; see the module docstring for what is logged."""

    def __init__(self, network: DetectorNet, train: TrainConfig, metadata: ModelMetadata) -> None:
        super().__init__()
        self.network = network
        self.train_config = train
        self.metadata = metadata
        self.with_box = True
        self.lr = train.lr  # Lightning's learning-rate finder reads and sets this
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval")

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        """images [B, 3, H, W] -> the post-processed detections of each image (`DetectorNet.detect`)."""
        return self.network.detect(images)

    def setup(self, stage: str) -> None:
        if self.train_config.channels_last:  # about 1.7x faster depthwise convolutions on CPU
            self.network.to(memory_format=torch.channels_last)

    def _images(self, batch: Mapping[str, Any]) -> Tensor:
        images = batch["image"]
        return (
            images.contiguous(memory_format=torch.channels_last)
            if self.train_config.channels_last
            else images
        )

    def _losses(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        parts = self.network.losses(self._images(batch), _targets(batch["boxes"]))
        loss = torch.stack(list(parts.values())).sum()
        size = int(batch["image"].shape[0])
        for name, value in {"loss": loss, **parts}.items():
            self.log(
                f"{stage}/{name}",
                value.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=size,
                sync_dist=True,
            )
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss = self._losses(batch, "train")
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def _evaluate(self, batch: Mapping[str, Any], stage: str, metric: MeanAveragePrecision) -> Tensor:
        loss = self._losses(batch, stage)
        detections = self.network.detect(self._images(batch), score_threshold=EVAL_SCORE_THRESHOLD)
        if "geometry" in batch:  # as the runtime answers: boxes clipped to the photo, not its border
            detections = [
                _clip_to_photo(d, row) for d, row in zip(detections, batch["geometry"], strict=True)
            ]
        metric.update(detections, _targets(batch["boxes"]))
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val", self.val_map)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test", self.test_map)

    def _log_map(self, stage: str, metric: MeanAveragePrecision) -> None:
        results = metric.compute()
        for name, key in METRICS.items():
            value = results[key]
            # torchmetrics answers -1 when nothing can be scored (no box in any image): AP 0 then
            self.log(f"{stage}/{name}", torch.clamp(value.float(), min=0.0), sync_dist=False)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_map("val", self.val_map)

    def on_test_epoch_end(self) -> None:
        self._log_map("test", self.test_map)

    def configure_optimizers(self) -> dict[str, Any]:
        # CarModule's optimizer and schedule read only train_config, lr, network.parameter_groups and
        # the trainer, which this module has too: one recipe for both tasks.
        return CarModule.configure_optimizers(self)  # type: ignore[arg-type]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.metadata.to_dict()


def build_detection(
    config: Config, table: SampleTable, run_name: str
) -> tuple[DetectionModule, DetectionDataModule]:
    """The detector of `config.detect`, its datamodule over `table` and the DetectionModule."""
    network = build_detector(config.detect)
    datamodule = DetectionDataModule(table, network.preprocess_spec, config.detect, config.train)
    metadata = detector_metadata(network, extra={"run_name": run_name, "dataset": str(table.root)})
    return DetectionModule(network, config.train, metadata), datamodule


def _clip_to_photo(detection: dict[str, Tensor], geometry: Tensor) -> dict[str, Tensor]:
    """Detections [N, 4] in network pixels clipped to where the photo lies in the letterboxed input
    (what `carid.runtime.detection` does in photo pixels), so that val/map50 is the bundle's."""
    g = Geometry.from_array(geometry.detach().cpu().numpy())
    right, bottom = g.pad_left + g.original_width * g.scale_x, g.pad_top + g.original_height * g.scale_y
    boxes = detection["boxes"].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(g.pad_left, right)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(g.pad_top, bottom)
    return {**detection, "boxes": boxes}
