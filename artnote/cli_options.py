"""Command-line options shared by artnote's commands and by plugins (`artnote finetune`).

Their own module, so that a plugin can import them while artnote.cli, which loads the
plugins as it is imported, is still being imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperArgument, TyperOption


def _help_type(self: TyperArgument | TyperOption, ctx: object) -> str:
    """What --help shows after a parameter: its metavar (N, FILE, NAME|DIR|latest), as
    git's and hf's help do, never typer's Python types (<bool>, <str>, <list[str]>)."""
    if self.metavar is not None:
        return "" if isinstance(self, TyperArgument) else self.metavar  # the name says it
    if isinstance(self, TyperArgument) or getattr(self, "is_flag", False):
        return ""
    return (self.name or "value").upper()


# typer 0.2x prints each parameter's Python type in --help; artnote names its forms.
TyperArgument.display_type_rich = _help_type  # type: ignore[method-assign]
TyperOption.display_type_rich = _help_type  # type: ignore[method-assign]

CatalogOpt = Annotated[
    str | None,
    typer.Option(
        "--catalog",
        metavar="PATH|URL",
        help="Catalog path or SQLAlchemy URL (default: artnote.db).",
        envvar="ARTNOTE_CATALOG",
        show_envvar=True,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        metavar="ID|DIR",
        help="Hub id or local model folder (default: the model name in artnote.toml).",
        envvar="ARTNOTE_MODEL",
        show_envvar=True,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", metavar="FILE", help="artnote.toml to read (default: ./artnote.toml)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def settings_for(config: Path | None, **sections):
    """Settings from the config file and environment, with the flags given on top."""
    from artnote.config import load_settings

    return load_settings(config, overrides=sections)


def echo_err(message: str) -> None:
    typer.echo(message, err=True)


def open_catalog_for(settings, *, create: bool = False):
    """The catalog; only commands that bring images in (scan, import) may create it."""
    from artnote.catalog import open_catalog

    return open_catalog(settings.catalog.url, create=create)
