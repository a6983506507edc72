"""Training curves: read a run's per-epoch metrics and draw loss / accuracy / mAP / IoU.

`epoch_metrics` reads either file a run holds: results.csv (one row per epoch, epochs counted from
1, `carid.training.epoch_table`) or Lightning's metrics.csv, which has one CSV row per logging call,
so the train and val metrics of one epoch sit on different rows and the learning-rate monitor adds
rows of its own without an epoch; those are folded into one record per epoch (the last value logged
in that epoch wins). `plot_curves` draws one panel per kind of metric the run logged (a run without
a box head gets no IoU panel, a classifier no mAP panel) with matplotlib's Agg backend (no display
needed) and writes the PNG atomically.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from carid.files import write_atomic

# (panel title, y label, metric names drawn in it, fixed y range or None)
PANELS: tuple[tuple[str, str, tuple[str, ...], tuple[float, float] | None], ...] = (
    ("Loss", "loss", ("train/loss", "val/loss", "train/cls", "val/cls"), None),
    ("Accuracy", "accuracy", ("train/acc", "val/acc", "val/acc_top5"), (0.0, 1.0)),
    ("Detection mAP", "AP", ("val/map50", "val/map"), (0.0, 1.0)),
    ("Box IoU", "mean IoU", ("train/iou", "val/iou"), (0.0, 1.0)),
)


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def epoch_metrics(metrics_csv: Path | str) -> list[dict[str, float]]:
    """One dict per epoch, sorted by epoch: {"epoch": e, "step": s, metric name: value, ...}.

    Rows without an epoch (e.g. learning-rate rows) are ignored. A missing file gives [].
    """
    path = Path(metrics_csv)
    if not path.exists():
        return []
    by_epoch: dict[int, dict[str, float]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            epoch = _number(row.get("epoch"))
            if epoch is None:
                continue
            record = by_epoch.setdefault(int(epoch), {"epoch": float(int(epoch))})
            for key, text in row.items():
                value = _number(text)
                if key is not None and key != "epoch" and value is not None:
                    record[key] = value
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def plot_curves(metrics_csv: Path | str, out_png: Path | str, title: str | None = None) -> Path | None:
    """Draw the logged panels (loss, accuracy, mAP, IoU) per epoch into `out_png`; None when there is
    nothing to draw."""
    records = epoch_metrics(metrics_csv)
    panels = [panel for panel in PANELS if any(name in record for record in records for name in panel[2])]
    if not records or not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_png = Path(out_png)
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, (panel_title, ylabel, names, ylim) in zip(axes[0], panels, strict=True):
        _draw_panel(axis, records, names)
        axis.set_title(panel_title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
        if ylim is not None:
            axis.set_ylim(*ylim)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    write_atomic(out_png, lambda stream: figure.savefig(stream, format="png", dpi=100))
    plt.close(figure)
    return out_png


def _draw_panel(axis, records: Sequence[dict[str, float]], names: Sequence[str]) -> bool:
    drawn = False
    for name in names:
        points = [(record["epoch"], record[name]) for record in records if name in record]
        if not points:
            continue
        epochs, values = zip(*points, strict=True)
        style = "--" if name.endswith("/cls") else "-"
        axis.plot(epochs, values, style, marker="o", markersize=3, label=name)
        drawn = True
    return drawn
