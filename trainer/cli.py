"""`artnote finetune`: registered into artnote's CLI through the entry point
`artnote.commands` (pyproject.toml), so artnote never imports the trainer."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)


def finetune(
    epochs: Annotated[int, typer.Option(help="Passes over the curated samples.")] = 3,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Forward passes per optimizer step.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for the split, the order and the adapters.")] = 0,
    name: Annotated[str | None, typer.Option(help="Name to register the adapter under.")] = None,
    from_adapter: Annotated[
        str | None, typer.Option(help="Start from this adapter (name, folder or 'latest').")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Checkpoint folder [default: adapters/NAME].")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the last step-N checkpoint in --out.")
    ] = False,
    checkpoint_every: Annotated[
        int, typer.Option(help="Optimizer steps between checkpoints.")
    ] = 50,
    catalog: Annotated[
        str | None, typer.Option(help="Catalog path or URL.", envvar="ARTNOTE_CATALOG")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Hub id or local model folder.", envvar="ARTNOTE_MODEL")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train the ArtGPT-4 adapters on corrected and approved annotations, and register them."""
    from artnote.catalog import open_catalog
    from artnote.config import load_settings
    from artnote.model.adapters import read_adapter_config
    from artnote.pipeline import resolve_adapter
    from trainer.data import CuratedImage
    from trainer.finetune import Hyperparameters
    from trainer.finetune import finetune as run

    settings = load_settings(
        overrides={"catalog": {"url": catalog}, "model": {"name": model, "device": device}}
    )
    cat = open_catalog(settings.catalog.url)
    name = name or time.strftime("adapter-%Y%m%d-%H%M%S")
    if any(a["name"] == name for a in cat.adapters()):
        raise typer.BadParameter(
            f"an adapter named {name!r} exists; choose another --name", param_hint="--name"
        )
    start_from, _ = resolve_adapter(cat, from_adapter)
    curated = [
        CuratedImage(
            c["path"],
            c["sha256"],
            alt_text=c.get("alt_text"),
            description=c.get("description"),
            explanation=c.get("explanation"),
            emotions=c.get("emotions"),
            dominant_emotion=c.get("dominant_emotion"),
        )
        for c in cat.curated()
    ]
    hp = Hyperparameters(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seed=seed,
        checkpoint_every=checkpoint_every,
    )
    out = (out or Path("adapters") / name).resolve()
    result = run(
        curated,
        settings,
        hp,
        out,
        from_adapter=start_from,
        resume=resume,
        progress=not quiet and sys.stderr.isatty(),
    )
    config = read_adapter_config(result.final_dir)
    cat.register_adapter(
        name=name,
        path=str(result.final_dir),
        content_hash=config.content_hash,
        base_model=config.base_model,
        family=config.family,
        metrics=result.metrics,
        training_samples=result.samples,
    )
    losses = result.losses
    typer.echo(
        f"adapter {name!r}: {result.samples} samples, {result.steps} steps, "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, {result.trainable_parameters} trainable "
        f"parameters, {result.seconds:.0f} s; saved to {result.final_dir}",
        err=True,
    )
