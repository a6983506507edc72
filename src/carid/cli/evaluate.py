"""`carid evaluate`, `carid compare` and `carid explain`: score a model, compare runs, explain decisions.

The work happens in `carid.evaluation` and `carid.explain`, imported inside the commands (they need
torch, scipy or matplotlib).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carid.cli.app import (
    FormatOption,
    MinCoverageOption,
    OutOption,
    TargetPrecisionOption,
    TtaOption,
    console,
    given,
    out_option,
    print_error,
    say,
)


def evaluate(
    model: Annotated[
        Path, typer.Argument(help="A run folder, a checkpoint (.ckpt) or an exported bundle folder.")
    ],
    data: Annotated[
        Path | None,
        typer.Argument(
            help="A dataset (folder or annotation file) or a split CSV. Default: the run's own split.csv.",
            show_default=False,
        ),
    ] = None,
    split: Annotated[str | None, typer.Option(help="train, val, test or all (default: test).")] = None,
    fmt: FormatOption = None,
    out: Annotated[Path | None, out_option("Output folder (default: RUN/evaluation/SPLIT).")] = None,
    fit_calibration: Annotated[
        bool,
        typer.Option(
            "--fit-calibration",
            help="Fit a temperature and an 'unknown' threshold on the validation split (calibration.json).",
        ),
    ] = False,
    target_precision: TargetPrecisionOption = None,
    min_coverage: MinCoverageOption = None,
    unknown_threshold: Annotated[
        float | None, typer.Option(help="Report coverage/accuracy answering 'unknown' below this top-1.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Image-loading processes.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto (checkpoints).")] = None,
    backend: Annotated[str | None, typer.Option(help="Bundles: auto, onnx or torch.")] = None,
    tta: TtaOption = None,
) -> None:
    """Score a model on a split: accuracy, per-class F1, confusion, IoU, calibration, report.html."""
    from carid.evaluation.evaluate import evaluate as evaluate_model

    options = given(
        split=split,
        target_precision=target_precision,
        min_coverage=min_coverage,
        unknown_threshold=unknown_threshold,
        batch_size=batch_size,
        num_workers=workers,
        device=device,
        backend=backend,
        tta=tta,
    )
    report = evaluate_model(
        model, data, out_dir=out, data_format=fmt, fit_calibration=fit_calibration, progress=True, **options
    )
    for line in report.summary_lines():  # they quote class names: no markup
        say(line)
    say(f"report: {report.paths['report']}")
    if "calibration" in report.paths:
        say(f"calibration: {report.paths['calibration']} (the export stores it in a bundle)")


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, or folders holding runs (e.g. runs/).")],
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric", "-m", help="Rank by this (default val/acc); loss-like metrics: lower is better."
        ),
    ] = None,
    out: Annotated[Path | None, out_option("Output folder (default: outputs/compare).")] = None,
) -> None:
    """Compare runs side by side: settings, best and final metrics, test scores, curves."""
    from carid.evaluation.compare import compare_runs

    result = compare_runs(runs, **given(metric=metric or None), out_dir=out or Path("outputs") / "compare")
    console.print(result.rich_table(width=console.width))
    best = result.best_run
    say(f"best by {result.metric}: {best.name if best else 'none (no run records it)'}")
    say(f"table: {result.paths['html']}   curves: {result.paths['curves']}")


def explain(
    model: Annotated[Path, typer.Argument(help="A carid checkpoint (.ckpt) written by `carid train`.")],
    images: Annotated[list[Path], typer.Argument(help="Photos to explain.", show_default=False)],
    out: OutOption = None,
    method: Annotated[str, typer.Option("--method", "-m", help="gradcam, shap or both.")] = "gradcam",
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Class to explain, index or name. Default: the predicted class."),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Grad-CAM layer (module name). Default: the backbone's last feature map."),
    ] = None,
    shap_evals: Annotated[
        int | None, typer.Option(help="SHAP model evaluations per photo (more = finer).")
    ] = None,
) -> None:
    """Explain a model's decisions on photos: Grad-CAM (class and box) and SHAP pictures (PNG)."""
    from carid.explain import explain_images

    out_dir = out or Path("outputs") / "explain" / model.stem
    results = explain_images(
        model, images, out_dir, methods=method, target=target, layer=layer, **given(shap_evals=shap_evals)
    )
    for result in results:
        if not result.ok:
            print_error(str(result.error))
            continue
        say(f"{result.image}: {result.label} ({result.probability:.1%})")
        for kind, path in result.files.items():
            say(f"  {kind}: {path}")
    if not all(result.ok for result in results):
        raise typer.Exit(1)
