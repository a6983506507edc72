"""Make a bundle ready for enrolment: fit its embedding space and score calibration from its run.

`carid export` calls `prepare_enrolment` after the parity check: the bundle's ONNX model is run over
a class-stratified sample of the run's training photos (at most `images`; the within-class
whitening of `carid.embedding.fit_space`) and over its validation photos (the simulated
enrolment of `fit_calibration`, at most `CALIBRATION_IMAGES`), and the result is written with no
enrolled classes (`carid.artifacts.enrolment.save_enrolment`). Photos that cannot be read are skipped.
For a refit run (`train.fit_on_val`) the network has trained on those validation photos, so the
simulated figures are optimistic: `val_trained=True` says so in the message and in the space info
(`calibration_trained_on`, in model.json under enrolment.space).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from carid.artifacts.bundle import EMBEDDING, LOGITS, Bundle
from carid.artifacts.enrolment import Enrolment, save_enrolment
from carid.embedding import DEFAULT_SHRINKAGE, fit_calibration, fit_space

DEFAULT_SPACE_IMAGES = 1000
CALIBRATION_IMAGES = 2000
BATCH = 32


def _stratified(paths_by_class: dict[str, list[Path]], limit: int, seed: int) -> list[tuple[Path, str]]:
    """Up to `limit` (path, label) pairs, taken round-robin over the classes in a seeded order."""
    rng = np.random.default_rng(seed)
    queues = {
        label: [paths[i] for i in rng.permutation(len(paths))] for label, paths in paths_by_class.items()
    }
    chosen: list[tuple[Path, str]] = []
    while len(chosen) < limit and any(queues.values()):
        for label in sorted(queues):
            if queues[label] and len(chosen) < limit:
                chosen.append((queues[label].pop(), label))
    return chosen


def run_model(bundle: Bundle, items: Sequence[tuple[Path, str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(logits [N, C], embeddings [N, D], labels) of the readable photos among `items`."""
    from carid.runtime.backends import OnnxBackend
    from carid.runtime.inputs import prepare_image

    spec = bundle.metadata.preprocess_spec()
    backend = OnnxBackend(bundle.model_path, bundle.metadata.input_name, providers=["CPUExecutionProvider"])
    logits, embeddings, labels = [], [], []
    for start in range(0, len(items), BATCH):
        chunk = [
            (prepare_image(path, spec, str(path)), label) for path, label in items[start : start + BATCH]
        ]
        good = [(item, label) for item, label in chunk if item.error is None]
        if not good:
            continue
        outputs = backend.run(np.stack([item.array for item, _ in good]))
        logits.append(np.asarray(outputs[LOGITS], dtype=np.float64))
        embeddings.append(np.asarray(outputs[EMBEDDING], dtype=np.float32))
        labels.extend(label for _, label in good)
    if not labels:
        return np.zeros((0, 0)), np.zeros((0, 0), dtype=np.float32), []
    return np.concatenate(logits), np.concatenate(embeddings), labels


def prepare_enrolment(
    bundle_dir: Path | str,
    split_csv: Path | str,
    images: int = DEFAULT_SPACE_IMAGES,
    seed: int = 0,
    shrinkage: float = DEFAULT_SHRINKAGE,
    say: Callable[[str], None] | None = None,
    val_trained: bool = False,
) -> Enrolment:
    """Fit and write the bundle's enrolment space from the photos of `split_csv` (the run's split).

    val_trained: the network trained on the split's val photos too (a refit run), so a calibration
    simulated on them is flagged as optimistic.

    Raises ValueError (naming the split file) when it has too few usable photos.
    """
    from carid.data.split import load_split

    tell = say or (lambda _: None)
    bundle = Bundle.load(bundle_dir)
    if EMBEDDING not in bundle.metadata.output_names:
        raise ValueError(f"{bundle.path}: the model has no {EMBEDDING!r} output")
    class_index = {name: i for i, name in enumerate(bundle.metadata.class_names)}
    table = load_split(split_csv)
    by_split: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for sample in table.samples:
        if sample.label in class_index and sample.split in ("train", "val"):
            by_split[sample.split][sample.label].append(Path(sample.path))
    train_items = _stratified(by_split["train"], images, seed)
    val_items = _stratified(by_split["val"], CALIBRATION_IMAGES, seed)
    if not train_items:
        raise ValueError(f"{split_csv}: no training photos of the model's classes to fit the embedding space")
    tell(f"enrolment space: embedding {len(train_items)} training and {len(val_items)} validation photos")
    train_logits, train_embeddings, train_labels = run_model(bundle, train_items)
    if not train_labels:
        raise ValueError(f"{split_csv}: none of the sampled training photos could be read")
    space = fit_space(train_embeddings, train_labels, shrinkage=shrinkage)
    val_logits, val_embeddings, val_labels = run_model(bundle, val_items) if val_items else (None, None, [])
    calibrated_on = "val"
    try:
        if not val_labels:
            raise ValueError("no validation photos")
        calibration = fit_calibration(
            val_logits,
            space.transform(val_embeddings),
            np.array([class_index[x] for x in val_labels]),
            seed=seed,
        )
    except ValueError:
        # Too few validation photos per class: simulate on the training sample (optimistic).
        calibration = fit_calibration(
            train_logits,
            space.transform(train_embeddings),
            np.array([class_index[x] for x in train_labels]),
            seed=seed,
        )
        calibrated_on = "train"
    space_info = {
        "images": len(train_labels),
        "classes": len(set(train_labels)),
        "calibration_images": len(val_labels) if calibrated_on == "val" else len(train_labels),
        "calibrated_on": calibrated_on,
        "calibration_trained_on": calibrated_on == "train" or val_trained,
        "shrinkage": shrinkage,
        "dim": space.dim,
        "fitted_on": str(split_csv),
    }
    enrolment = Enrolment(space=space, calibration=calibration, classes=(), space_info=space_info)
    save_enrolment(bundle, enrolment)
    caveat = ""
    if space_info["calibration_trained_on"]:
        caveat = "; optimistic: the network trained on these photos" + (
            " (a refit run, train.fit_on_val)" if calibrated_on == "val" else ""
        )
    tell(
        f"enrolment calibration: scale {calibration.scale:g}, bias {calibration.bias:.2f} (simulated on "
        f"{calibrated_on}: new classes right {calibration.new_accuracy:.1%}, "
        f"known kept {calibration.known_retained:.1%}{caveat})"
    )
    return enrolment
