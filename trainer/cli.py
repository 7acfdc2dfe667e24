"""`artnote finetune`: registered into artnote's CLI through the entry point
`artnote.commands` (pyproject.toml), so artnote never imports the trainer.

The options shared with artnote's commands come from artnote.cli_options.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from artnote.cli_options import CatalogOpt, ConfigOpt, ModelOpt


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
    app.command("eval")(eval_command)


def finetune(
    epochs: Annotated[
        int | None,
        typer.Option(metavar="N", min=1, help="Passes over the curated samples.", show_default="3"),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            metavar="X", help="Peak learning rate (greater than 0).", show_default="0.001"
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(metavar="N", min=1, help="Samples per forward pass.", show_default="4"),
    ] = None,
    grad_accum: Annotated[
        int | None,
        typer.Option(
            metavar="N", min=1, help="Forward passes per optimizer step.", show_default="1"
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="Seed for the split, the order and the adapters.", show_default="0"
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Name to register the adapter under.")
    ] = None,
    from_adapter: Annotated[
        str | None,
        typer.Option(
            metavar="NAME|DIR|latest",
            help="Start from this adapter (name, folder or 'latest'); its held-out images "
            "stay held out.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Checkpoint folder.",
            show_default="adapters/NAME beside a SQLite catalog, or in the cache directory",
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            metavar="default|artgpt4",
            help="Preset schedule: artgpt4 is the authors' stage 2 (lr 3e-5 to 1e-5, warm-up "
            "from 1e-6 over 200 steps, weight decay 0.05); flags given still win.",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue the run in --out (or adapters/NAME) from its last checkpoint, on the "
            "images it started with; needs --name or --out. Flags not given take the run's "
            "values; one given must equal it (but --checkpoint-every may change)."
        ),
    ] = False,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Optimizer steps between checkpoints.",
            show_default="50",
        ),
    ] = None,
    catalog: CatalogOpt = None,
    model: ModelOpt = None,
    device: Annotated[
        str | None, typer.Option(metavar="auto|cpu|cuda", help="Where training runs.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Train the ArtGPT-4 adapters on corrected and approved annotations, and register them.

    Without --model, the model whose annotations the curators corrected is trained."""
    # The hyperparameter flags default to None, so that a resumed run takes its own values
    # for those not given; the defaults in their help are Hyperparameters' (a test checks).
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise typer.BadParameter("must be a finite number greater than 0", param_hint="--lr")
    if resume and name is None and out is None:
        raise typer.BadParameter(
            "needs --name or --out: the run to continue (a new name would start a new run)",
            param_hint="--resume",
        )
    from artnote.catalog import open_catalog
    from artnote.config import load_settings
    from artnote.model.adapters import read_adapter_config
    from artnote.pipeline import resolve_adapter
    from trainer.data import curated_images, curated_model
    from trainer.finetune import finetune as run
    from trainer.finetune import resolve_hyperparameters

    settings = load_settings(
        config,
        overrides={"catalog": {"url": catalog}, "model": {"name": model, "device": device}},
    )
    cat = open_catalog(settings.catalog.url, create=False)
    rows = cat.curated()
    if model is None:
        settings.model.name = curated_model(rows, settings.model.name)
    name = name or time.strftime("adapter-%Y%m%d-%H%M%S")
    registered = cat.adapters()
    if any(a["name"] == name for a in registered):
        raise typer.BadParameter(
            f"an adapter named {name!r} exists; choose another --name", param_hint="--name"
        )
    out = (out or data_dir(settings.catalog.url) / "adapters" / name).resolve()
    _check_out(out, registered, resume)
    start_from, _ = resolve_adapter(cat, from_adapter)
    curated = curated_images(rows, cat, settings.prompt.use_records)
    given = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "seed": seed,
        "checkpoint_every": checkpoint_every,
    }
    hp = resolve_hyperparameters(
        {k: v for k, v in given.items() if v is not None},
        resume_from=out if resume else None,
        recipe=recipe,
    )
    result = run(
        curated,
        settings,
        hp,
        out,
        from_adapter=start_from,
        resume=resume,
        progress=not quiet and sys.stderr.isatty(),
    )
    adapter_config = read_adapter_config(result.final_dir)
    cat.register_adapter(
        name=name,
        path=str(result.final_dir),
        content_hash=adapter_config.content_hash,
        base_model=adapter_config.base_model,
        family=adapter_config.family,
        metrics=result.metrics,
        training_samples=result.samples,
    )
    losses = result.losses
    loss = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, " if losses else ""
    typer.echo(
        f"adapter {name!r}: {result.samples} samples, {result.steps} steps, {loss}"
        f"{result.trainable_parameters} trainable parameters, {result.seconds:.0f} s; "
        f"saved to {result.final_dir}",
        err=True,
    )
    for sha, why in sorted(result.left_out_images.items()):
        typer.echo(f"left out (image {sha[:12]}): {why}", err=True)
    if result.left_out:
        typer.echo(
            f"{result.left_out} image(s) curated since this run started were left out of it "
            "(a resumed run trains the images it started with); the next run will use them",
            err=True,
        )


def _check_out(out: Path, registered: list[dict], resume: bool) -> None:
    """Never write over a registered adapter, nor over a finished run unless resuming it."""
    for adapter in registered:
        path = Path(adapter["path"]).resolve()
        if path in (out, out / "final") or path in out.parents:
            raise typer.BadParameter(
                f"{out} holds the registered adapter {adapter['name']!r}; choose another --out",
                param_hint="--out",
            )
    if not resume and (out / "final").exists():
        raise typer.BadParameter(
            f"{out} already holds a finished adapter (final/); choose another --out, "
            "or --resume to finish that same run",
            param_hint="--out",
        )


def data_dir(catalog_url: str) -> Path:
    """artnote's data folder: beside a SQLite catalog, else (PostgreSQL) the cache folder."""
    from artnote.catalog.engine import catalog_url as parse
    from artnote.model.encoder import cache_dir

    url = parse(catalog_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).expanduser().resolve().parent
    return cache_dir()


def eval_command(
    adapter: Annotated[
        str | None,
        typer.Option(metavar="NAME|DIR|latest", help="Adapter to evaluate; none: the base model."),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            metavar="val|all|FILE",
            help="val: the adapter's held-out images; all: every curated image; FILE: one "
            "sha256 or image path per line.",
        ),
    ] = "val",
    batch_size: Annotated[
        int | None,
        typer.Option(
            metavar="N", min=1, help="Images per batch.", show_default="the adapter's, else 4"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    catalog: CatalogOpt = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Score a model (and adapter) on curated images, annotated as a scan would annotate them.

    BLEU-1..4, METEOR, ROUGE-L and CIDEr-D per field, emotion accuracy and KL; with
    --split val, the numbers the adapter's last validation wrote to its metrics.json."""
    import json

    from artnote.catalog import open_catalog
    from artnote.config import load_settings
    from trainer.evaluation_run import run_eval

    settings = load_settings(
        config, overrides={"catalog": {"url": catalog}, "model": {"name": model}}
    )
    cat = open_catalog(settings.catalog.url, create=False)
    metrics = run_eval(cat, settings, adapter, split, batch_size, model_given=model is not None)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
    else:
        from trainer.evaluate import format_table

        typer.echo(format_table(metrics))
