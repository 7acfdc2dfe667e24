"""Command-line options shared by artnote's commands and by plugins (`artnote finetune`).

Their own module, so that a plugin can import them while artnote.cli, which loads the
plugins as it is imported, is still being imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        help="Catalog path or SQLAlchemy URL (default: artnote.db).",
        envvar="ARTNOTE_CATALOG",
        show_envvar=True,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Hub id or local model folder (default: the model name in artnote.toml).",
        envvar="ARTNOTE_MODEL",
        show_envvar=True,
    ),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="artnote.toml to read (default: ./artnote.toml).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
