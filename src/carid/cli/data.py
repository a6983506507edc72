"""`carid data ...`: read, check, split, report, collect, compose and curate datasets.

Each command resolves the config and the dataset path (`_load`), calls one function of
`carid.data` and prints its result; errors reach the one handler in `carid.cli.app`.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated

import typer

from carid.cli.app import (
    FormatOption,
    OutOption,
    SetOption,
    console,
    data_app,
    err_console,
    given,
    out_option,
    overrides_with,
    say,
    shown,
)
from carid.errors import CaridError

DataPath = Annotated[
    Path | None,
    typer.Argument(
        help="Dataset folder or annotation file. Default: $CARID_DATA, else the shared Stanford crops.",
        show_default=False,
    ),
]
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="A carid YAML config file.")]
WorkersOption = Annotated[int | None, typer.Option(help="Processes opening images (default: CPU count).")]
ColourOption = Annotated[
    bool,
    typer.Option(
        "--colour/--no-colour", help="Check on a sample of images whether red and blue look swapped (BGR)."
    ),
]
ColourSampleOption = Annotated[int, typer.Option(help="Images the colour check samples (0 = all).")]
ColourReferenceOption = Annotated[
    Path | None,
    typer.Option(
        help="A boxed dataset of the full photos the images were cropped from (same file names, e.g. "
        "the Stanford devkit): the colour check compares the crops with them directly."
    ),
]


def _load(config_path: Path | None, overrides: list[str] | None, data: Path | None, fmt: str | None):
    """Resolve config + dataset path (a ConfigError names the problem)."""
    from carid.config import load_config, resolve_data_path

    config = load_config(config_path, overrides_with(overrides, {"data.format": fmt or None}))
    return config, resolve_data_path(data if data is not None else config.data.path)


def _default_out(path: Path, kind: str) -> Path:
    return Path("outputs") / path.resolve().name / kind


def _inspect(path: Path, config, out: Path, split: bool, progress: bool = True):
    from carid.data.inspect import inspect_dataset

    return inspect_dataset(path, config.data, config.check, out_dir=out, split=split, progress=progress)


def _colour_check(inspection, config, sample: int, reference: Path | None) -> None:
    """Add the colour-order warning to the inspection's report (and its checks.json) when flagged."""
    from carid.data.check_report import display_base
    from carid.data.colour_order import check_colour_order, compare_with_references, reference_pairs

    usable = inspection.report.usable().samples
    evidence = None
    if reference is not None:
        from carid.data.readers import read_dataset

        pairs = reference_pairs(usable, read_dataset(reference).samples)
        if not pairs:
            raise CaridError(
                f"{reference}: no boxed photo there has the file name of an image of the dataset"
            )
        evidence = compare_with_references(pairs)
    verdict = check_colour_order(
        [sample.path for sample in usable], sample=sample, swap=config.data.swap_rb, reference=evidence
    )
    swapped = " (with data.swap_rb applied)" if config.data.swap_rb else ""
    say(f"colour order{swapped}: {verdict.verdict}; {verdict.evidence}")
    problem = verdict.problem(display_base(inspection.table.root))  # the folder, not an annotation file
    if problem is not None:
        inspection.report = inspection.report.with_problems([problem])
        if "checks" in inspection.paths:
            inspection.report.write_json(inspection.paths["checks"])


@data_app.command("formats")
def data_formats() -> None:
    """List the dataset formats carid reads."""
    from rich.table import Table

    from carid.data.readers import available_formats

    table = Table("format", "layout")
    for name, description in available_formats().items():
        table.add_row(shown(name), shown(description))
    console.print(table)


@data_app.command("check")
def data_check(
    path: DataPath = None,
    fmt: FormatOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit non-zero when any error or warning is found.")
    ] = False,
    workers: WorkersOption = None,
    colour: ColourOption = True,
    colour_sample: ColourSampleOption = 200,
    colour_reference: ColourReferenceOption = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Open every image once and report unreadable files, duplicates, leakage, bad boxes, imbalance
    and swapped red and blue."""
    config, data_path = _load(config_path, overrides_with(overrides, {"check.workers": workers}), path, fmt)
    inspection = _inspect(data_path, config, out=_default_out(data_path, "check"), split=False)
    if colour:
        _colour_check(inspection, config, colour_sample, colour_reference)
    report = inspection.report
    report.print_summary(console)
    if json_out is not None:
        report.write_json(json_out)
        say(f"JSON report: {json_out}")
    else:
        say(f"JSON report: {inspection.paths['checks']}")
    raise typer.Exit(report.exit_code(strict))


@data_app.command("split")
def data_split(
    path: DataPath = None,
    fmt: FormatOption = None,
    out: Annotated[Path | None, out_option("Split CSV to write.")] = None,
    val: Annotated[float | None, typer.Option(help="Validation fraction.")] = None,
    test: Annotated[float | None, typer.Option(help="Test fraction.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (same seed, same split, any machine).")
    ] = None,
    format_split: Annotated[
        bool | None,
        typer.Option("--format-split/--no-format-split", help="Keep the split the format defines."),
    ] = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Check the data, then write a seeded, stratified train/val/test split as CSV."""
    settings = {
        "data.val_fraction": val,
        "data.test_fraction": test,
        "data.seed": seed,
        "data.use_format_split": format_split,
    }
    config, data_path = _load(config_path, overrides_with(overrides, settings), path, fmt)
    out_dir = _default_out(data_path, "split")
    inspection = _inspect(data_path, config, out=out_dir, split=True)
    split_path = inspection.paths["split"]
    if out is not None:
        from carid.data.split import save_split

        save_split(inspection.report.usable(), inspection.splits, out)
        split_path = out
    _print_split(inspection)
    say(f"split: {split_path}")


def _print_split(inspection) -> None:
    from collections import Counter

    counts = Counter(inspection.splits or [])
    excluded = len(inspection.report.table) - len(inspection.report.usable())
    parts = ", ".join(f"{name} {counts.get(name, 0)}" for name in ("train", "val", "test"))
    console.print(f"split: {parts} ({excluded} excluded by the checks)")


@data_app.command("report")
def data_report(
    path: DataPath = None,
    fmt: FormatOption = None,
    out: OutOption = None,
    workers: WorkersOption = None,
    colour: ColourOption = True,
    colour_sample: ColourSampleOption = 200,
    colour_reference: ColourReferenceOption = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Write an HTML exploration report (figures, samples per class, check results) and the split."""
    config, data_path = _load(config_path, overrides_with(overrides, {"check.workers": workers}), path, fmt)
    out_dir = out or _default_out(data_path, "report")
    colour_options = (colour_sample, colour_reference) if colour else None
    html = _report(data_path, config, out_dir, colour_options)
    say(f"report: {html}")


def _report(data_path: Path, config, out_dir: Path, colour: tuple[int, Path | None] | None = None) -> Path:
    from carid.data.inspect import write_data_report

    inspection = _inspect(data_path, config, out=out_dir, split=True)
    if colour is not None:
        _colour_check(inspection, config, *colour)
    inspection.report.print_summary(console)
    _print_split(inspection)
    return write_data_report(inspection, out_dir, title=f"carid data report: {data_path.name}")


@data_app.command("taxonomy")
def data_taxonomy(
    path: DataPath = None,
    fmt: FormatOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Parse the dataset's class names into make, model, body type and year."""
    from rich.table import Table

    from carid.data.readers import read_dataset
    from carid.taxonomy import Taxonomy

    config, data_path = _load(config_path, None, path, fmt)
    classes = read_dataset(data_path, config.data.format).classes
    taxonomy = Taxonomy.from_class_names(classes)
    table = Table("class", "make", "model", "body type", "year")
    for entry in taxonomy.entries:
        cells = (entry.name, entry.make, entry.model, entry.body_type, str(entry.year or ""))
        table.add_row(*(shown(cell) for cell in cells))
    console.print(table)
    summary = taxonomy.summary()
    say(f"body types: {summary.body_type_counts}")
    if taxonomy.unparsed:
        console.print(
            f"[yellow]not parsed ({len(taxonomy.unparsed)}):[/] {shown(', '.join(taxonomy.unparsed))}"
        )


@data_app.command("collect")
def data_collect(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="A CSV with label,url columns; a <label>.txt URL list or a folder of them; "
            "or search queries for a plugin --source.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, out_option("Collection folder: <label>/ images, manifest.jsonl, summary.json.")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Image source (default: csv for .csv, list for .txt or a folder); see --list-sources."
        ),
    ] = None,
    per_query: Annotated[
        int, typer.Option(help="At most this many candidates per query (per label for csv/list); 0 = all.")
    ] = 0,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Fetch again the URLs an earlier run failed on.")
    ] = False,
    max_new: Annotated[int | None, typer.Option(help="Fetch at most this many URLs in this run.")] = None,
    workers: Annotated[int | None, typer.Option(help="Requests in flight at once, all hosts.")] = None,
    per_host: Annotated[int | None, typer.Option(help="Requests in flight at once to one host.")] = None,
    retries: Annotated[
        int | None, typer.Option(help="Retries after timeouts, 408/429/5xx, connection errors.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds allowed for one whole response.")] = None,
    max_mb: Annotated[float | None, typer.Option(help="Largest file accepted, in MB.")] = None,
    min_side: Annotated[
        int | None, typer.Option(help="Smallest accepted shorter image side, pixels.")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any URL failed or is pending.")
    ] = False,
    list_sources: Annotated[
        bool, typer.Option("--list-sources", help="List the image sources and exit.")
    ] = False,
) -> None:
    """Download labelled images from URL lists or a search plugin into class folders; resumable."""
    from carid.data.collect import CollectConfig, available_sources, collect

    if list_sources:
        from rich.table import Table

        table = Table("source", "description")
        for name, description in available_sources().items():
            table.add_row(shown(name), shown(description))
        console.print(table)
        raise typer.Exit()
    if not inputs or out is None:
        raise CaridError("give what to collect from and --out, e.g. carid data collect urls.csv --out photos")
    options = given(
        workers=workers,
        per_host=per_host,
        retries=retries,
        total_timeout=timeout,
        max_bytes=None if max_mb is None else int(max_mb * 1_000_000),
        min_side=min_side,
    )
    try:
        config = CollectConfig(**options)
    except ValueError as exc:  # CollectConfig's own checks: a bad option value
        raise CaridError(str(exc)) from exc
    summary = collect(
        inputs,
        out,
        source=source,
        per_query=per_query,
        config=config,
        retry_failed=retry_failed,
        max_new=max_new,
    )
    summary.print_summary(console)
    raise typer.Exit(summary.exit_code(strict))


@data_app.command("compose")
def data_compose(
    objects: Annotated[Path, typer.Argument(help="A labelled dataset of crops (any carid format).")],
    backgrounds: Annotated[Path, typer.Argument(help="A folder of background photos with no car.")],
    out: Annotated[Path, out_option("Output folder (csv-boxes dataset).")],
    fmt: FormatOption = None,
    per_object: Annotated[int, typer.Option(help="Composites per crop.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of placement, scale, flip and background.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Use at most this many crops.")] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Crop file names or stems to leave out, e.g. a held-out test photo (repeatable)."),
    ] = None,
    only_unboxed: Annotated[
        bool,
        typer.Option(
            "--only-unboxed", help="BACKGROUNDS is a boxed dataset: use only its images with no box."
        ),
    ] = False,
    backgrounds_split: Annotated[
        Path | None,
        typer.Option(
            help="A split CSV of BACKGROUNDS (carid data split, or a run's split.csv): use only its "
            "train photos, so that validation and test photos stay unseen."
        ),
    ] = None,
) -> None:
    """Paste labelled crops onto background photos at random places and scales, so a crop-only
    dataset gets boxes: writes images/, boxes.csv (csv-boxes format) and manifest.json. --exclude
    takes file names, stems or shell patterns ("0453?")."""
    from carid.data.compose import ComposeConfig, compose, list_backgrounds
    from carid.data.readers import read_dataset

    try:
        table = read_dataset(objects, fmt).usable()
        if only_unboxed:
            pool = [s.path for s in read_dataset(backgrounds).usable() if not s.has_box]
        else:
            pool = list_backgrounds(backgrounds)
        if backgrounds_split is not None:
            from carid.data.split import load_split

            train = {
                str(s.path.resolve()) for s in load_split(backgrounds_split).samples if s.split == "train"
            }
            pool = [path for path in pool if str(Path(path).resolve()) in train]
        skip = list(exclude or [])
        samples = [
            s
            for s in table
            if not any(fnmatch.fnmatchcase(name, p) for name in (s.path.name, s.path.stem) for p in skip)
        ]
        report = compose(samples, pool, out, ComposeConfig(seed=seed, per_object=per_object), limit=limit)
    except CaridError:
        raise
    except (ValueError, OSError) as exc:  # a bad setting, a missing or existing folder: reported as is
        raise CaridError(str(exc)) from exc
    for problem in report.problems:
        err_console.print(f"[yellow]warning:[/] {shown(problem)}", highlight=False, soft_wrap=True)
    say(
        f"compose: {report.written} images from {report.objects} crops on {report.backgrounds} backgrounds "
        f"({len(table) - len(samples)} crops excluded): {out / 'boxes.csv'}"
    )


@data_app.command("curate")
def data_curate(
    path: DataPath = None,
    fmt: FormatOption = None,
    out: OutOption = None,
    model: Annotated[
        Path | None,
        typer.Option(help="A trained model (bundle, .ckpt or run folder) for mislabel detection."),
    ] = None,
    no_car_threshold: Annotated[
        float | None, typer.Option(help="Flag 'no car' below this ImageNet car score.")
    ] = None,
    mislabel_threshold: Annotated[
        float | None, typer.Option(help="Flag a label the model contradicts with at least this probability.")
    ] = None,
    no_car: Annotated[
        bool, typer.Option("--no-car/--skip-no-car", help="Run the no-car filter (needs torch).")
    ] = True,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the flagged files (recorded).")] = False,
    move_to: Annotated[
        Path | None, typer.Option(help="Move the flagged files into this folder (recorded).")
    ] = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Flag duplicates, non-images, tiny images, photos with no car and likely mislabels; write a review
    page, a cleaned manifest (kept.csv) and flagged.csv. Deletes or moves nothing without --delete or
    --move-to. The no-car filter runs EfficientNet-Lite0's ImageNet head: it needs the train extra
    (torch, timm); --skip-no-car curates without it."""
    from dataclasses import replace

    from carid.config import CurateConfig
    from carid.data.curate import curate
    from carid.models.nocar import ImageNetCarScorer

    if delete and move_to is not None:
        raise CaridError("give --delete or --move-to, not both")
    config, data_path = _load(config_path, overrides, path, fmt)
    curate_config = replace(
        CurateConfig(), **given(no_car_threshold=no_car_threshold, mislabel_threshold=mislabel_threshold)
    )
    predictor = None
    if model is not None:
        from carid.runtime.predictor import Predictor

        predictor = Predictor.load(model)
    scorer = None
    if no_car:
        scorer = ImageNetCarScorer(grid=curate_config.no_car_grid, batch_size=curate_config.batch_size)
    action = "delete" if delete else "move" if move_to is not None else "none"
    curation = curate(
        data_path,
        out or _default_out(data_path, "curate"),
        data=config.data,
        check=config.check,
        config=curate_config,
        car_scorer=scorer,
        model=predictor,
        action=action,
        move_to=move_to,
    )
    counts = ", ".join(f"{reason} {count}" for reason, count in curation.counts().items())
    say(f"{curation.samples} samples: kept {len(curation.kept)}; flagged: {counts}")
    for section, why in curation.skipped.items():
        console.print(f"[yellow]{shown(section)} skipped:[/] {shown(why)}")
    for name in ("review", "kept", "flagged", "summary"):
        say(f"{name}: {curation.paths[name]}")


@data_app.command("fix-colours")
def data_fix_colours(
    source: Annotated[
        Path, typer.Argument(help="The dataset folder whose images have red and blue swapped.")
    ],
    out: Annotated[Path, out_option("A new folder for the corrected copy.")],
) -> None:
    """Write a copy of a dataset folder with red and blue swapped back in every image (the fix for a
    colour-order warning of carid data check). The layout and every other file are kept."""
    from carid.data.colours import fix_colours

    result = fix_colours(source, out)
    for line in result.unreadable:
        err_console.print(
            f"[yellow]warning:[/] {shown(line)} (copied unchanged)", highlight=False, soft_wrap=True
        )
    say(f"fix-colours: {result.images} images corrected, {result.copied} other files copied: {result.out}")
