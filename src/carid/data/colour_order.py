"""Are red and blue swapped in this dataset? A check for BGR arrays saved as if they were RGB.

OpenCV holds images as BGR; saving such an array with a library that expects RGB swaps red and blue
in every file, and nothing else looks wrong: the files decode, sizes and labels are right, and a
network trains on them (the public source of the Stanford crops had this defect).

Why a hand-written statistic and not an ImageNet network: measured on 200 Stanford crops, the
ImageNet head of EfficientNet-Lite0 gives the same car probability (0.797 both ways; higher as
stored for 48% of the images) and the same entropy to a car photo and to its red/blue swap
(benchmarks/RESULTS.md, "Colour order"): cars come in every colour, so the network ignores colour.
What does change is where colours sit in a photo. Sky and distance make the top of an outdoor photo
bluer than its bottom (road, ground, the car's shadow), whatever the tint of the whole photo. Per
image, `gradient` = mean(B - R) over the top third minus mean(B - R) over the bottom third, in
0-255 units. Swapping red and blue negates it exactly, so the paired comparison "as stored against
swapped" is a sign test on it: a dataset is flagged when significantly more images are redder at
the top than bluer (one-sided sign test p below `ALPHA`) and they are at least `MIN_SHARE` of the
decided images. Images with |gradient| below `TIE` (grey images, flat studio backgrounds) decide
nothing and are left out of the test, as ties are in a sign test. A dataset where neither order
wins is "undecided", not flagged.

Where full photos with boxes exist beside crops (the Stanford devkit beside the crops), the crops
can be compared with them directly: `compare_with_references` cuts each photo at its box, resizes
it to the crop and measures the mean absolute difference as stored and swapped.

Pure NumPy + Pillow (no torch): it runs in `carid data check` on the slim install. The fix is
`data.swap_rb: true` (training swaps on load) or `carid data fix-colours` (a corrected copy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from carid.data.samples import Problem, Sample, Severity
from carid.images import ImageError, load_rgb, swap_red_blue

PROBLEM_KIND = "colour_order"
SAMPLE_SIZE = 200  # images scored by default
ALPHA = 0.01  # one-sided sign-test p below which an order wins
MIN_SHARE = 0.6  # ... and the share of decided images that must agree with it
TIE = 1.0  # |gradient| below this (0-255 units) decides nothing
SIDE = 64  # images are compared at SIDE x SIDE pixels


@dataclass(frozen=True)
class ReferenceEvidence:
    """Crops compared with the full photos they were cut from (cut at their boxes, resized to the crop).

    pairs: crops compared; mad_stored / mad_swapped: mean absolute difference (0-255) of the crops
    as stored / with red and blue swapped; swapped_closer: pairs closer to their photo when swapped.
    """

    pairs: int
    mad_stored: float
    mad_swapped: float
    swapped_closer: int

    @property
    def swapped(self) -> bool:
        """The crops match their photos better with red and blue swapped (for most pairs)."""
        return self.pairs > 0 and self.swapped_closer * 2 > self.pairs and self.mad_swapped < self.mad_stored

    def to_dict(self) -> dict[str, object]:
        return {
            "pairs": self.pairs,
            "mad_stored": round(self.mad_stored, 2),
            "mad_swapped": round(self.mad_swapped, 2),
            "swapped_closer": self.swapped_closer,
        }


@dataclass(frozen=True)
class ColourOrderVerdict:
    """What `check_colour_order` found on a seeded sample of a dataset's images.

    verdict: "swapped" (flagged), "ok" (as stored wins) or "undecided".
    scored: images decoded; unreadable: sampled files that could not be decoded (the data checks
        report why); bluer_top / redder_top: images whose top is bluer / redder than their bottom
        by at least `TIE`; ties: the rest.
    p_swapped / p_stored: one-sided sign-test p-values that the swapped / stored order is right.
    mean_gradient: mean of the per-image gradient (positive: bluer on top, as natural photos are).
    reference: the direct comparison with full photos, when references were given.
    """

    verdict: str
    scored: int
    unreadable: int
    bluer_top: int
    redder_top: int
    ties: int
    p_swapped: float
    p_stored: float
    mean_gradient: float
    reference: ReferenceEvidence | None = None

    @property
    def flagged(self) -> bool:
        return self.verdict == "swapped"

    @property
    def evidence(self) -> str:
        """The figures behind the verdict, in one sentence."""
        decided = self.bluer_top + self.redder_top
        text = (
            f"of {self.scored} sampled images, {self.redder_top} are redder at the top than at the bottom "
            f"and {self.bluer_top} bluer ({self.ties} too close to call), where natural photos are bluer "
            f"at the top (sky, distance); one-sided sign tests over the {decided} decided images: "
            f"swapped order p = {self.p_swapped:.2g}, stored order p = {self.p_stored:.2g}"
        )
        if self.reference is not None:
            ref = self.reference
            text += (
                f"; against {ref.pairs} full reference photos the crops differ by {ref.mad_stored:.1f} "
                f"as stored and {ref.mad_swapped:.1f} swapped (0-255)"
            )
        return text

    def problem(self, root: Path | str) -> Problem | None:
        """The dataset-level WARNING to add to the check report when flagged, else None."""
        if not self.flagged:
            return None
        return Problem(
            kind=PROBLEM_KIND,
            message=(
                f"red and blue look swapped (a BGR array saved as RGB); fix: data.swap_rb: true, or a "
                f"corrected copy: carid data fix-colours {root} --out DST. Evidence: {self.evidence}"
            ),
            source=str(root),
            severity=Severity.WARNING,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "scored": self.scored,
            "unreadable": self.unreadable,
            "bluer_top": self.bluer_top,
            "redder_top": self.redder_top,
            "ties": self.ties,
            "p_swapped": self.p_swapped,
            "p_stored": self.p_stored,
            "mean_gradient": round(self.mean_gradient, 3),
            "reference": None if self.reference is None else self.reference.to_dict(),
        }


def vertical_gradient(image: Image.Image) -> float:
    """mean(B - R) over the top third minus over the bottom third, 0-255 units (see the module docstring)."""
    small = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(small, dtype=np.float64)
    blue_minus_red = pixels[..., 2] - pixels[..., 0]
    third = SIDE // 3
    return float(blue_minus_red[:third].mean() - blue_minus_red[-third:].mean())


def sign_test(successes: int, trials: int) -> float:
    """One-sided p-value P[X >= successes] for X ~ Binomial(trials, 1/2) (exact)."""
    if trials <= 0:
        return 1.0
    tail = sum(math.comb(trials, k) for k in range(max(successes, 0), trials + 1))
    return tail / 2**trials


def sample_paths(paths: Sequence[Path | str], size: int, seed: int = 0) -> list[Path]:
    """A seeded sample of `size` distinct files (all of them when there are fewer), in sorted order."""
    unique = sorted({str(path) for path in paths})
    if size <= 0 or len(unique) <= size:
        return [Path(path) for path in unique]
    chosen = np.random.default_rng(seed).choice(len(unique), size=size, replace=False)
    return [Path(unique[i]) for i in sorted(chosen)]


def verdict_from_gradients(
    gradients: Sequence[float], unreadable: int = 0, reference: ReferenceEvidence | None = None
) -> ColourOrderVerdict:
    """The verdict from per-image gradients (as the images will be used)."""
    values = np.asarray(gradients, dtype=np.float64)
    bluer, redder = int(np.sum(values >= TIE)), int(np.sum(values <= -TIE))
    decided = bluer + redder
    p_swapped, p_stored = sign_test(redder, decided), sign_test(bluer, decided)
    if decided and p_swapped < ALPHA and redder >= MIN_SHARE * decided:
        verdict = "swapped"
    elif decided and p_stored < ALPHA and bluer >= MIN_SHARE * decided:
        verdict = "ok"
    else:
        verdict = "undecided"
    if reference is not None and reference.pairs:  # a direct comparison outweighs the prior
        verdict = "swapped" if reference.swapped else "ok"
    return ColourOrderVerdict(
        verdict=verdict,
        scored=len(values),
        unreadable=unreadable,
        bluer_top=bluer,
        redder_top=redder,
        ties=len(values) - decided,
        p_swapped=p_swapped,
        p_stored=p_stored,
        mean_gradient=float(values.mean()) if len(values) else 0.0,
        reference=reference,
    )


def check_colour_order(
    paths: Sequence[Path | str],
    sample: int = SAMPLE_SIZE,
    seed: int = 0,
    swap: bool = False,
    reference: ReferenceEvidence | None = None,
) -> ColourOrderVerdict:
    """Score a seeded sample of `sample` images (0 = all) and return the verdict.

    swap: score the images with red and blue swapped, as training sees them under `data.swap_rb`.
    Unreadable files are counted, not raised: the data checks report them.
    """
    gradients: list[float] = []
    unreadable = 0
    for path in sample_paths(paths, sample, seed):
        try:
            image = load_rgb(path, min_side=SIDE)
        except (ImageError, OSError):
            unreadable += 1
            continue
        gradient = vertical_gradient(image)
        gradients.append(-gradient if swap else gradient)
    return verdict_from_gradients(gradients, unreadable, reference)


def compare_with_references(
    pairs: Sequence[tuple[Path, Path, Sequence[float]]],
) -> ReferenceEvidence:
    """Crops against the photos they were cut from: (crop, photo, xyxy box in the photo's pixels).

    Unreadable files and empty boxes are skipped. Both sides are compared at the crop's size.
    """
    stored: list[float] = []
    swapped: list[float] = []
    for crop_path, photo_path, box in pairs:
        try:
            crop, photo = load_rgb(crop_path), load_rgb(photo_path)
        except (ImageError, OSError):
            continue
        left, top = max(0, round(box[0])), max(0, round(box[1]))
        right, bottom = min(photo.width, round(box[2])), min(photo.height, round(box[3]))
        if right <= left or bottom <= top:
            continue
        cut = np.asarray(photo.crop((left, top, right, bottom)).resize(crop.size, Image.Resampling.BILINEAR))
        reference = cut.astype(np.float64)
        stored.append(float(np.abs(reference - np.asarray(crop, dtype=np.float64)).mean()))
        swapped.append(float(np.abs(reference - np.asarray(swap_red_blue(crop), dtype=np.float64)).mean()))
    return ReferenceEvidence(
        pairs=len(stored),
        mad_stored=float(np.mean(stored)) if stored else 0.0,
        mad_swapped=float(np.mean(swapped)) if swapped else 0.0,
        swapped_closer=sum(b < a for a, b in zip(stored, swapped, strict=True)),
    )


def reference_pairs(
    crops: Sequence[Sample], references: Sequence[Sample]
) -> list[tuple[Path, Path, Sequence[float]]]:
    """(crop, photo, box) for every crop whose file name is that of a boxed reference photo on disk.

    E.g. the Stanford crops against the devkit (`cars_train/04530.jpg` and its box in
    `cars_train_annos.mat`): a crop keeps its photo's file name.
    """
    by_name = {s.path.name: s for s in references if s.has_box}
    pairs = []
    for crop in crops:
        photo = by_name.get(crop.path.name)
        if photo is not None and photo.path != crop.path and photo.path.is_file():
            pairs.append((crop.path, photo.path, [float(v) for v in np.asarray(photo.boxes)[0]]))
    return pairs
