"""The `artnote` command line. Thin: parse options, resolve settings, call one
library function, print. Data goes to stdout; progress and messages to stderr."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from artnote.errors import ArtnoteError

EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED = 1, 2, 3


class _Group(TyperGroup):
    """Known errors become one line on stderr and exit code 1 (ARTNOTE_DEBUG=1: traceback)."""

    def invoke(self, ctx: click.Context):
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

# Options shared by several commands, declared once.
CatalogOpt = Annotated[
    str | None,
    typer.Option("--catalog", help="Catalog path or SQLAlchemy URL [default: artnote.db].",
                 envvar="ARTNOTE_CATALOG", show_envvar=True),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Hub id or local model folder [default: [model] name].",
                 envvar="ARTNOTE_MODEL", show_envvar=True),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="artnote.toml to read [default: ./artnote.toml].")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _settings(config: Path | None, **sections):
    from artnote.config import load_settings

    return load_settings(config, overrides=sections)


def _err(message: str) -> None:
    typer.echo(message, err=True)


@models_app.command("tiny")
def models_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
    family: Annotated[str, typer.Option(help="llava or smolvlm.")] = "smolvlm",
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
) -> None:
    """Write a tiny RANDOM-weight model of a real architecture, for smoke tests offline."""
    from artnote.model.tiny import RANDOM_WEIGHTS_NOTE, build_tiny_model

    path = build_tiny_model(out, family, seed=seed)
    typer.echo(f"wrote a tiny {family} model to {path}")
    typer.echo(RANDOM_WEIGHTS_NOTE)


@app.command()
def selftest(
    json_out: JsonOpt = False,
    images: Annotated[
        Path | None, typer.Option(help="Folder of sample images [default: ../shared/art if present].")
    ] = None,
) -> None:
    """Build tiny models of each family offline and check every stage end to end."""
    from artnote.selftest import run_selftest

    folder = images or _default_art_dir()
    result = run_selftest(folder, progress=_err)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for family, checks in result["families"].items():
            for name, ok in checks.items():
                typer.echo(f"{family:8} {name:22} {'ok' if ok is True else ok}")
        typer.echo("all checks passed" if result["ok"] else "SOME CHECKS FAILED")
    raise typer.Exit(0 if result["ok"] else EXIT_ERROR)


def _default_art_dir() -> Path | None:
    env = os.environ.get("ARTNOTE_ART_DIR")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "art"
        if candidate.is_dir():
            return candidate
    return None


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
