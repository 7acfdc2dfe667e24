"""`artnote import records`: a collection system's export as object records, and the
images of each object. Registered into the `import` group by artnote.cli_review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from artnote.cli_options import CatalogOpt, ConfigOpt
from artnote.cli_options import echo_err as _err
from artnote.cli_options import open_catalog_for as _open_catalog
from artnote.cli_options import settings_for as _settings

SHOWN = 20  # unmatched records or images listed by name; the rest are counted


def register(import_app: typer.Typer) -> None:
    import_app.command("records")(records_import)


def records_import(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="A collection system's export: CSV (comma, semicolon or tab; UTF-8 or "
            "UTF-16) or JSON Lines, one object per row.",
        ),
    ],
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            metavar="COLUMN",
            help="The object-number column (default: a recognised one, e.g. Object Number, "
            "accession_number).",
        ),
    ] = None,
    image_column: Annotated[
        str | None,
        typer.Option(
            "--image-column",
            metavar="COLUMN",
            help="A column of image file names (or relative paths, or URLs), several "
            "separated by ; or |: the first listed is the primary image.",
        ),
    ] = None,
    match_filename: Annotated[
        str | None,
        typer.Option(
            "--match-filename",
            metavar="PATTERN",
            help="Link images whose file name fits, e.g. '{object_number}_*.jpg' or "
            "'{object_number}.*' (. - _ space / match each other, case ignored).",
        ),
    ] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="FIELD=COLUMN",
            help="Read FIELD (title, maker, date, medium, dimensions, credit_line, rights) "
            "from COLUMN; repeatable.",
        ),
    ] = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Import object records (title, maker, date, ...) by object number and link the images
    of each object, now and in later scans (all or nothing; a changed record is a new
    revision, the old one kept)."""
    from artnote.collection_records import read_records, write_records
    from artnote.records import RECORD_FIELDS

    fields: dict[str, str] = {}
    for item in mapping or []:
        name, sep, column = item.partition("=")
        if not sep or not column.strip() or name.strip() not in RECORD_FIELDS:
            raise typer.BadParameter(
                f"{item!r} is not FIELD=COLUMN with FIELD one of {', '.join(RECORD_FIELDS)}",
                param_hint="--map",
            )
        fields[name.strip()] = column.strip()
    settings = _settings(config, catalog={"url": catalog})
    # The whole file is validated before the catalog is opened: a bad file leaves nothing.
    records = read_records(
        file, key=key, image_column=image_column, match_filename=match_filename, mapping=fields
    )
    report = write_records(_open_catalog(settings, create=True), records)
    out = report.outcome
    read = ", ".join(f"{name} <- {column}" for name, column in records.columns.items())
    _err(f"read {records.key_column!r} as the object number; {read or 'no other field'}")
    _err(
        f"imported {len(records.rows)} records from {file.name}: {out.new} new, "
        f"{out.updated} updated, {out.unchanged} unchanged; {out.linked} images linked"
        + (f" ({records.repeated} repeated rows skipped)" if records.repeated else "")
    )
    for line, name in records.truncated[:SHOWN]:
        _err(f"{file}:{line}: {name} cut to fit (values are capped)")
    _listing("records without an image", out.unmatched_records)
    _listing("images without a record", out.unmatched_images)


def _listing(what: str, names: list[str]) -> None:
    if not names:
        return
    _err(f"{len(names)} {what}:")
    for name in names[:SHOWN]:
        _err(f"  {name}")
    if len(names) > SHOWN:
        _err(f"  ... and {len(names) - SHOWN} more")
