"""`artnote export FORMAT`: the catalog's current annotations for other systems.

csv and jsonl for spreadsheets and programs; iiif for viewers; xmp for digital asset
managers; label-studio for labelling teams; datasette-metadata for browsing the catalog.
Every format streams rows from the catalog and takes --status. Registered into
artnote.cli's app; the formats themselves live in artnote.export and artnote.interchange.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from artnote.cli_options import CatalogOpt, ConfigOpt
from artnote.cli_options import echo_err as _err
from artnote.cli_options import open_catalog_for as _open_catalog
from artnote.cli_options import settings_for as _settings
from artnote.errors import ArtnoteError
from artnote.files import atomic_write, write_error

StatusOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        metavar="draft|corrected|approved",
        help="Only images with this review status (repeat for several).",
    ),
]


GroupOpt = Annotated[
    str | None,
    typer.Option(
        "--group-by",
        metavar="object",
        help="One row per object (artnote import records): its primary image's annotation, "
        "with the paths of all its images (object_images).",
    ),
]


def register(app: typer.Typer, group: type) -> None:
    export_app = typer.Typer(
        cls=group,
        help="Export the current annotation of every image (corrections included).",
        no_args_is_help=True,
    )
    app.add_typer(export_app, name="export")
    export_app.command("csv")(export_csv)
    export_app.command("jsonl")(export_jsonl)
    export_app.command("iiif")(export_iiif)
    export_app.command("xmp")(export_xmp)
    export_app.command("label-studio")(export_label_studio)
    export_app.command("datasette-metadata")(export_datasette_metadata)


OutFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        metavar="FILE",
        help="Write to FILE instead of stdout (a CSV file starts with a BOM, for Excel).",
    ),
]


def export_csv(
    out: OutFileOpt = None,
    status: StatusOpt = None,
    group_by: GroupOpt = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """CSV for spreadsheets: one row per image (object number, title and maker first once
    records exist); edit it and bring it back with `artnote corrections import`."""
    from artnote.export import csv_columns, group_by_object, write_csv, write_csv_cells

    grouped = _grouped(group_by)
    cat = _catalog(config, catalog)
    records = cat.has_records()
    columns = csv_columns(records, grouped)

    def write(fh: TextIO) -> int:
        if grouped:
            rows = cat.export_rows(provenance=False, statuses=status, by_object=True)
            return write_csv(group_by_object(rows), fh, columns)
        return write_csv_cells(cat.export_table(status, records=records), fh, columns)

    # A BOM makes Excel read the file as UTF-8 (stdout stays plain UTF-8 for pipes).
    _write(out, write, "utf-8-sig")


def export_jsonl(
    out: OutFileOpt = None,
    status: StatusOpt = None,
    group_by: GroupOpt = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """JSON Lines for programs: every field, full provenance included."""
    from artnote.export import group_by_object, write_jsonl

    grouped = _grouped(group_by)
    cat = _catalog(config, catalog)
    rows = cat.export_rows(provenance=True, statuses=status, by_object=grouped)
    _write(out, lambda fh: write_jsonl(group_by_object(rows) if grouped else rows, fh))


def _grouped(group_by: str | None) -> bool:
    if group_by not in (None, "object"):
        raise typer.BadParameter("the one grouping is: object", param_hint="--group-by")
    return group_by == "object"


def export_iiif(
    base_url: Annotated[
        str,
        typer.Option(
            "--base-url",
            metavar="URL",
            help="Where the scanned folders' images are served: an image's URL is URL + "
            "its path under the scanned folder.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="DIR", help="Folder for collection.json, manifests/."),
    ],
    label: Annotated[
        str, typer.Option("--label", metavar="TEXT", help="The top-level Collection's label.")
    ] = "artnote collection",
    image_service: Annotated[
        str | None,
        typer.Option(
            "--image-service",
            metavar="URL",
            help="An IIIF Image API 3 server for the images instead (identifier: the "
            "path under the scanned folder, URL-escaped).",
        ),
    ] = None,
    per: Annotated[
        str,
        typer.Option(
            "--per",
            metavar="folder|object",
            help="A manifest per folder, or per object of the collection records (images "
            "without a record: per folder).",
        ),
    ] = "folder",
    iiif_url: Annotated[
        str | None,
        typer.Option(
            "--iiif-url",
            metavar="URL",
            help="Where DIR itself will be served (the documents' ids; default BASE_URL/iiif/).",
        ),
    ] = None,
    status: StatusOpt = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """IIIF Presentation 3: a Collection of Manifests, one per folder, each image a Canvas
    with its text as W3C Web Annotations (for Mirador, Universal Viewer, aggregators)."""
    from artnote.interchange.iiif import write_iiif

    cat = _catalog(config, catalog)
    report = write_iiif(
        cat.export_rows(provenance=False, statuses=status, by_object=per == "object"),
        out,
        base_url=base_url,
        iiif_url=iiif_url,
        label=label,
        image_service=image_service,
        per=per,
    )
    for path, why in report.skipped[:20]:
        _err(f"  skipped: {path}: {why}")
    _err(
        f"wrote {report.canvases} canvases in {report.manifests} manifests; "
        f"collection: {report.collection}"
    )


def export_xmp(
    sidecars: Annotated[
        bool, typer.Option("--sidecars", help="Write XMP sidecars (the default).")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="With --sidecars: mirror the sidecars under DIR instead of beside the images "
            "(for collections on read-only storage).",
        ),
    ] = None,
    embed_into: Annotated[
        Path | None,
        typer.Option(
            "--embed-into",
            metavar="DIR",
            help="Write copies of the images with the XMP embedded under DIR (originals are "
            "never modified).",
        ),
    ] = None,
    naming: Annotated[
        str,
        typer.Option(
            "--sidecar-name",
            metavar="ext|stem",
            help="ext: NAME.EXT.xmp (never collides; darktable, digiKam); stem: NAME.xmp "
            "(Lightroom, Bridge).",
        ),
    ] = "ext",
    status: StatusOpt = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """IPTC photo metadata in XMP: alt text (AltTextAccessibility), description
    (ExtDescrAccessibility), emotion and provenance, for digital asset managers."""
    from artnote.interchange import xmp

    if embed_into is not None and (sidecars or out is not None):
        raise typer.BadParameter("--embed-into writes copies; it goes without --sidecars/--out")
    if naming not in ("ext", "stem"):
        raise typer.BadParameter("choose ext or stem", param_hint="--sidecar-name")
    cat = _catalog(config, catalog)
    rows = cat.export_rows(provenance=True, statuses=status)
    if embed_into is not None:
        report = xmp.embed_copies(rows, into=embed_into)
        what = f"copies with XMP under {embed_into}"
    else:
        report = xmp.write_sidecars(rows, out_dir=out, naming=naming)
        what = "sidecars" + (f" under {out}" if out else " beside the images")
    for path, why in report.skipped[:20]:
        _err(f"  not written: {path}: {why}")
    if len(report.skipped) > 20:
        _err(f"  ... and {len(report.skipped) - 20} more")
    _err(f"wrote {report.written} {what}; {len(report.skipped)} not written")
    if report.skipped and embed_into is None and out is None and not report.written:
        _err("Collection on read-only storage? Write the sidecars elsewhere with --out DIR.")
    if report.skipped:
        raise typer.Exit(3)  # as a scan with failures: the rest was written


def export_label_studio(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="FILE", help="The tasks, a JSON array to import."),
    ] = Path("label-studio-tasks.json"),
    labeling_config: Annotated[
        Path | None,
        typer.Option(
            "--labeling-config",
            metavar="FILE",
            help="Where to write the matching labeling config (default: beside --out, "
            "label-studio-config.xml).",
        ),
    ] = None,
    image_root: Annotated[
        str | None,
        typer.Option(
            "--image-root",
            metavar="URL",
            help="Where Label Studio finds the images: URL + path under the scanned folder "
            "(default: Label Studio's local-files storage).",
        ),
    ] = None,
    status: StatusOpt = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Label Studio tasks with artnote's text as predictions (pre-annotations), and the
    labeling config; bring the results back with `artnote corrections import-label-studio`."""
    from artnote.interchange import label_studio

    cat = _catalog(config, catalog)
    config_path = labeling_config or out.with_name("label-studio-config.xml")
    _write(config_path, lambda fh: fh.write(label_studio.labeling_config()), quiet=True)
    rows = cat.export_rows(provenance=False, statuses=status)
    _write(out, lambda fh: label_studio.write_tasks(rows, fh, image_root=image_root), noun="tasks")
    _err(f"labeling config: {config_path}")


def export_datasette_metadata(
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FILE", help="The metadata file to write.")
    ] = Path("metadata.json"),
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Metadata for Datasette (descriptions, facets, full-text search), so that
    `datasette CATALOG.db -m metadata.json` browses the catalog read-only."""
    from artnote.interchange.datasette import metadata

    cat = _catalog(config, catalog)
    if not cat.is_sqlite:
        raise ArtnoteError(
            "Datasette reads SQLite catalogs only; browse a PostgreSQL catalog's "
            "current_annotations view with any SQL client"
        )
    import json

    database = Path(str(cat.engine.url.database))
    document = metadata(database.stem)
    _write(out, lambda fh: json.dump(document, fh, indent=2, ensure_ascii=False), quiet=True)
    _err(f"wrote {out}; browse with: datasette {database} -m {out}")


def _catalog(config: Path | None, catalog: str | None) -> Any:
    return _open_catalog(_settings(config, catalog={"url": catalog}))


def _write(
    out: Path | None,
    write: Callable[[TextIO], Any],
    encoding: str = "utf-8",
    *,
    quiet: bool = False,
    noun: str = "annotations",
) -> None:
    """Write to stdout, or to `out` through artnote.files, so that a failed export
    never leaves a half-written file under the real name."""
    if out is None:
        write(sys.stdout)
        return
    try:
        with atomic_write(out, "w", encoding=encoding, newline="") as fh:
            count = write(fh)
    except OSError as exc:  # the folder is missing, say: still one line
        raise write_error(out, exc) from None
    if not quiet:
        _err(f"wrote {count} {noun} to {out}")
