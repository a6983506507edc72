"""The `carid` command: a thin typer layer over the library.

Every command parses options, calls one library function and prints its result; defaults live in
`carid.config`, never here. Heavy imports (torch, scipy, matplotlib) happen inside the commands so
that `carid --help` is instant and the slim (ONNX Runtime only) install can run `predict`/`serve`.
Errors the user can fix (bad path, unknown format, invalid config) print one clear line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from carid import __version__
from carid.errors import CaridError

app = typer.Typer(
    name="carid",
    help="Identify cars in photos: check data, train, evaluate, export, predict and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Read, check, split and explore datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

DataPath = Annotated[
    Path | None,
    typer.Argument(
        help="Dataset folder or annotation file. Default: $CARID_DATA, else the shared Stanford crops.",
        show_default=False,
    ),
]
FormatOption = Annotated[
    str | None,
    typer.Option("--format", "-f", help="Force a dataset format (see `carid data formats`)."),
]
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="A carid YAML config file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set check.min_side=64 (repeatable)."),
]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")]
TtaOption = Annotated[
    str | None,
    typer.Option(
        "--tta",
        help="Test-time augmentation: none, or hflip (also score the mirror image and average; "
        "twice the inference time).",
    ),
]


class UserError(CaridError):
    """An error the user can fix; printed as one line, exit code 2."""


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _version(value: bool) -> None:
    if value:
        console.print(f"carid {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """carid: identify cars in photos."""


def _load(config_path: Path | None, overrides: list[str] | None, data: Path | None, fmt: str | None):
    """Resolve config + dataset path; user-fixable problems become one-line errors."""
    from carid.config import ConfigError, load_config, resolve_data_path

    try:
        extra = list(overrides or [])
        if fmt:
            extra.append(f"data.format={fmt}")
        config = load_config(config_path, extra)
        path = resolve_data_path(data if data is not None else config.data.path)
    except ConfigError as exc:
        _fail(str(exc))
    return config, path


def _default_out(path: Path, kind: str) -> Path:
    return Path("outputs") / path.resolve().name / kind


def _inspect(path: Path, config, out: Path, split: bool, progress: bool = True):
    from carid.data.inspect import inspect_dataset
    from carid.data.readers import DatasetError

    try:
        return inspect_dataset(path, config.data, config.check, out_dir=out, split=split, progress=progress)
    except DatasetError as exc:
        _fail(str(exc))


@data_app.command("formats")
def data_formats() -> None:
    """List the dataset formats carid reads."""
    from rich.table import Table

    from carid.data.readers import available_formats

    table = Table("format", "layout")
    for name, description in available_formats().items():
        table.add_row(name, description)
    console.print(table)


@data_app.command("check")
def data_check(
    path: DataPath = None,
    fmt: FormatOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report here.")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit non-zero when any error or warning is found.")
    ] = False,
    workers: Annotated[
        int | None, typer.Option(help="Processes opening images (default: CPU count).")
    ] = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Open every image once and report unreadable files, duplicates, leakage, bad boxes and imbalance."""
    extra = list(overrides or []) + ([f"check.workers={workers}"] if workers is not None else [])
    config, data_path = _load(config_path, extra, path, fmt)
    inspection = _inspect(data_path, config, out=_default_out(data_path, "check"), split=False)
    report = inspection.report
    report.print_summary(console)
    if json_out is not None:
        report.write_json(json_out)
        console.print(f"JSON report: {json_out}")
    else:
        console.print(f"JSON report: {inspection.paths['checks']}")
    raise typer.Exit(report.exit_code(strict))


@data_app.command("split")
def data_split(
    path: DataPath = None,
    fmt: FormatOption = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Split CSV to write.")] = None,
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
    extra = list(overrides or [])
    for key, value in (("val_fraction", val), ("test_fraction", test), ("seed", seed)):
        if value is not None:
            extra.append(f"data.{key}={value}")
    if format_split is not None:
        extra.append(f"data.use_format_split={str(format_split).lower()}")
    config, data_path = _load(config_path, extra, path, fmt)
    out_dir = _default_out(data_path, "split")
    inspection = _inspect(data_path, config, out=out_dir, split=True)
    split_path = inspection.paths["split"]
    if out is not None:
        from carid.data.split import save_split

        save_split(inspection.report.usable(), inspection.splits, out)
        split_path = out
    _print_split(inspection)
    console.print(f"split: {split_path}")


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
    workers: Annotated[
        int | None, typer.Option(help="Processes opening images (default: CPU count).")
    ] = None,
    config_path: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Write an HTML exploration report (figures, samples per class, check results) and the split."""
    extra = list(overrides or []) + ([f"check.workers={workers}"] if workers is not None else [])
    config, data_path = _load(config_path, extra, path, fmt)
    out_dir = out or _default_out(data_path, "report")
    html = _report(data_path, config, out_dir)
    console.print(f"report: {html}")


def _report(data_path: Path, config, out_dir: Path) -> Path:
    from carid.data.inspect import write_data_report

    inspection = _inspect(data_path, config, out=out_dir, split=True)
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

    from carid.data.readers import DatasetError, read_dataset
    from carid.taxonomy import Taxonomy

    config, data_path = _load(config_path, None, path, fmt)
    try:
        classes = read_dataset(data_path, config.data.format).classes
    except DatasetError as exc:
        _fail(str(exc))
    taxonomy = Taxonomy.from_class_names(classes)
    table = Table("class", "make", "model", "body type", "year")
    for entry in taxonomy.entries:
        table.add_row(entry.name, entry.make, entry.model, entry.body_type, str(entry.year or ""))
    console.print(table)
    summary = taxonomy.summary()
    console.print(f"body types: {summary.body_type_counts}")
    if taxonomy.unparsed:
        console.print(f"[yellow]not parsed ({len(taxonomy.unparsed)}):[/] {', '.join(taxonomy.unparsed)}")


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
        Path | None,
        typer.Option("--out", "-o", help="Collection folder: <label>/ images, manifest.jsonl, summary.json."),
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
    from carid.data.collect import CollectConfig, CollectError, SourceError, available_sources, collect

    if list_sources:
        from rich.table import Table

        table = Table("source", "description")
        for name, description in available_sources().items():
            table.add_row(name, description)
        console.print(table)
        raise typer.Exit()
    if not inputs or out is None:
        _fail("give what to collect from and --out, e.g. carid data collect urls.csv --out photos")
    options = {
        "workers": workers,
        "per_host": per_host,
        "retries": retries,
        "total_timeout": timeout,
        "max_bytes": None if max_mb is None else int(max_mb * 1_000_000),
        "min_side": min_side,
    }
    try:
        config = CollectConfig(**{key: value for key, value in options.items() if value is not None})
    except ValueError as exc:
        _fail(str(exc))
    try:
        summary = collect(
            inputs,
            out,
            source=source,
            per_query=per_query,
            config=config,
            retry_failed=retry_failed,
            max_new=max_new,
        )
    except (SourceError, CollectError) as exc:
        _fail(str(exc))
    summary.print_summary(console)
    raise typer.Exit(summary.exit_code(strict))


@data_app.command("compose")
def data_compose(
    objects: Annotated[Path, typer.Argument(help="A labelled dataset of crops (any carid format).")],
    backgrounds: Annotated[Path, typer.Argument(help="A folder of background photos with no car.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (csv-boxes dataset).")],
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
) -> None:
    """Paste labelled crops onto background photos at random places and scales, so a crop-only
    dataset gets boxes: writes images/, boxes.csv (csv-boxes format) and manifest.json."""
    from carid.data.compose import ComposeConfig, compose, list_backgrounds
    from carid.data.readers import DatasetError, read_dataset

    try:
        table = read_dataset(objects, fmt).usable()
        if only_unboxed:
            pool = [s.path for s in read_dataset(backgrounds).usable() if not s.has_box]
        else:
            pool = list_backgrounds(backgrounds)
        skip = set(exclude or [])
        samples = [s for s in table if s.path.name not in skip and s.path.stem not in skip]
        report = compose(samples, pool, out, ComposeConfig(seed=seed, per_object=per_object), limit=limit)
    except (DatasetError, FileExistsError, ValueError, OSError) as exc:
        _fail(str(exc))
    for problem in report.problems:
        err_console.print(f"[yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    console.print(
        f"compose: {report.written} images from {report.objects} crops on {report.backgrounds} backgrounds "
        f"({len(table) - len(samples)} crops excluded): {out / 'boxes.csv'}",
        highlight=False,
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
        Path | None, typer.Option("--move-to", help="Move the flagged files into this folder (recorded).")
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
    from carid.data.curate import CurateError, curate
    from carid.data.nocar import CarScoreError, ImageNetCarScorer
    from carid.data.readers import DatasetError

    if delete and move_to is not None:
        _fail("give --delete or --move-to, not both")
    config, data_path = _load(config_path, overrides, path, fmt)
    changes = {"no_car_threshold": no_car_threshold, "mislabel_threshold": mislabel_threshold}
    curate_config = replace(CurateConfig(), **{k: v for k, v in changes.items() if v is not None})
    predictor = None
    if model is not None:
        from carid.artifacts.bundle import BundleError
        from carid.runtime.predictor import Predictor, PredictorError

        try:
            predictor = Predictor.load(model)
        except (PredictorError, BundleError) as exc:
            _fail(str(exc))
    scorer = None
    if no_car:
        scorer = ImageNetCarScorer(grid=curate_config.no_car_grid, batch_size=curate_config.batch_size)
    action = "delete" if delete else "move" if move_to is not None else "none"
    try:
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
    except (CarScoreError, CurateError, DatasetError) as exc:
        _fail(str(exc))
    counts = ", ".join(f"{reason} {count}" for reason, count in curation.counts().items())
    console.print(f"{curation.samples} samples: kept {len(curation.kept)}; flagged: {counts}")
    for section, why in curation.skipped.items():
        console.print(f"[yellow]{section} skipped:[/] {why}")
    for name in ("review", "kept", "flagged", "summary"):
        console.print(f"{name}: {curation.paths[name]}")


@app.command("train")
def train(
    config_path: Annotated[
        Path, typer.Argument(help="A training recipe, e.g. configs/car-models-5-transfer.yaml.")
    ],
    overrides: SetOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run's last checkpoint after an interrupt.")
    ] = False,
) -> None:
    """Train a model from a config; writes a run folder (config, split, checkpoints, metrics, curves)."""
    from carid.config import ConfigError
    from carid.data.readers import DatasetError
    from carid.training.fit import train_from_cli

    try:
        result = train_from_cli(config_path, overrides, resume=resume)
    except (ConfigError, DatasetError) as exc:
        _fail(str(exc))
    console.print(f"run: {result.run_dir}")
    console.print(f"best checkpoint: {result.best_checkpoint}")
    for key, value in sorted(result.metrics.items()):
        console.print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")


@app.command("export")
def export(
    source: Annotated[
        Path,
        typer.Argument(help="A run folder (uses checkpoints/best.ckpt) or a .ckpt file.", show_default=False),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Bundle folder to write (default: RUN/export).")
    ] = None,
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
) -> None:
    """Export a trained model to a bundle (model.onnx + model.json), parity-checked against PyTorch."""
    from rich.markup import escape

    from carid.export import ExportError, ParityError, export_bundle

    options = {"parity_images": parity_images} if parity_images is not None else {}
    try:
        result = export_bundle(
            source,
            out=out,
            parity_data=parity_data,
            opset=opset,
            overwrite=force,
            say=lambda line: console.print(line, markup=False, highlight=False),
            enrol_images=enrol_images,
            **options,
        )
    except ParityError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except ExportError as exc:
        _fail(escape(str(exc)))
    console.print(f"bundle: {result.bundle.path} ({result.seconds:.1f} s)", markup=False, highlight=False)


@app.command("enroll")
def enroll(
    model: Annotated[
        Path, typer.Argument(help="A bundle folder (or a run folder with an export).", show_default=False)
    ],
    photos: Annotated[
        list[Path] | None,
        typer.Argument(help="Photos of the new class: files, folders or globs.", show_default=False),
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", "-l", help='The new class, e.g. "Hyundai Creta 2021".')
    ] = None,
    replace_photos: Annotated[
        bool, typer.Option("--replace", help="An enrolled class forgets its earlier photos.")
    ] = False,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="Remove this enrolled class (repeatable).")
    ] = None,
    list_classes: Annotated[bool, typer.Option("--list", help="List the enrolled classes.")] = False,
) -> None:
    """Add a class to a bundle from a few photos, without retraining; --remove one; list them (--list,
    also the default)."""
    from rich.markup import escape
    from rich.table import Table

    from carid.artifacts.bundle import BundleError
    from carid.enroll.store import EnrolError, listing
    from carid.enroll.store import enroll as enroll_class
    from carid.enroll.store import remove as remove_classes
    from carid.runtime.predict_io import InputError, gather_images

    try:
        if remove:
            left = remove_classes(model, remove)
            console.print(f"removed {', '.join(remove)}; enrolled classes left: {len(left)}", markup=False)
        elif label is not None:
            paths = gather_images([str(p) for p in photos or []])
            result = enroll_class(
                model,
                label,
                paths,
                replace_photos=replace_photos,
                say=lambda line: err_console.print(f"[yellow]{escape(line)}[/]", highlight=False),
            )
            verb = "enrolled" if result.new_class else "updated"
            console.print(
                f"{verb} {result.label!r} from {len(result.added_photos)} photo(s) ({result.photos} in all, "
                f"{len(result.skipped)} skipped); {len(result.classes)} enrolled class(es) "
                f"in {result.bundle}",
                markup=False,
                highlight=False,
            )
        elif photos:
            _fail("photos given without --label NAME (the class they show)")
        bundle, enrolment = listing(model)
    except (EnrolError, BundleError, InputError) as exc:
        _fail(escape(str(exc)))
    if enrolment is None:
        console.print(
            f"{bundle.path}: cannot take new classes (re-export it with `carid export RUN --force`)"
        )
        return
    if list_classes or not (remove or label):
        table = Table(title=f"enrolled classes of {bundle.path} ({bundle.metadata.num_classes} trained)")
        for column in ("class", "photos", "added", "updated"):
            table.add_column(column)
        for item in enrolment.classes:
            table.add_row(escape(item.label), str(item.photos), item.added, item.updated)
        console.print(table)


@app.command("predict")
def predict(
    model: Annotated[
        Path,
        typer.Argument(
            help="A bundle folder (or its model.json), a run folder or a .ckpt.", show_default=False
        ),
    ],
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Photos: files, folders (searched recursively) or glob patterns.", show_default=False
        ),
    ],
    top_k: Annotated[
        int | None, typer.Option("--top-k", min=1, help="Classes listed per photo (default 5).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the predictions to a .csv or .json file.")
    ] = None,
    annotate: Annotated[
        Path | None, typer.Option(help="Folder for copies of the photos with the box and label drawn.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Photos per batch (default 16).")] = None,
    backend: Annotated[
        str, typer.Option(help="auto (ONNX Runtime for bundles, PyTorch for checkpoints), onnx or torch.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option(min=1, help="Inference threads (default: the runtime's).")
    ] = None,
    tta: TtaOption = None,
) -> None:
    """Identify the car in photos with an exported bundle (no torch needed) or a checkpoint."""
    from rich.markup import escape

    from carid.artifacts.bundle import BundleError
    from carid.runtime.predict_io import InputError, print_predictions, run_predict
    from carid.runtime.predictor import PredictorError

    given = (("top_k", top_k), ("batch_size", batch_size), ("tta", tta))
    options = {key: value for key, value in given if value is not None}
    try:
        result = run_predict(
            model, paths, backend=backend, out=out, annotate_dir=annotate, threads=threads, **options
        )
    except (InputError, BundleError, PredictorError) as exc:
        _fail(escape(str(exc)))
    print_predictions(result.predictions, console)
    total = len(result.predictions)
    console.print(f"{total - result.num_failed} of {total} photos predicted in {result.seconds:.2f} s")
    if result.num_failed:
        err_console.print(f"[yellow]{result.num_failed} photo(s) could not be used[/] (see the error column)")
    if result.output is not None:
        console.print(f"predictions: {result.output}", markup=False, highlight=False)
    if annotate is not None:
        console.print(
            f"annotated: {len(result.annotated)} photos in {annotate}", markup=False, highlight=False
        )
    raise typer.Exit(1 if total and result.num_failed == total else 0)


@app.command("serve")
def serve(
    model: Annotated[
        Path,
        typer.Argument(
            help="A bundle folder (or its model.json), a run folder or a .ckpt.", show_default=False
        ),
    ],
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)."),
    ] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="TCP port (default 8000).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Server processes, each with its own model copy (default 1).")
    ] = None,
    max_upload_mb: Annotated[
        float | None, typer.Option(min=0.001, help="Largest photo accepted, in MiB (default 10).")
    ] = None,
    max_pixels: Annotated[
        int | None, typer.Option(min=1, help="Largest photo accepted, width x height (default 50,000,000).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="auto (ONNX Runtime for bundles, PyTorch for checkpoints), onnx or torch."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Inference threads (default: the runtime's).")
    ] = None,
    tta: TtaOption = None,
) -> None:
    """Serve a model: REST API (POST /predict, GET /model, /health, /docs) and a web page at /."""
    from rich.markup import escape

    from carid.artifacts.bundle import BundleError
    from carid.runtime.predictor import PredictorError
    from carid.serve.api import ServeError, ServeSettings, run_server

    given = {
        "host": host,
        "port": port,
        "workers": workers,
        "max_upload_mb": max_upload_mb,
        "max_pixels": max_pixels,
        "backend": backend,
        "threads": threads,
        "tta": tta,
    }
    try:
        settings = ServeSettings(**{key: value for key, value in given.items() if value is not None})
        run_server(model, settings, say=lambda line: console.print(line, markup=False, highlight=False))
    except (ServeError, BundleError, PredictorError) as exc:
        _fail(escape(str(exc)))


@app.command("evaluate")
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
    split: Annotated[
        str | None, typer.Option("--split", help="train, val, test or all (default: test).")
    ] = None,
    fmt: FormatOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: RUN/evaluation/SPLIT).")
    ] = None,
    fit_calibration: Annotated[
        bool,
        typer.Option(
            "--fit-calibration",
            help="Fit a temperature and an 'unknown' threshold on the validation split (calibration.json).",
        ),
    ] = False,
    target_precision: Annotated[
        float | None,
        typer.Option(
            "--target-precision", help="Precision the 'unknown' threshold must reach (default 0.95)."
        ),
    ] = None,
    unknown_threshold: Annotated[
        float | None,
        typer.Option(
            "--unknown-threshold", help="Report coverage/accuracy answering 'unknown' below this top-1."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Image-loading processes.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or auto (checkpoints).")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="Bundles: auto, onnx or torch.")] = None,
    tta: TtaOption = None,
) -> None:
    """Score a model on a split: accuracy, per-class F1, confusion, IoU, calibration, report.html."""
    from carid.config import ConfigError
    from carid.data.readers import DatasetError
    from carid.evaluation.evaluate import evaluate as evaluate_model
    from carid.evaluation.scoring import EvaluationError

    given = {
        "split": split,
        "target_precision": target_precision,
        "unknown_threshold": unknown_threshold,
        "batch_size": batch_size,
        "num_workers": workers,
        "device": device,
        "backend": backend,
        "tta": tta,
    }
    options = {key: value for key, value in given.items() if value is not None}
    try:
        report = evaluate_model(
            model,
            data,
            out_dir=out,
            data_format=fmt,
            fit_calibration=fit_calibration,
            progress=True,
            **options,
        )
    except (EvaluationError, ConfigError, DatasetError) as exc:
        _fail(str(exc))
    for line in report.summary_lines():
        console.print(line, highlight=False)
    console.print(f"report: {report.paths['report']}")
    if "calibration" in report.paths:
        console.print(f"calibration: {report.paths['calibration']} (the export stores it in a bundle)")


@app.command("compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, or folders holding runs (e.g. runs/).")],
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric", "-m", help="Rank by this (default val/acc); loss-like metrics: lower is better."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: outputs/compare).")
    ] = None,
) -> None:
    """Compare runs side by side: settings, best and final metrics, test scores, curves."""
    from carid.evaluation.compare import CompareError, compare_runs

    try:
        result = compare_runs(
            runs, **({"metric": metric} if metric else {}), out_dir=out or Path("outputs") / "compare"
        )
    except CompareError as exc:
        _fail(str(exc))
    console.print(result.rich_table(width=console.width))
    best = result.best_run
    console.print(f"best by {result.metric}: {best.name if best else 'none (no run records it)'}")
    console.print(f"table: {result.paths['html']}   curves: {result.paths['curves']}")


@app.command("sweep")
def sweep(
    sweep_file: Annotated[
        Path | None,
        typer.Argument(help="A sweep YAML: base, sweep: {key: [values]}, optional name / metric / set."),
    ] = None,
    base: Annotated[
        Path | None, typer.Option("--base", "-c", help="Base config (replaces the file's 'base').")
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid", "-g", help="key=v1,v2 to sweep (repeatable), e.g. --grid model.image_size=160,224."
        ),
    ] = None,
    overrides: SetOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Sweep folder (default: runs/sweeps/NAME).")
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", "-m", help="What the comparison ranks by.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Prefix of the run names (default: the file's, else 'sweep')."),
    ] = None,
    no_resume: Annotated[
        bool, typer.Option("--no-resume", help="Refuse to continue a sweep already in the folder.")
    ] = False,
) -> None:
    """Train every combination of a grid, one after another (resumable), then compare the runs."""
    from carid.config import ConfigError
    from carid.evaluation.sweep import SweepError, SweepSpec, load_sweep_file, parse_grid, run_sweep

    try:
        spec = load_sweep_file(sweep_file) if sweep_file is not None else SweepSpec(base=None, grid={})
        grid_values = {**spec.grid, **parse_grid(grid or [])}
        if not grid_values:
            _fail("nothing to sweep: give a sweep file or --grid KEY=V1,V2 (e.g. train.optimizer=adamw,sgd)")
        prefix = name or spec.name
        result = run_sweep(
            base or spec.base,
            grid_values,
            out or Path("runs") / "sweeps" / prefix,
            resume=not no_resume,
            overrides=[*spec.overrides, *(overrides or [])],
            prefix=prefix,
            metric=metric or spec.metric,
            progress=True,
            say=console.print,
        )
    except (SweepError, ConfigError) as exc:
        _fail(str(exc))
    for variant in result.variants:
        detail = f" ({variant.error})" if variant.error else ""
        console.print(f"  {variant.status:8} {variant.name}{detail}", highlight=False)
    if result.comparison is not None:
        console.print(result.comparison.rich_table(width=console.width))
        console.print(f"comparison: {result.comparison.paths['html']}")
    console.print(f"sweep state: {result.state_path}")
    if result.failed:
        raise typer.Exit(1)


@app.command("ensemble")
def ensemble(
    members: Annotated[
        list[Path],
        typer.Argument(
            help="Member bundles, or run folders with an export (RUN/export); same class names.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ensemble folder to write.", show_default=False)],
    mode: Annotated[
        str | None, typer.Option("--mode", help="mean, weighted or expert (default mean).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Split CSV or dataset to fit on (default: a member run's split.csv)."),
    ] = None,
    fit_on: Annotated[
        str | None, typer.Option("--fit-on", help="Split the weights are fitted on (default val).")
    ] = None,
    fmt: FormatOption = None,
    box_mode: Annotated[str | None, typer.Option("--box-mode", help="mean or best (default mean).")] = None,
    target_precision: Annotated[
        float | None,
        typer.Option("--target-precision", help="Also store an 'unknown' threshold reaching this precision."),
    ] = None,
    no_calibrate: Annotated[
        bool, typer.Option("--no-calibrate", help="Keep temperature 1 (do not fit it on the fit split).")
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="Ensemble name (default: the folder's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing ensemble folder.")] = False,
) -> None:
    """Combine exported models into one ensemble folder (weights fitted on the validation split)."""
    from rich.markup import escape

    from carid.artifacts.bundle import BundleError
    from carid.config import ConfigError
    from carid.data.readers import DatasetError
    from carid.evaluation.ensemble import build_ensemble
    from carid.evaluation.scoring import EvaluationError

    given = {
        "mode": mode,
        "fit_on": fit_on,
        "box_mode": box_mode,
        "target_precision": target_precision,
        "name": name,
    }
    options = {key: value for key, value in given.items() if value is not None}
    try:
        built = build_ensemble(
            members,
            out,
            data=data,
            data_format=fmt,
            calibrate=not no_calibrate,
            overwrite=force,
            progress=True,
            say=lambda line: console.print(line, markup=False, highlight=False),
            **options,
        )
    except (BundleError, EvaluationError, ConfigError, DatasetError) as exc:
        _fail(escape(str(exc)))
    for line in built.summary_lines():
        console.print(line, markup=False, highlight=False)


@app.command("calibrate")
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
    split: Annotated[str | None, typer.Option("--split", help="Split to fit on (default val).")] = None,
    fmt: FormatOption = None,
    target_precision: Annotated[
        float | None,
        typer.Option(
            "--target-precision", help="Precision the 'unknown' threshold must reach (default 0.95)."
        ),
    ] = None,
    no_threshold: Annotated[bool, typer.Option("--no-threshold", help="Store the temperature only.")] = False,
    backend: Annotated[str | None, typer.Option("--backend", help="auto, onnx or torch.")] = None,
) -> None:
    """Fit the temperature and the 'unknown' threshold on validation images; store them in the bundle."""
    from rich.markup import escape

    from carid.artifacts.bundle import BundleError
    from carid.config import ConfigError
    from carid.data.readers import DatasetError
    from carid.evaluation.ensemble import calibrate_model
    from carid.evaluation.scoring import EvaluationError

    given = {"split": split, "target_precision": target_precision, "backend": backend}
    options = {key: value for key, value in given.items() if value is not None}
    try:
        update = calibrate_model(
            model, data, data_format=fmt, set_threshold=not no_threshold, progress=True, **options
        )
    except (BundleError, EvaluationError, ConfigError, DatasetError) as exc:
        _fail(escape(str(exc)))
    for line in update.summary_lines():
        console.print(line, markup=False, highlight=False)


@app.command("explain")
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
        typer.Option(
            "--layer", help="Grad-CAM layer (module name). Default: the backbone's last feature map."
        ),
    ] = None,
    shap_evals: Annotated[
        int | None, typer.Option("--shap-evals", help="SHAP model evaluations per photo (more = finer).")
    ] = None,
) -> None:
    """Explain a model's decisions on photos: Grad-CAM (class and box) and SHAP pictures (PNG)."""
    from carid.explain import ExplainError, explain_images

    out_dir = out or Path("outputs") / "explain" / model.stem
    options = {} if shap_evals is None else {"shap_evals": shap_evals}
    try:
        results = explain_images(
            model, images, out_dir, methods=method, target=target, layer=layer, **options
        )
    except ExplainError as exc:
        _fail(str(exc))
    for result in results:
        if not result.ok:
            err_console.print(f"[bold red]error:[/] {result.error}", highlight=False, soft_wrap=True)
            continue
        console.print(f"{result.image}: {result.label} ({result.probability:.1%})", highlight=False)
        for kind, path in result.files.items():
            console.print(f"  {kind}: {path}", highlight=False)
    if not all(result.ok for result in results):
        raise typer.Exit(1)


@app.command("run")
def run(
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Dataset (default: the shared one).")
    ] = None,
    fmt: FormatOption = None,
    out: OutOption = None,
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Training recipe (default: the packaged quickstart, a short CPU run)."
        ),
    ] = None,
    overrides: SetOption = None,
) -> None:
    """The main job, end to end: check → train (short CPU schedule) → evaluate → export → predict."""
    from carid.config import ConfigError, resolve_data_path
    from carid.data.readers import DatasetError
    from carid.pipeline import quickstart_config, run_main_job

    try:
        extra = list(overrides or []) + ([f"data.format={fmt}"] if fmt else [])
        config = quickstart_config(config_path, extra)
        data_path = resolve_data_path(data if data is not None else config.data.path)
    except ConfigError as exc:
        _fail(str(exc))
    out_dir = out or Path("outputs") / "run" / data_path.resolve().name
    console.rule(f"carid run: {data_path}")
    try:
        result = run_main_job(
            data_path, out_dir, config, say=lambda line: console.print(line, highlight=False)
        )
    except (ConfigError, DatasetError) as exc:
        _fail(str(exc))
    console.rule("done")
    for name, path in result.paths.items():
        console.print(f"{name}: {path}", highlight=False)
    timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.seconds.items())
    console.print(f"time: {timing}", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
