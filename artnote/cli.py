"""The `artnote` command line. Thin: parse options, resolve settings, call one
library function, print. Data goes to stdout; progress and messages to stderr."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from artnote import signals
from artnote.cli_options import CatalogOpt, ConfigOpt, JsonOpt, ModelOpt
from artnote.cli_options import echo_err as _err
from artnote.cli_options import open_catalog_for as _open_catalog
from artnote.cli_options import settings_for as _settings
from artnote.errors import ArtnoteError

EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED = 1, 2, 3


class _Group(TyperGroup):
    """Known errors become one line on stderr and exit code 1 (ARTNOTE_DEBUG=1: traceback)."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except ArtnoteError as exc:
            if os.environ.get("ARTNOTE_DEBUG"):
                raise
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (artnote.signals)
            typer.echo(f"{stopped_by(exc)}.", err=True)
            raise typer.Exit(signals.exit_status(exc)) from None


def stopped_by(exc: BaseException | None = None) -> str:
    """'Interrupted' for Ctrl-C, 'Stopped by SIGTERM' (or SIGHUP) for a stop signal."""
    if isinstance(exc, signals.Stopped):
        return f"Stopped by {exc.name}" + (f": {exc.note}" if exc.note else "")
    received = signals.received()
    return f"Stopped by {signal.Signals(received).name}" if received else "Interrupted"


app = typer.Typer(
    cls=_Group,
    help="Describe museum image collections with an adapter-enhanced vision-language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(cls=_Group, help="Build and convert models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _print_version(value: bool) -> None:
    if value:
        from artnote import __version__

        typer.echo(f"artnote {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Describe museum image collections with an adapter-enhanced vision-language model."""


@app.command()
def scan(
    folder: Annotated[
        Path,
        typer.Argument(
            metavar="FOLDER",
            help="Folder of images to annotate (searched recursively), or one image file.",
        ),
    ],
    catalog: CatalogOpt = None,
    model: ModelOpt = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            metavar="NAME|DIR|latest",
            help="Adapter to apply: a registered name, a folder, or latest (default: the "
            "adapter in artnote.toml, or none).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(metavar="N", help="Images per model batch.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(metavar="auto|cpu|cuda", help="Where the model runs.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(metavar="N", help="Annotate at most N new images.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Annotate every image again.")] = False,
    reannotate: Annotated[
        bool,
        typer.Option(
            help="Re-annotate images annotated with another adapter or another prompt (a "
            "record added or changed, with --use-records); corrections stay."
        ),
    ] = False,
    use_records: Annotated[
        bool | None,
        typer.Option(
            "--use-records/--no-use-records",
            help="Put each image's object record (artnote import records) before the "
            "questions: grounded prompting (default: [prompt] use_records).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            metavar="local|ray",
            help="local: this process; ray: Ray Data actors, on this machine or a cluster "
            '(pip install -e ".[ray]").',
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="ADDR|auto",
            help="With --engine ray: the cluster to join (auto: the one `ray start` made "
            "here); none: a Ray of this machine, started for this scan.",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(metavar="N", min=1, help="With --engine ray: model actors.")
    ] = 1,
    gpus_per_worker: Annotated[
        float, typer.Option(metavar="G", min=0, help="With --engine ray: GPUs per actor.")
    ] = 0.0,
    cpus_per_worker: Annotated[
        float, typer.Option(metavar="C", min=0.01, help="With --engine ray: CPUs per actor.")
    ] = 1.0,
    config: ConfigOpt = None,
) -> None:
    """Annotate every new or changed image under FOLDER, or one image file (incremental and
    resumable)."""
    from artnote.pipeline import AnnotatorFactory
    from artnote.pipeline import scan as run_scan

    settings = _settings(
        config,
        catalog={"url": catalog},
        model={"name": model, "device": device, "adapter": adapter},
        scan={"batch_size": batch_size},
        prompt={"use_records": use_records},
    )
    if limit is not None and limit < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--limit")
    from artnote.catalog.engine import catalog_url
    from artnote.model.adapters import read_adapter_config
    from artnote.model.load import check_model_available
    from artnote.pipeline import check_scan_target, resolve_adapter

    # Everything that can be checked is checked before the catalog is opened: a scan
    # that fails before its first image leaves no catalog behind.
    check_scan_target(folder, settings.scan.extensions)
    catalog_url(settings.catalog.url)  # a folder, or a file in a folder that is not there
    if engine not in ("local", "ray"):
        raise typer.BadParameter("must be local or ray", param_hint="--engine")
    if engine == "local" and ray_address is not None:
        raise typer.BadParameter("needs --engine ray", param_hint="--ray-address")
    options = None
    if engine == "ray":
        from artnote.ray_engine import RayOptions, check_ray

        options = RayOptions(ray_address, workers, gpus_per_worker, cpus_per_worker, 0)
        check_ray(options, settings.catalog.url)
    check_model_available(settings.model)
    choice = settings.model.adapter
    registered = bool(choice) and not Path(choice).expanduser().is_dir()  # a name, or latest
    cat = _open_catalog(settings, create=not registered)
    adapter_dir, adapter_name = resolve_adapter(cat, choice)
    adapter_hash = read_adapter_config(adapter_dir).content_hash if adapter_dir else None

    def make():
        from artnote.model.annotate import load_annotator

        if not quiet:
            _err(f"loading {settings.model.name} ...")
        return load_annotator(settings, adapter_dir, adapter_name)

    ray = None
    if options is not None:
        from artnote.ray_engine import RayEngine

        ray = RayEngine(options, adapter_dir, adapter_name)
    summary = run_scan(
        folder,
        settings,
        cat,
        AnnotatorFactory(make),
        engine=ray,
        model_name=settings.model.name,
        adapter=adapter_name,
        adapter_hash=adapter_hash,
        force=force,
        reannotate=reannotate,
        limit=limit,
        progress=not quiet,  # a bar on a terminal, a line every 30 s in a log
    )
    if not quiet:
        if summary.reasons_line():
            _err(summary.reasons_line())
        _err(summary.line())
        for path, reason in summary.failures[:20]:
            _err(f"  failed: {path}: {reason}")
        if len(summary.failures) > 20:
            _err(f"  ... and {len(summary.failures) - 20} more (artnote status lists them all)")
    if summary.outcome == "interrupted":
        _err(f"{stopped_by()}: what was annotated is saved; run the same command to resume.")
        received = signals.received()
        raise typer.Exit(128 + received if received else 130)
    raise typer.Exit(EXIT_SOME_FAILED if summary.some_failed else 0)


@app.command()
def status(
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Counts of images, annotations, failures, corrections, adapters and runs; of objects
    with and without images, and images without a record, once records were imported."""
    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    counts = cat.status_counts()
    failures = cat.failures()
    if json_out:
        typer.echo(
            json.dumps({**counts, "failures": [{"path": p, "reason": r} for p, r in failures]})
        )
        return
    typer.echo(f"catalog: {cat.where}")
    width = max(10, *map(len, counts))  # record counts have longer names
    for key, value in counts.items():
        typer.echo(f"{key:>{width}}: {value}")
    for path, reason in failures:
        typer.echo(f"failed: {path}: {reason}")


@app.command()
def search(
    query: Annotated[
        str,
        typer.Argument(
            help="Words to find in alt text, descriptions and explanations, or in the title "
            "and maker of an object's record."
        ),
    ],
    limit: Annotated[int, typer.Option(metavar="N", help="At most N results.")] = 20,
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Full-text search over the current values (curators' corrections over the model's
    text) and the titles and makers of imported records, best match first."""
    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    hits = cat.search(query, limit=limit)
    if json_out:
        typer.echo(json.dumps(hits, default=str))
        return
    for hit in hits:  # current values: a curator's correction, else the model's text
        typer.echo(f"{hit['path']}\n    {hit['alt_text'] or ''}")
        if hit["snippet"] and hit["snippet"].replace("[", "").replace("]", "") != hit["alt_text"]:
            typer.echo(f"    ... {hit['snippet']}")
    if not hits:
        _err("no matches")


adapters_app = typer.Typer(cls=_Group, help="Fine-tuned adapters.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")


@adapters_app.command("list")
def adapters_list(
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Adapters registered by `artnote finetune`, oldest first."""
    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    adapters = cat.adapters()
    if json_out:
        typer.echo(json.dumps(adapters, default=str))
        return
    for a in adapters:
        typer.echo(
            f"{a['name']}\t{a['created_at']:%Y-%m-%d %H:%M}\t{a['training_samples']} samples\t"
            f"{a['base_model']}\t{a['path']}"
        )
    if not adapters:
        _err("no adapters yet: run artnote finetune")


catalog_app = typer.Typer(
    cls=_Group, help="Look after the catalog: backups and checks.", no_args_is_help=True
)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("backup")
def catalog_backup(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="File to write the copy to.")],
    force: Annotated[bool, typer.Option(help="Overwrite FILE if it exists.")] = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Copy a SQLite catalog to FILE as of one moment, safely even while a scan writes to it."""
    from artnote.catalog.maintenance import backup_catalog

    settings = _settings(config, catalog={"url": catalog})
    report = backup_catalog(settings.catalog.url, file, force=force)
    counts = ", ".join(f"{n} {table}" for table, n in report.counts.items())
    _err(f"backed up {report.source} to {report.path} in {report.seconds:.1f} s ({counts})")


@catalog_app.command("check")
def catalog_check(
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run SQLite's integrity and foreign-key checks (changes nothing); exit 1 on problems."""
    from dataclasses import asdict

    from artnote.catalog.maintenance import check_catalog

    report = check_catalog(_settings(config, catalog={"url": catalog}).catalog.url)
    if json_out:
        typer.echo(json.dumps({"ok": report.ok, **asdict(report)}))
    else:
        typer.echo(f"catalog: {report.where}")
        typer.echo(f"schema revision: {', '.join(report.revisions) or 'none'}")
        for line in report.problems():
            typer.echo(line)
        typer.echo("ok" if report.ok else f"{len(report.problems())} problem(s) found")
    raise typer.Exit(0 if report.ok else EXIT_ERROR)


# correct, approve, corrections import, import artemis: artnote/cli_review.py; the
# `models` group and `selftest`: artnote/cli_models.py; export: artnote/cli_export.py.
from artnote import cli_export, cli_models, cli_review  # noqa: E402  (their commands need app)

cli_review.register(app, _Group)
cli_export.register(app, _Group)
cli_models.register(app, models_app)


def _load_plugins() -> None:
    """Commands from other packages (the trainer's `finetune`): artnote never imports them."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="artnote.commands"):
        entry.load()(app)


_load_plugins()


def main() -> None:
    signals.handle_stop_signals()  # SIGTERM and SIGHUP stop a command as Ctrl-C does
    try:
        app()
    except ArtnoteError as exc:  # raised outside a command (e.g. while parsing)
        if os.environ.get("ARTNOTE_DEBUG"):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
