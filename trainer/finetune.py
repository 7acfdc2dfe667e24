"""The fine-tuning recipe, top to bottom: setup -> fit -> validate -> save_checkpoint.

ArtGPT-4's stage-2 idea on a museum's own curated annotations: only the
adapters, the layer norms of the trainable set and the projector learn.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from artnote.config import Settings
from artnote.emotions import EMOTIONS
from artnote.errors import ArtnoteError
from artnote.model.adapters import attach_adapters, count_trainable, load_adapter, mark_trainable
from artnote.model.load import LoadedModel, load_model
from trainer import checkpoint
from trainer.data import CuratedImage, Sample, samples_from, split_by_image
from trainer.evaluate import emotion_metrics, text_metrics
from trainer.objectives import Objective


@dataclass
class Hyperparameters:
    epochs: int = 3  # passes over the training samples
    lr: float = 1e-3  # peak learning rate (adapters are small: higher than full fine-tuning)
    batch_size: int = 4  # samples per forward pass
    grad_accum: int = 1  # forward passes per optimizer step
    warmup_fraction: float = 0.1  # share of steps with linear warm-up, then cosine decay to 0
    weight_decay: float = 0.05  # AdamW, as ArtGPT-4
    clip: float = 1.0  # gradient-norm clipping
    seed: int = 0  # data order, split and adapter initialisation
    val_fraction: float = 0.1  # images held out for validation (none below 4 images)
    checkpoint_every: int = 50  # optimizer steps between step-N/ checkpoints
    reduction: int = 4  # adapter bottleneck: hidden -> hidden/reduction
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA only)
    eval_generate: bool = True  # generate text on held-out images for BLEU/ROUGE/CIDEr


@dataclass
class FinetuneResult:
    final_dir: Path
    steps: int
    samples: int
    trainable_parameters: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class _Stop(Exception):
    """Raised by tests through `on_step` to simulate a crash after a checkpoint."""


def finetune(
    curated: list[CuratedImage],
    settings: Settings,
    hp: Hyperparameters,
    out_dir: Path,
    *,
    from_adapter: Path | None = None,
    resume: bool = False,
    load_image: Callable[[str], Any] | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    start = time.perf_counter()
    # ---- setup
    samples = samples_from(curated)
    if not samples:
        raise ArtnoteError("nothing to learn from: correct or approve some annotations first")
    train, val = split_by_image(samples, hp.val_fraction, hp.seed)
    torch.manual_seed(hp.seed)
    loaded = _load_for_training(settings)
    if from_adapter is not None:
        load_adapter(loaded.model, from_adapter, family=loaded.family, base_model=loaded.name)
    else:
        attach_adapters(loaded.model, reduction=hp.reduction)
    mark_trainable(loaded.model, loaded.family)
    trainable = [p for p in loaded.model.parameters() if p.requires_grad]
    objective = Objective(loaded)
    optimizer = _optimizer(trainable, hp, loaded)
    per_epoch = math.ceil(len(train) / (hp.batch_size * hp.grad_accum))
    total_steps = per_epoch * hp.epochs
    step, metrics, losses = 0, {}, []
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        last = checkpoint.latest_checkpoint(out_dir)
        if last is not None:
            load_adapter(loaded.model, last, family=loaded.family, base_model=loaded.name)
            checkpoint.load_optimizer_state(last, loaded, optimizer)
            state = checkpoint.read_state(last)
            step, metrics, losses = state["step"], state.get("metrics", {}), state.get("losses", [])
    if load_image is None:
        load_image = _scan_decoder(loaded, settings)
    images: dict[str, Any] = {}

    def image(sample: Sample) -> Any:
        if sample.image_path not in images:
            images[sample.image_path] = load_image(sample.image_path)
        return images[sample.image_path]

    bar = _bar(total_steps, step, progress)
    autocast = _autocast(loaded)
    # ---- fit
    loaded.model.train()
    for epoch in range(step // per_epoch, hp.epochs):
        order = list(range(len(train)))
        random.Random(hp.seed * 1000 + epoch).shuffle(order)
        groups = [order[i : i + hp.batch_size] for i in range(0, len(order), hp.batch_size)]
        for k in range(step - epoch * per_epoch, per_epoch):
            tick = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            micro = groups[k * hp.grad_accum : (k + 1) * hp.grad_accum]
            seen, step_loss = sum(len(g) for g in micro), 0.0
            for group in micro:
                batch = [train[i] for i in group]
                with autocast:
                    loss, _ = objective.loss(batch, [image(s) for s in batch])
                (loss * len(group) / seen).backward()
                step_loss += float(loss.detach()) * len(group) / seen
            torch.nn.utils.clip_grad_norm_(trainable, hp.clip)
            for g in optimizer.param_groups:
                g["lr"] = _lr(step, total_steps, hp)
            optimizer.step()
            step += 1
            losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(
                loss=f"{step_loss:.4f}", samples_s=f"{seen / (time.perf_counter() - tick):.1f}"
            )
            if step % hp.checkpoint_every == 0 and step < total_steps:
                state = {"step": step, "epoch": epoch, "metrics": metrics, "losses": losses}
                checkpoint.save_checkpoint(
                    out_dir / f"step-{step}",
                    loaded,
                    optimizer,
                    hp,
                    metrics,
                    state,
                    extra=_extra(hp, samples, metrics),
                )
            if on_step is not None:
                on_step(step)
        # ---- validate
        if val:
            loaded.model.eval()
            metrics = {"epoch": epoch + 1, **validate(loaded, objective, val, image, hp)}
            loaded.model.train()
    bar.close()
    loaded.model.eval()
    # ---- save
    state = {"step": step, "epoch": hp.epochs, "metrics": metrics, "losses": losses}
    metrics = {**metrics, "final_train_loss": losses[-1] if losses else None}
    final = checkpoint.save_checkpoint(
        out_dir / "final", loaded, optimizer, hp, metrics, state, extra=_extra(hp, samples, metrics)
    )
    return FinetuneResult(
        final_dir=final,
        steps=step,
        samples=len(samples),
        trainable_parameters=count_trainable(loaded.model),
        losses=losses,
        metrics=metrics,
        seconds=time.perf_counter() - start,
    )


def validate(
    loaded: LoadedModel, objective: Objective, val: list[Sample], image, hp
) -> dict[str, Any]:
    from artnote.model.annotate import Annotator

    out: dict[str, Any] = {}
    with torch.no_grad():
        losses = [float(objective.loss([s], [image(s)])[0]) for s in val]
    out["val_loss"] = sum(losses) / len(losses)
    emo = [s for s in val if s.field == "emotion"]
    annotator = Annotator(loaded)
    if emo:
        scores = annotator.emotion_logliks([image(s) for s in emo])
        log_probs = torch.log_softmax(scores.double(), dim=-1).tolist()
        out.update(emotion_metrics(log_probs, [list(s.emotions) for s in emo]))
    text = [s for s in val if s.field in ("alt_text", "description")]
    if text and hp.eval_generate:
        generated = annotator.annotate([image(s) for s in text])
        out.update(
            text_metrics(
                [getattr(a, s.field) for a, s in zip(generated, text, strict=True)],
                [s.text for s in text],
            )
        )
    return out


def _scan_decoder(loaded: LoadedModel, settings: Settings) -> Callable[[str], Any]:
    """Decode exactly as `artnote scan` does, so training sees the pixels scanning sees."""
    from artnote.images import decode_image
    from artnote.model.inputs import input_size

    size = input_size(loaded.processor)

    def load(path: str) -> Any:
        return decode_image(Path(path), max_pixels=settings.scan.max_pixels, target_size=size).image

    return load


def _load_for_training(settings: Settings) -> LoadedModel:
    model_settings = copy.copy(settings.model)
    if model_settings.quantization == "none":
        # Train in fp32 (bf16 autocast on CUDA): adapters start at zero and need precision.
        model_settings.dtype = "float32"
    return load_model(model_settings)


def _optimizer(params, hp: Hyperparameters, loaded: LoadedModel):
    if hp.optimizer == "adamw8bit":
        if loaded.device.type != "cuda":
            raise ArtnoteError("--optimizer adamw8bit needs a CUDA GPU (bitsandbytes); use adamw")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer != "adamw":
        raise ArtnoteError(f"unknown optimizer {hp.optimizer!r}: use adamw or adamw8bit")
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


def _lr(step: int, total: int, hp: Hyperparameters) -> float:
    warmup = max(1, int(total * hp.warmup_fraction))
    if step < warmup:
        return hp.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return hp.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _autocast(loaded: LoadedModel):
    import contextlib

    if loaded.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _bar(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        desc="finetune",
        unit="step",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
    )


def _extra(hp: Hyperparameters, samples: list[Sample], metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "hyperparameters": asdict(hp),
        "training_samples": len(samples),
        "fields": sorted({s.field for s in samples}),
        "emotions": list(EMOTIONS),
        "metrics": metrics,
    }
