"""An ensemble answering photos like one model: `EnsemblePredictor` and the combination maths.

Each member preprocesses the photo with its own `PreprocessSpec` and runs in its own ONNX Runtime
session; its probabilities p_m [N, C] (softmax(logits / T_m) with the member bundle's own
temperature, i.e. what that bundle alone would tell a user) are put in the ensemble's class order by
name and combined per class:

    q[n, c] = sum_m W[m, c] * p_m[n, c]          p[n, c] = q[n, c] / sum_c' q[n, c']

The ensemble's "logits" are log p (floored at PROBABILITY_FLOOR), so its temperature T gives
softmax(log p / T) ~ p^(1/T), and its "unknown" threshold works as for one bundle. Boxes: the
members with a box head give each a box in the pixels of the original photo (mapped back through
that member's own preprocessing); box_mode "mean" averages them, "best" takes the member with the
best mean IoU on the fit data. `Predictor.load(ENSEMBLE)` returns an `EnsemblePredictor` (each
member on ONNX Runtime, no torch), so `carid predict` and `carid serve` accept an ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carid.artifacts.bundle import (
    BOX,
    LOGITS,
)
from carid.artifacts.ensemble import MEMBERS_DIR, Ensemble, weight_matrix
from carid.runtime.backends import PredictorError
from carid.runtime.calibration import apply_temperature
from carid.runtime.inputs import ImageInput, PreparedImage, prepare_image
from carid.runtime.predictor import Predictor, register_loader

PROBABILITY_FLOOR = 1e-12  # log(p) of the ensemble's "logits" is floored here (about -27.6)


def combine_probabilities(member_probabilities: object, weights: object) -> np.ndarray:
    """The ensemble's probabilities float64 [N, C] (rows sum to 1); see the module docstring.

    member_probabilities: [M, N, C], each member's probabilities in the ensemble's class order.
    weights: [M] or [M, C] (normalised per class column by `weight_matrix`).
    """
    probabilities = np.asarray(member_probabilities, dtype=np.float64)
    if probabilities.ndim != 3:
        raise ValueError(f"member probabilities must have shape [M, N, C], got {list(probabilities.shape)}")
    num_members, _, num_classes = probabilities.shape
    matrix = weight_matrix(weights, num_members, num_classes)
    combined = np.einsum("mc,mnc->nc", matrix, probabilities)
    totals = combined.sum(axis=1, keepdims=True)
    # A row sums to 0 only when no member gives any probability where it has weight: uniform then.
    uniform = np.full_like(combined, 1.0 / max(num_classes, 1))
    return np.divide(combined, totals, out=uniform, where=totals > 0)


def probabilities_to_logits(probabilities: object) -> np.ndarray:
    """log(max(p, PROBABILITY_FLOOR)), float64 [..., C]: "logits" whose softmax gives p back (up to the
    floor), so temperatures and thresholds apply to an ensemble as to one network."""
    return np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), PROBABILITY_FLOOR))


def combine_boxes(member_boxes: Sequence[np.ndarray | None], box_weights: object) -> np.ndarray | None:
    """Weighted mean float64 [N, 4] of the members' boxes (absolute xyxy pixels of the same photos).

    Members without a box (None) or with weight 0 are left out and the other weights renormalised;
    None when no member is left. The mean of boxes clipped to a photo stays inside it.
    """
    weights = np.asarray(box_weights, dtype=np.float64)
    if weights.shape != (len(member_boxes),):
        raise ValueError(f"box weights must have shape [{len(member_boxes)}], got {list(weights.shape)}")
    used = [
        (float(weight), np.asarray(boxes, dtype=np.float64))
        for weight, boxes in zip(weights, member_boxes, strict=True)
        if boxes is not None and weight > 0
    ]
    if not used:
        return None
    total = sum(w for w, _ in used)
    return sum(w * b for w, b in used) / total  # type: ignore[return-value]


@dataclass(frozen=True)
class EnsemblePreparedImage(PreparedImage):
    """One input prepared for every member: `parts[m]` with member m's own preprocessing.
    geometry (original photo size) is the first member's; the times are the members' sums."""

    parts: tuple[PreparedImage, ...] = field(default=(), repr=False)


class EnsembleBackend:
    """The members seen as one backend by `Predictor`: names the outputs the ensemble gives.

    There is no single input batch for an ensemble (each member takes its own input size), so
    `run` refuses; `EnsemblePredictor` runs the members itself.
    """

    def __init__(self, members: Sequence[Predictor], with_box: bool) -> None:
        names = {member.backend.name for member in members}
        self.name = names.pop() if len(names) == 1 else "mixed"
        self.output_names = (LOGITS, BOX) if with_box else (LOGITS,)
        self.members = tuple(members)
        modes = {member.tta for member in members}
        self.tta = modes.pop() if len(modes) == 1 else "mixed"  # each member applies its own TTA

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise PredictorError(
            "an ensemble has no single input batch: each member takes its own input size; "
            "use Predictor.predict, which preprocesses each photo for every member"
        )


class EnsemblePredictor(Predictor):
    """A `Predictor` over an ensemble folder: each photo is prepared for every member with that
    member's spec, each member runs on its own backend, and the probabilities (and boxes) are
    combined with the ensemble's weights; temperature, threshold, top-k, taxonomy roll-up and the
    `Prediction` records are the base class's. `embed` is refused (no single embedding)."""

    def __init__(self, ensemble: Ensemble, members: Sequence[Predictor]) -> None:
        if len(members) != len(ensemble.bundles):
            raise ValueError(f"{len(members)} member predictors for {len(ensemble.bundles)} members")
        self.ensemble = ensemble
        self.members = tuple(members)
        self.weights = ensemble.metadata.weight_matrix()
        self.box_weights = np.asarray(ensemble.metadata.box_weights, dtype=np.float64)
        metadata = ensemble.predictor_metadata()
        super().__init__(EnsembleBackend(self.members, metadata.with_box), metadata, ensemble.path)

    @classmethod
    def load(
        cls,
        path: Path | str,
        backend: str = "auto",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        device: str = "cpu",
        tta: str = "none",
    ) -> EnsemblePredictor:
        """Load the ensemble folder and a `Predictor` per member (ONNX Runtime with "auto"); tta
        is each member's (`carid.runtime.tta`)."""
        ensemble = Ensemble.load(path)
        members = [
            Predictor.load(
                ensemble.member_path(index),
                backend,
                providers=providers,
                threads=threads,
                device=device,
                enrolled=False,  # an ensemble answers with its members' trained classes
                tta=tta,
            )
            for index in range(len(ensemble.bundles))
        ]
        return cls(ensemble, members)

    def _prepare(self, images: Sequence[ImageInput], names: Sequence[str]) -> list[PreparedImage]:
        prepared: list[PreparedImage] = []
        for image, name in zip(images, names, strict=True):
            parts: list[PreparedImage] = []
            for member in self.members:
                parts.append(prepare_image(image, member.spec, name))
                if parts[-1].error is not None:  # unreadable for one is unreadable for all
                    break
            prepared.append(
                EnsemblePreparedImage(
                    name=name,
                    geometry=parts[0].geometry,
                    decode_ms=sum(part.decode_ms for part in parts),
                    preprocess_ms=sum(part.preprocess_ms for part in parts),
                    error=parts[-1].error,
                    parts=tuple(parts),
                )
            )
        return prepared

    def _forward(self, prepared: Sequence[PreparedImage]) -> tuple[np.ndarray, np.ndarray | None]:
        items = [item for item in prepared if isinstance(item, EnsemblePreparedImage)]
        if len(items) != len(prepared):
            raise PredictorError("an ensemble runs only on images it prepared itself")
        member_probabilities = np.empty((len(self.members), len(items), self.metadata.num_classes))
        member_boxes: list[np.ndarray | None] = []
        for index, member in enumerate(self.members):
            logits, boxes = member._forward([item.parts[index] for item in items])
            probabilities = apply_temperature(logits, member.metadata.temperature)
            member_probabilities[index] = probabilities[:, self.ensemble.columns[index]]
            member_boxes.append(boxes)
        combined = combine_probabilities(member_probabilities, self.weights)
        boxes = combine_boxes(member_boxes, self.box_weights) if self.metadata.with_box else None
        return probabilities_to_logits(combined), boxes

    def embed(self, images: Any, batch_size: int = 16) -> np.ndarray:
        raise PredictorError(
            f"{self.source}: an ensemble has no single embedding; embed with one of its members "
            f"({self.source / MEMBERS_DIR if self.source else MEMBERS_DIR}/<name>)"
        )

    def warmup(self, batch_size: int = 1) -> float:
        """Warm every member up; returns the total milliseconds."""
        return sum(member.warmup(batch_size) for member in self.members)

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["image_size"] = None
        info["ensemble"] = {
            **self.ensemble.describe(),
            "member_backends": [member.backend.name for member in self.members],
        }
        return info


register_loader("ensemble", EnsemblePredictor.load)
