"""`artnote eval`: choose the images and the model, then run trainer.validation.evaluate
exactly as finetune's validation does (same samples, batch size and encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from artnote.config import Settings
from trainer.data import Sample, curated_images, curated_model, samples_from
from trainer.errors import TrainerError

SPLITS = ("val", "all")


def run_eval(
    catalog: Any,
    settings: Settings,
    adapter: str | None,
    split: str,
    batch_size: int | None,
    *,
    model_given: bool = False,
) -> dict[str, Any]:
    from artnote.model.adapters import load_adapter, read_adapter_config
    from artnote.model.load import load_model
    from artnote.pipeline import resolve_adapter
    from trainer.context import float32_masters, make_context
    from trainer.hyperparameters import Hyperparameters
    from trainer.validation import evaluate

    rows = catalog.curated()
    samples = samples_from(curated_images(rows, catalog, settings.prompt.use_records))
    folder, name = resolve_adapter(catalog, adapter)
    stored: dict[str, Any] = {}
    config = None
    if folder is not None:
        config = read_adapter_config(folder)
        stored = dict(config.extra.get("hyperparameters") or {})
    chosen = choose_samples(samples, split, config)
    if not chosen:
        raise TrainerError(f"--split {split}: no curated samples to evaluate")
    if not model_given:
        configured = settings.model.name
        settings.model.name = config.base_model if config else curated_model(rows, configured)
    defaults = Hyperparameters()
    size = batch_size or int(stored.get("batch_size", defaults.batch_size))
    max_answer = int(stored.get("max_answer_tokens", defaults.max_answer_tokens))
    loaded = load_model(settings.model)
    if folder is not None:
        load_adapter(loaded.model, folder, family=loaded.family, base_model=loaded.name)
        # As finetune validated: the adapter's float32 values, the forward in autocast.
        float32_masters(loaded, folder)
    ctx = make_context(loaded, settings, max_answer)
    metrics = evaluate(
        chosen,
        objective=ctx.objective,
        stream=ctx.stream,
        annotator=ctx.annotator,
        decode=ctx.decode,
        batch_size=size,
        generate=True,
        autocast=ctx.autocast,
    )
    return {"model": loaded.name, "adapter": name, "split": split, **metrics}


def choose_samples(samples: list[Sample], split: str, config: Any) -> list[Sample]:
    """val: the adapter's held-out images; all: every sample; else a file of sha256s or paths."""
    if split == "all":
        return samples
    if split == "val":
        recorded = (config.extra.get("split") or {}).get("validation") if config else None
        if not isinstance(recorded, list):
            raise TrainerError(
                "--split val needs an adapter that recorded its held-out images (--adapter); "
                "or use --split all or --split FILE"
            )
        held = set(recorded)
        return [s for s in samples if s.sha256 in held]
    path = Path(split)
    if not path.is_file():
        raise TrainerError(f"--split must be val, all, or a file of sha256s or paths: not {split}")
    try:
        wanted = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainerError(f"cannot read {path}: {exc}") from None
    wanted = [w for w in wanted if w and not w.startswith("#")]
    by_key = {s.sha256: s.sha256 for s in samples}
    by_key.update({str(Path(s.image_path).resolve()): s.sha256 for s in samples})
    chosen, unknown = set(), []
    for w in wanted:
        key = w.lower() if len(w) == 64 else str(Path(w).expanduser().resolve())
        if key in by_key:
            chosen.add(by_key[key])
        else:
            unknown.append(w)
    if unknown:
        raise TrainerError(
            f"{path}: {len(unknown)} line(s) name no curated image, e.g. {unknown[0]!r}"
        )
    return [s for s in samples if s.sha256 in chosen]
