"""Commands that bring curators' work in: `artnote correct`, `approve`, `corrections
import`, `corrections import-label-studio` and `import artemis`. Registered into
artnote.cli's app."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from artnote import cli_records
from artnote.cli_options import CatalogOpt, ConfigOpt
from artnote.cli_options import echo_err as _err
from artnote.cli_options import open_catalog_for as _open_catalog
from artnote.cli_options import settings_for as _settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from artnote.corrections import ImportReport

EXIT_ERROR = 1

ByOpt = Annotated[
    str | None,
    typer.Option(
        "--by",
        metavar="NAME",
        help="Who made the change, kept with it (default: $USER).",
        envvar="ARTNOTE_BY",
    ),
]


def register(app: typer.Typer, group: type) -> None:
    app.command("correct")(correct)
    app.command("approve")(approve)
    corrections_app = typer.Typer(
        cls=group, help="Bring curators' corrections back.", no_args_is_help=True
    )
    app.add_typer(corrections_app, name="corrections")
    corrections_app.command("import")(corrections_import)
    corrections_app.command("import-label-studio")(corrections_import_label_studio)
    import_app = typer.Typer(
        cls=group,
        help="Import curated annotations (ArtEmis) and collection records.",
        no_args_is_help=True,
    )
    app.add_typer(import_app, name="import")
    import_app.command("artemis")(import_artemis_cmd)
    cli_records.register(import_app)


def _by(by: str | None) -> str | None:
    return by or os.environ.get("USER") or None


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
    _import_summary(report, lambda line: f"{file}:{line}", "row", "the explanation column")


def corrections_import_label_studio(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="EXPORT.json",
            help="A Label Studio JSON export of a project made from `artnote export "
            "label-studio` tasks.",
        ),
    ],
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="NAME",
            help="Who made the changes, kept with them (default: the annotator the export "
            "names, when one person did them all; else $USER).",
            envvar="ARTNOTE_BY",
        ),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Import the good tasks even if some are bad.")
    ] = False,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Import what annotators changed in Label Studio as corrections and approvals (all or
    nothing)."""
    from artnote.interchange.label_studio import import_label_studio

    cat = _open_catalog(_settings(config, catalog={"url": catalog}))
    fallback = _by(None)
    report = import_label_studio(cat, file, by, skip_bad=skip_bad, fallback_by=fallback)
    _import_summary(report, lambda task: f"{file}: task {task}", "task", "Label Studio")
    if by is None and report.by != fallback:
        _err(f"recorded as by {report.by}, the annotator the export names")


def _import_summary(
    report: ImportReport, where: Callable[[int], str], unit: str, fix_explanation_in: str
) -> None:
    """Print an import's bad records, outcome and held-back approvals; exit 1 when nothing
    was imported. `where`: record number -> its place in messages."""
    for number, reason in report.bad:
        _err(f"{where(number)}: {reason}")
    if not report.imported:
        _err(f"nothing imported: {len(report.bad)} bad {unit}(s); fix them or use --skip-bad")
        raise typer.Exit(EXIT_ERROR)
    _err(
        f"imported {report.corrections} corrections and {report.approvals} approvals from "
        f"{report.rows} {unit}s ({report.unchanged_rows} unchanged"
        + (f", {len(report.bad)} bad skipped)" if report.bad else ")")
    )
    for number, stale in report.held_back:
        _err(
            f"{where(number)}: explanation not approved: written for {stale.written_for}, "
            f"emotion is now {stale.emotion}; correct it in {fix_explanation_in}"
        )


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
