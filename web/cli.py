"""`artnote review` and `artnote report`, registered into artnote's CLI through the entry
point `artnote.commands` (pyproject.toml). Imports of the web stack happen inside the
commands, so `artnote --help` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from artnote.cli_options import CatalogOpt, ConfigOpt


def register(app: typer.Typer) -> None:
    app.command("review")(review)
    app.command("report")(report)


def review(
    host: Annotated[
        str,
        typer.Option(
            metavar="ADDR", help="Address to listen on (anything but 127.0.0.1 has no login)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="N", min=0, max=65535, help="Port.")] = 8765,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="NAME",
            help="Who reviews, kept with each edit (default: $USER).",
            envvar="ARTNOTE_BY",
        ),
    ] = None,
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Review annotations in the browser: a local web page with the images, filters,
    editing and approval, written to the catalog as `artnote correct`/`approve` write."""
    from web.serve import main

    main(host=host, port=port, by=by, catalog=catalog, config=config)


def report(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="FILE", help="The HTML file to write."),
    ] = Path("report.html"),
    catalog: CatalogOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write one self-contained HTML report of the catalog, with charts (opens offline)."""
    from web.report import main

    main(out=out, catalog=catalog, config=config)
