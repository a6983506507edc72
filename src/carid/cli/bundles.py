"""`carid export`, `carid calibrate`, `carid ensemble` and `carid pipeline`: make and tune deployable
model folders.

export turns a trained checkpoint into a bundle (ONNX + metadata, parity-checked), calibrate stores a
temperature and an 'unknown' threshold in a bundle, ensemble combines bundles into one folder,
pipeline puts a car detector and an identifier in one folder (`carid.artifacts.pipeline`). The
work happens in `carid.export` and `carid.evaluation.ensemble`, imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carid.cli.app import (
    FormatOption,
    MinCoverageOption,
    TargetPrecisionOption,
    given,
    out_option,
    print_error,
    say,
)


def export(
    source: Annotated[
        Path,
        typer.Argument(help="A run folder (uses checkpoints/best.ckpt) or a .ckpt file.", show_default=False),
    ],
    out: Annotated[Path | None, out_option("Bundle folder to write (default: RUN/export).")] = None,
    parity_images: Annotated[
        int | None,
        typer.Option(min=0, help="Photos for the PyTorch-vs-ONNX parity check (default 32; 0 skips it)."),
    ] = None,
    parity_data: Annotated[
        Path | None,
        typer.Option(help="A folder of photos for the parity check (default: the run's val/test split)."),
    ] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle folder.")] = False,
    enrol_images: Annotated[
        int,
        typer.Option(
            min=0,
            help="Training photos that fit the embedding space for `carid enroll` (0: the bundle cannot "
            "take new classes).",
        ),
    ] = 1000,
    input_size: Annotated[
        str | None,
        typer.Option(
            help="The exported input WIDTHxHEIGHT instead of the training size. Detectors (multiples "
            "of 32): smaller is faster and sees cars smaller. Classifiers: a larger test size can score "
            "better than the training size (measure it with `carid evaluate BUNDLE`).",
            show_default=False,
        ),
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(help="Detectors: the operating threshold stored in the bundle.", show_default=False),
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="int8: ONNX Runtime static quantization, calibrated on the run's training photos and "
            "checked against the fp32 graph. SOURCE may also be an fp32 bundle (default out: "
            "BUNDLE-int8).",
            show_default=False,
        ),
    ] = None,
    max_top1_drop: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=100.0,
            help="With --quantize: refuse when the top-1 class changes on more than this many percent of "
            "the check photos (default: the config's export.quantize_max_top1_drop, 1).",
            show_default=False,
        ),
    ] = None,
    calibration_images: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --quantize: training photos to calibrate on (default: the config's "
            "export.quantize_calibration_images, 200).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Export a trained model to a bundle (model.onnx + model.json), parity-checked against PyTorch;
    a `task: detect` run gives a detector bundle; --quantize int8 an int8 bundle."""
    from carid.export import ExportError, ParityError, export_bundle
    from carid.export_detector import export_detector_bundle, is_detector_source
    from carid.export_quantize import QuantizationError, export_quantized_bundle, is_bundle, quantize_bundle

    options = given(parity_images=parity_images, parity_data=parity_data, opset=opset)
    int8 = given(max_top1_drop=max_top1_drop, calibration_images=calibration_images)
    try:
        size = None if input_size is None else parse_size(input_size)
        if quantize is not None and size is not None:
            raise ExportError("--input-size and --quantize do not go together: export at the size first")
        if quantize is not None and is_bundle(source):  # an fp32 bundle -> its int8 copy
            result = quantize_bundle(source, out=out, precision=quantize, overwrite=force, say=say, **int8)
        elif quantize is not None:
            result = export_quantized_bundle(
                source,
                quantize,
                out=out,
                overwrite=force,
                say=say,
                enrol_images=enrol_images,
                **int8,
                **options,
            )
        elif is_detector_source(source):  # a `task: detect` run: a detector bundle (no enrolment space)
            result = export_detector_bundle(
                source,
                out=out,
                overwrite=force,
                say=say,
                input_size=size,
                score_threshold=score_threshold,
                **options,
            )
        elif score_threshold is not None:
            raise ExportError(f"{source}: --score-threshold applies to detector runs only")
        else:
            result = export_bundle(
                source,
                out=out,
                overwrite=force,
                say=say,
                enrol_images=enrol_images,
                input_size=size,
                **options,
            )
    except (ParityError, QuantizationError) as exc:  # exported, but failed its check: exit 1, not 2
        print_error(str(exc), exc.hint)
        raise typer.Exit(1) from None
    say(f"bundle: {result.bundle.path} ({result.seconds:.1f} s)")


def parse_size(text: str) -> tuple[int, int]:
    """ "512x320" -> (512, 320); ExportError naming the option otherwise."""
    from carid.export import ExportError

    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ExportError(f"--input-size must look like 512x320 (WIDTHxHEIGHT), got {text!r}")
    return int(parts[0]), int(parts[1])


def ensemble(
    members: Annotated[
        list[Path],
        typer.Argument(
            help="Member bundles, or run folders with an export (RUN/export); same class names.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, out_option("Ensemble folder to write.", show_default=False)],
    mode: Annotated[str | None, typer.Option(help="mean, weighted or expert (default mean).")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Split CSV or dataset to fit on (default: a member run's split.csv).")
    ] = None,
    fit_on: Annotated[str | None, typer.Option(help="Split the weights are fitted on (default val).")] = None,
    fmt: FormatOption = None,
    box_mode: Annotated[str | None, typer.Option(help="mean or best (default mean).")] = None,
    target_precision: Annotated[
        float | None, typer.Option(help="Also store an 'unknown' threshold reaching this precision.")
    ] = None,
    no_calibrate: Annotated[
        bool, typer.Option("--no-calibrate", help="Keep temperature 1 (do not fit it on the fit split).")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Ensemble name (default: the folder's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing ensemble folder.")] = False,
) -> None:
    """Combine exported models into one ensemble folder (weights fitted on the validation split)."""
    from carid.evaluation.ensemble import build_ensemble

    built = build_ensemble(
        members,
        out,
        data=data,
        data_format=fmt,
        calibrate=not no_calibrate,
        overwrite=force,
        progress=True,
        say=say,
        **given(mode=mode, fit_on=fit_on, box_mode=box_mode, target_precision=target_precision, name=name),
    )
    for line in built.summary_lines():
        say(line)


def calibrate(
    model: Annotated[
        Path,
        typer.Argument(
            help="A bundle folder, a run folder (its export/) or an ensemble folder.", show_default=False
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Argument(help="A dataset or a split CSV. Default: the run's split.csv.", show_default=False),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split to fit on (default val).")] = None,
    fmt: FormatOption = None,
    target_precision: TargetPrecisionOption = None,
    min_coverage: MinCoverageOption = None,
    no_threshold: Annotated[bool, typer.Option("--no-threshold", help="Store the temperature only.")] = False,
    backend: Annotated[str | None, typer.Option(help="auto, onnx or torch.")] = None,
) -> None:
    """Fit the temperature and the 'unknown' threshold on validation images; store them in the bundle."""
    from carid.evaluation.calibrate import calibrate_model

    update = calibrate_model(
        model,
        data,
        data_format=fmt,
        set_threshold=not no_threshold,
        progress=True,
        **given(split=split, target_precision=target_precision, min_coverage=min_coverage, backend=backend),
    )
    for line in update.summary_lines():
        say(line)


def pipeline(
    detector: Annotated[
        Path,
        typer.Argument(help="A detector bundle (or a detector run folder with export/).", show_default=False),
    ],
    identifier: Annotated[
        Path,
        typer.Argument(
            help="A classifier bundle or an ensemble folder (or a run folder with export/).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, out_option("Pipeline folder to write.", show_default=False)],
    margin: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Added around each detected box, as a fraction of its width and height."
        ),
    ] = 0.0,
    square: Annotated[
        bool, typer.Option("--square", help="Grow each crop to a square (for identifiers trained so).")
    ] = False,
    min_side: Annotated[int, typer.Option(min=1, help="Cars smaller than this (px) are not named.")] = 16,
    max_cars: Annotated[
        int, typer.Option(min=1, help="At most this many cars per photo, largest first.")
    ] = 20,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing pipeline folder.")] = False,
) -> None:
    """Put a car detector and an identifier in one folder: predict and serve then answer every car."""
    from carid.artifacts.pipeline import CropRule, build_pipeline

    built = build_pipeline(
        detector,
        identifier,
        out,
        crop=CropRule(margin=margin, square=square, min_side=min_side),
        max_cars=max_cars,
        overwrite=force,
    )
    say(f"pipeline: {built.path} (detector: {built.detector}, identifier: {built.identifier})")
    crop = built.crop
    say(f"crop: margin {crop.margin:g}, square {str(crop.square).lower()}, max cars {built.max_cars}")
