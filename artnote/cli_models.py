"""Commands about models rather than collections: `artnote models tiny`, `artnote models
convert-artgpt4` and `artnote selftest`. Registered into artnote.cli's app."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from artnote.cli_options import JsonOpt

EXIT_ERROR = 1


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    models_app.command("tiny")(models_tiny)
    models_app.command("convert-artgpt4")(models_convert_artgpt4)
    app.command("selftest")(selftest)


def models_tiny(
    out: Annotated[Path, typer.Argument(metavar="DIR", help="Folder to write the model to.")],
    family: Annotated[
        str, typer.Option(metavar="llava|smolvlm|artgpt4", help="The architecture to build.")
    ] = "smolvlm",
    seed: Annotated[int, typer.Option(metavar="N", help="Seed for the random weights.")] = 0,
    force: Annotated[
        bool,
        typer.Option(help="Write into DIR even if it holds something other than a tiny model."),
    ] = False,
) -> None:
    """Write a tiny RANDOM-weight model of a real architecture, for smoke tests offline."""
    from artnote.model.tiny import RANDOM_WEIGHTS_NOTE, build_tiny_model

    path = build_tiny_model(out, family, seed=seed, force=force)
    typer.echo(f"wrote a tiny {family} model to {path}")
    typer.echo(RANDOM_WEIGHTS_NOTE)


def models_convert_artgpt4(
    checkpoint: Annotated[
        Path,
        typer.Option(
            metavar="FILE",
            help="The authors' ArtGPT-4.pth (or a MiniGPT-4 checkpoint: projection only).",
        ),
    ],
    llm: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="The Vicuna the checkpoint was trained on (Hugging Face folder, safetensors): "
            "Vicuna-13B v0 for ArtGPT-4.",
        ),
    ],
    blip2: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="BLIP-2 FlanT5-XXL (Salesforce/blip2-flan-t5-xxl, safetensors): its vision "
            "model and Q-Former are used; its T5 is never read.",
        ),
    ],
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="A new or empty folder: gets model/ and adapter/.")
    ],
    json_out: JsonOpt = False,
) -> None:
    """Convert the authors' released ArtGPT-4 checkpoint into a model folder and an adapter."""
    from artnote.model.convert_artgpt4 import convert_artgpt4

    report = convert_artgpt4(
        checkpoint, llm, blip2, out, progress=lambda line: typer.echo(line, err=True)
    )
    if json_out:
        typer.echo(json.dumps(report.as_dict()))
        return
    typer.echo(f"converted {len(report.converted)} tensors ({report.kind}) into {out}")
    if report.skipped_buffers:
        typer.echo(f"skipped {len(report.skipped_buffers)} recomputed buffers")
    for key in report.unknown_keys:
        typer.echo(f"not used: {key}")
    scan = f"artnote scan FOLDER --model {report.model_dir}"
    typer.echo(scan + (f" --adapter {report.adapter_dir}" if report.adapter_dir else ""))


def selftest(
    json_out: JsonOpt = False,
    images: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Folder of sample images (default: the paintings the tests carry)."
        ),
    ] = None,
) -> None:
    """Build tiny models of each family offline and check every stage end to end."""
    from artnote.selftest import run_selftest

    folder = images or _default_art_dir()
    result = run_selftest(folder, progress=lambda line: typer.echo(line, err=True))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for family, checks in result["families"].items():
            for name, ok in checks.items():
                typer.echo(f"{family:8} {name:22} {'ok' if ok is True else ok}")
        typer.echo("all checks passed" if result["ok"] else "SOME CHECKS FAILED")
    raise typer.Exit(0 if result["ok"] else EXIT_ERROR)


def _default_art_dir() -> Path | None:
    """$ARTNOTE_ART_DIR, else the paintings a checkout's tests carry, else ../shared/art."""
    env = os.environ.get("ARTNOTE_ART_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1]
    for candidate in (checkout / "tests" / "fixtures" / "art", checkout.parent / "shared" / "art"):
        if candidate.is_dir():
            return candidate
    return None
