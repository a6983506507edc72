"""`carid predict`, `carid serve` and `carid enroll`: use an exported bundle (or a checkpoint).

These are the commands of the slim install (ONNX Runtime, no torch): nothing here may import torch,
training or evaluation code; `carid.runtime`, `carid.enroll` and `carid.serve` load lazily inside
each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from carid.cli.app import TtaOption, console, err_console, given, out_option, say, shown
from carid.errors import CaridError

ModelArgument = Annotated[
    Path,
    typer.Argument(help="A bundle folder (or its model.json), a run folder or a .ckpt.", show_default=False),
]
BACKEND_HELP = "auto (ONNX Runtime for bundles, PyTorch for checkpoints), onnx or torch."
ThreadsOption = Annotated[int | None, typer.Option(min=1, help="Inference threads (default: the runtime's).")]


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
    remove: Annotated[list[str] | None, typer.Option(help="Remove this enrolled class (repeatable).")] = None,
    list_classes: Annotated[bool, typer.Option("--list", help="List the enrolled classes.")] = False,
) -> None:
    """Add a class to a bundle from a few photos, without retraining; --remove one; list them (--list,
    also the default)."""
    from rich.table import Table

    from carid.enroll.store import enroll as enroll_class
    from carid.enroll.store import listing
    from carid.enroll.store import remove as remove_classes
    from carid.runtime.predict_io import gather_inputs

    if remove:
        left = remove_classes(model, remove)
        say(f"removed {', '.join(remove)}; enrolled classes left: {len(left)}")
    elif label is not None:
        gathered = gather_inputs([str(p) for p in photos or []])
        for entry in gathered.skipped:
            err_console.print(
                f"[yellow]{shown(entry.path)}: {shown(entry.reason)}; skipped[/]", highlight=False
            )
        result = enroll_class(
            model,
            label,
            gathered.images,
            replace_photos=replace_photos,
            say=lambda line: err_console.print(f"[yellow]{shown(line)}[/]", highlight=False),
        )
        verb = "enrolled" if result.new_class else "updated"
        say(
            f"{verb} {result.label!r} from {len(result.added_photos)} photo(s) ({result.photos} in all, "
            f"{len(result.skipped)} skipped); {len(result.classes)} enrolled class(es) in {result.bundle}"
        )
    elif photos:
        raise CaridError("photos given without --label NAME (the class they show)")
    bundle, enrolment = listing(model)
    if enrolment is None:
        say(f"{bundle.path}: cannot take new classes (re-export it with `carid export RUN --force`)")
        return
    if list_classes or not (remove or label):
        title = f"enrolled classes of {shown(bundle.path)} ({bundle.metadata.num_classes} trained)"
        table = Table(title=title)
        for column in ("class", "photos", "added", "updated"):
            table.add_column(column)
        for item in enrolment.classes:  # a bundle's labels may hold anything, ESC and newlines too
            table.add_row(shown(item.label), str(item.photos), shown(item.added), shown(item.updated))
        console.print(table)


def predict(
    model: ModelArgument,
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Photos: files, folders (searched recursively) or glob patterns.", show_default=False
        ),
    ],
    top_k: Annotated[int | None, typer.Option(min=1, help="Classes listed per photo (default 5).")] = None,
    out: Annotated[
        Path | None, out_option("Write the predictions to a .csv or .json file (--engine ray: a folder).")
    ] = None,
    annotate: Annotated[
        Path | None, typer.Option(help="Folder for copies of the photos with the box and label drawn.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Photos per batch (default 16).")] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    threads: ThreadsOption = None,
    tta: TtaOption = None,
    engine: Annotated[
        str, typer.Option(help="local (this process), or ray (shards on a Ray cluster; docs/scale.md).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="--engine ray: the cluster, auto or HOST:PORT (default: Ray on this machine)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="--engine ray: actors, one model each (default: CPUs/threads).")
    ] = None,
    shard_size: Annotated[
        int | None, typer.Option(min=1, help="--engine ray: photos per shard file (default 256).")
    ] = None,
    shard_format: Annotated[
        str | None, typer.Option(help="--engine ray: csv (default) or parquet shard files.")
    ] = None,
) -> None:
    """Identify the car in photos with an exported bundle (no torch needed) or a checkpoint.

    With --engine ray, --out is a folder of shard files; a rerun skips the shards already written.
    """
    from carid.runtime.annotate import print_predictions
    from carid.runtime.predict_io import partial_path, run_predict

    if engine != "local":
        _predict_on_ray(
            model,
            paths,
            engine,
            out,
            annotate,
            backend=backend,
            workers=workers,
            **given(top_k=top_k, batch_size=batch_size, tta=tta, threads=threads, address=address),
            **given(shard_size=shard_size, shard_format=shard_format),
        )
        return
    try:
        result = run_predict(
            model,
            paths,
            backend=backend,
            out=out,
            annotate_dir=annotate,
            threads=threads,
            **given(top_k=top_k, batch_size=batch_size, tta=tta),
        )
    except KeyboardInterrupt:
        if out is not None and partial_path(out).is_file():
            err_console.print(f"the rows finished so far are in {shown(partial_path(out))}", highlight=False)
        raise
    print_predictions(result.predictions, console)
    total = len(result.predictions)
    console.print(f"{total - result.num_failed} of {total} photos predicted in {result.seconds:.2f} s")
    if result.num_failed:
        err_console.print(f"[yellow]{result.num_failed} photo(s) could not be used[/] (see the error column)")
    if result.output is not None:
        say(f"predictions: {result.output}")
    if annotate is not None:
        say(f"annotated: {len(result.annotated)} photos in {annotate}")
    raise typer.Exit(1 if total and result.num_failed == total else 0)


def _predict_on_ray(
    model: Path, paths: list[str], engine: str, out: Path | None, annotate: Path | None, **options: Any
) -> None:
    """`carid predict --engine ray`: shards on a Ray cluster (carid.scale.ray_engine)."""
    if engine != "ray":
        raise CaridError(f"--engine {engine}: expected local or ray")
    if out is None:
        raise CaridError("--engine ray needs --out DIR, the folder for the shard files")
    if annotate is not None:
        raise CaridError("--annotate works with --engine local only")
    from carid.scale.ray_engine import run_ray_predict

    def progress(record: Any, done: int, total: int) -> None:
        line = f"{record.file}: {record.photos} photos ({done} of {total} shards)"
        err_console.print(line, highlight=False, markup=False)

    run = run_ray_predict(model, paths, out, on_shard=progress, **options)
    resumed = f", {len(run.resumed)} shard(s) kept from an earlier run" if run.resumed else ""
    how = f"with {run.workers} Ray worker(s)" if run.workers else "(every shard was already written)"
    say(f"{run.photos - run.failed} of {run.photos} photos predicted in {run.seconds:.2f} s {how}{resumed}")
    if run.failed:
        err_console.print(f"[yellow]{run.failed} photo(s) could not be used[/] (see the error column)")
    say(f"shards: {run.out} (manifest: {run.manifest.name})")
    raise typer.Exit(1 if run.failed == run.photos else 0)


def serve(
    model: ModelArgument,
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
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    threads: ThreadsOption = None,
    tta: TtaOption = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(min=0.1, help="Seconds a client has to send a request's headers (default 10)."),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option(min=0.1, help="Seconds a client has to send the upload after the headers (default 60)."),
    ] = None,
    keep_alive_timeout: Annotated[
        float | None, typer.Option(min=0.1, help="Seconds an idle connection stays open (default 5).")
    ] = None,
    concurrency_limit: Annotated[
        int | None,
        typer.Option(
            min=1, help="Requests handled at once per process, uploads included; more get 503 (default 100)."
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            metavar="VAR",
            help="Environment variable holding the API key requests must send in X-API-Key "
            "(default: CARID_API_KEY when set, else no key). /health and the web page stay open.",
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            metavar="NAMES",
            help="Comma-separated Host names to answer, e.g. cars.example.org,*.example.org; * for any "
            "(default: localhost names when listening on a loopback address, else any).",
        ),
    ] = None,
) -> None:
    """Serve a model: REST API (POST /predict, GET /model, /health, /docs) and a web page at /.

    For a server reachable from other machines, see docs/serve.md ("Exposing the server"): an API
    key, --allowed-hosts and a reverse proxy (nginx) in front.
    """
    from carid.serve.server import run_server
    from carid.serve.settings import ServeSettings

    hosts = (
        tuple(name.strip() for name in allowed_hosts.split(",") if name.strip()) if allowed_hosts else None
    )
    settings = ServeSettings(
        **given(
            host=host,
            port=port,
            workers=workers,
            max_upload_mb=max_upload_mb,
            max_pixels=max_pixels,
            backend=backend,
            threads=threads,
            tta=tta,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            keep_alive_timeout=keep_alive_timeout,
            concurrency_limit=concurrency_limit,
            api_key_env=api_key_env,
            allowed_hosts=hosts,
        )
    )
    run_server(model, settings, say=say)
