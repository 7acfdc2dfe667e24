"""The `artnote` command line. Thin: parse options, resolve settings, call one
library function, print. Data goes to stdout; progress and messages to stderr."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from artnote.cli_options import CatalogOpt, ConfigOpt, JsonOpt, ModelOpt
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
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None


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


def _settings(config: Path | None, **sections):
    from artnote.config import load_settings

    return load_settings(config, overrides=sections)


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _open_catalog(settings, *, create: bool = False):
    """The catalog; only commands that bring images in (scan, import) may create it."""
    from artnote.catalog import open_catalog

    return open_catalog(settings.catalog.url, create=create)


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
        typer.Option(help="Re-annotate images annotated with another adapter (corrections stay)."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
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

    summary = run_scan(
        folder,
        settings,
        cat,
        AnnotatorFactory(make),
        model_name=settings.model.name,
        adapter=adapter_name,
        adapter_hash=adapter_hash,
        force=force,
        reannotate=reannotate,
        limit=limit,
        progress=not quiet,  # a bar on a terminal, a line every 30 s in a log
    )
    if not quiet:
        _err(summary.line())
        for path, reason in summary.failures[:20]:
            _err(f"  failed: {path}: {reason}")
        if len(summary.failures) > 20:
            _err(f"  ... and {len(summary.failures) - 20} more (artnote status lists them all)")
    if summary.outcome == "interrupted":
        _err("Interrupted: what was annotated is saved; run the same command to resume.")
        raise typer.Exit(130)
    raise typer.Exit(EXIT_SOME_FAILED if summary.some_failed else 0)


@app.command()
def export(
    fmt: Annotated[
        str,
        typer.Argument(metavar="csv|jsonl", help="csv for spreadsheets; jsonl carries everything."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="Write to FILE instead of stdout (a CSV file starts with a BOM, for Excel).",
        ),
    ] = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export the current annotation of every image."""
    from artnote import export as exporter

    writers = {"csv": exporter.write_csv_cells, "jsonl": exporter.write_jsonl}
    if fmt not in writers:
        raise typer.BadParameter("choose csv or jsonl", param_hint="FORMAT")
    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    rows = cat.export_table() if fmt == "csv" else cat.export_rows(provenance=True)
    if out is None:
        count = writers[fmt](rows, sys.stdout)
    else:
        tmp = out.with_name(out.name + ".partial")
        # A BOM makes Excel read the file as UTF-8 (stdout stays plain UTF-8 for pipes).
        encoding = "utf-8-sig" if fmt == "csv" else "utf-8"
        try:
            with open(tmp, "w", encoding=encoding, newline="") as fh:
                count = writers[fmt](rows, fh)
            tmp.replace(out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ArtnoteError(f"cannot write {out}: {exc.strerror or exc}") from None
        _err(f"wrote {count} annotations to {out}")


@app.command()
def status(
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Counts of images, annotations, failures, corrections, adapters and runs."""
    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    counts = cat.status_counts()
    failures = cat.failures()
    if json_out:
        typer.echo(
            json.dumps({**counts, "failures": [{"path": p, "reason": r} for p, r in failures]})
        )
        return
    typer.echo(f"catalog: {cat.where}")
    for key, value in counts.items():
        typer.echo(f"{key:>10}: {value}")
    for path, reason in failures:
        typer.echo(f"failed: {path}: {reason}")


@app.command()
def search(
    query: Annotated[
        str, typer.Argument(help="Words to find in alt text, descriptions and explanations.")
    ],
    limit: Annotated[int, typer.Option(metavar="N", help="At most N results.")] = 20,
    json_out: JsonOpt = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Full-text search over the current values (curators' corrections over the model's
    text), best match first."""
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


ByOpt = Annotated[
    str | None,
    typer.Option(
        "--by",
        metavar="NAME",
        help="Who made the change, kept with it (default: $USER).",
        envvar="ARTNOTE_BY",
    ),
]


def _by(by: str | None) -> str | None:
    return by or os.environ.get("USER") or None


@app.command()
def correct(
    image: Annotated[
        str,
        typer.Argument(metavar="IMAGE", help="Image: exported path, numeric id, or sha256 prefix."),
    ],
    alt_text: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT", help="Corrected alt text (aim for 125 characters, at most 250)."
        ),
    ] = None,
    description: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Corrected description.")
    ] = None,
    emotion: Annotated[
        str | None,
        typer.Option(metavar="EMOTION", help="Corrected dominant emotion (one of the nine)."),
    ] = None,
    explanation: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Corrected explanation.")
    ] = None,
    by: ByOpt = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Correct fields of one image's annotation (kept as a revision; nothing is overwritten)."""
    from artnote.corrections import correct as add_corrections
    from artnote.corrections import stale_explanation

    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    values = {
        "alt_text": alt_text,
        "description": description,
        "emotion": emotion,
        "explanation": explanation,
    }
    count = add_corrections(cat, image, values, _by(by))
    _err(f"recorded {count} correction{'s' if count != 1 else ''}")
    if stale := stale_explanation(cat, image):
        _err(
            f"note: the explanation was written for {stale.written_for}, the emotion is now "
            f"{stale.emotion}; an approval will not approve it until you correct it "
            "(--explanation; the same text keeps it)"
        )


@app.command()
def approve(
    images: Annotated[
        list[str],
        typer.Argument(metavar="IMAGE...", help="Images: exported paths, ids, or sha256 prefixes."),
    ],
    by: ByOpt = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Approve the current annotation of each image, as it stands (with corrections)."""
    import shlex

    from artnote.corrections import approve as add_approvals

    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    report = add_approvals(cat, images, _by(by))
    _err(f"approved {report.approved} image{'s' if report.approved != 1 else ''}")
    for ref, stale in report.held_back:
        _err(
            f"{ref}: explanation not approved: written for {stale.written_for}, emotion is now "
            f"{stale.emotion}; correct it (`artnote correct {shlex.quote(ref)} --explanation "
            "TEXT`, the same text to approve it as it is)"
        )


corrections_app = typer.Typer(
    cls=_Group, help="Bring curators' corrections back.", no_args_is_help=True
)
app.add_typer(corrections_app, name="corrections")


@corrections_app.command("import")
def corrections_import(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="A CSV from `artnote export csv`, edited (comma, semicolon or tab; UTF-8 or "
            "UTF-16).",
        ),
    ],
    by: ByOpt = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Import the good rows even if some are bad.")
    ] = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Import the cells that differ from the catalog as corrections (all or nothing)."""
    from artnote.corrections import import_csv

    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    report = import_csv(cat, file, _by(by), skip_bad=skip_bad)
    for line, reason in report.bad:
        _err(f"{file}:{line}: {reason}")
    if not report.imported:
        _err(f"nothing imported: {len(report.bad)} bad row(s); fix them or use --skip-bad")
        raise typer.Exit(EXIT_ERROR)
    _err(
        f"imported {report.corrections} corrections and {report.approvals} approvals from "
        f"{report.rows} rows ({report.unchanged_rows} unchanged"
        + (f", {len(report.bad)} bad skipped)" if report.bad else ")")
    )
    for line, stale in report.held_back:
        _err(
            f"{file}:{line}: explanation not approved: written for {stale.written_for}, "
            f"emotion is now {stale.emotion}; correct it in the explanation column"
        )


import_app = typer.Typer(
    cls=_Group, help="Import curated annotations from elsewhere.", no_args_is_help=True
)
app.add_typer(import_app, name="import")


@import_app.command("artemis")
def import_artemis_cmd(
    csv_file: Annotated[Path, typer.Argument(metavar="CSV", help="ArtEmis release CSV.")],
    images: Annotated[
        Path, typer.Option(metavar="DIR", help="Folder with art_style/painting.jpg images.")
    ],
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Import ArtEmis emotions and explanations as curated annotations."""
    from artnote.artemis import import_artemis

    cat = _open_catalog(_settings(config, catalog={"url": catalog}), create=True)
    report = import_artemis(cat, csv_file, images)
    _err(
        f"{report.paintings} paintings, {report.utterances} utterances: "
        f"imported {report.imported}, {report.unchanged} unchanged, "
        f"{len(report.missing)} images missing, {report.references} new reference texts"
        + (
            f", {report.skipped_rows} rows with an unknown emotion skipped"
            if report.skipped_rows
            else ""
        )
    )
    for path in report.missing[:10]:
        _err(f"  missing: {path}")


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


# The `models` group and `selftest`: artnote/cli_models.py.
from artnote import cli_models  # noqa: E402  (its commands need app and models_app)

cli_models.register(app, models_app)


def _load_plugins() -> None:
    """Commands from other packages (the trainer's `finetune`): artnote never imports them."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="artnote.commands"):
        entry.load()(app)


_load_plugins()


def main() -> None:
    try:
        app()
    except ArtnoteError as exc:  # raised outside a command (e.g. while parsing)
        if os.environ.get("ARTNOTE_DEBUG"):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
