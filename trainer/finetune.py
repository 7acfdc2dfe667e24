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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from artnote.config import Settings
from artnote.emotions import EMOTIONS
from artnote.errors import ArtnoteError
from artnote.model.adapters import (
    attach_adapters,
    count_trainable,
    load_adapter,
    mark_trainable,
    read_adapter_config,
)
from artnote.model.load import LoadedModel, load_model
from trainer import checkpoint
from trainer.data import (
    CuratedImage,
    Sample,
    Split,
    sample_digest,
    samples_from,
    split_by_image,
    split_keeping,
)
from trainer.errors import TrainerError
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
    left_out: int = 0  # images curated after a resumed run started: for the next run


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
    # ---- setup: everything that can be refused is refused before anything is loaded or saved
    check_hyperparameters(hp)
    samples = samples_from(curated)
    if not samples:
        raise ArtnoteError("nothing to learn from: correct or approve some annotations first")
    last = _resume_point(out_dir, hp) if resume else None
    if not resume and (out_dir / "final").exists():
        raise TrainerError(
            f"{out_dir} already holds a finished adapter (final/); choose another --out, "
            "or --resume to finish that same run"
        )
    train, val, left_out = _split(samples, hp, last, from_adapter)
    split = Split.of(train, val)
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

    def save(folder: str) -> Path:
        state = {
            "step": step,
            "epoch": step // per_epoch,  # epochs completed
            "metrics": metrics,
            "losses": losses,
            "hyperparameters": asdict(hp),
            "split": split.to_json(),
            "training_samples": {"count": len(train), "digest": sample_digest(train)},
        }
        return checkpoint.save_checkpoint(
            out_dir / folder,
            loaded,
            optimizer,
            hp,
            metrics,
            state,
            extra=_extra(hp, train + val, metrics, split),
        )

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
            # ---- validate: before a checkpoint that ends the epoch, or a run resumed
            # from that checkpoint would never validate this epoch
            if k == per_epoch - 1 and val:
                loaded.model.eval()
                metrics = {"epoch": epoch + 1, **validate(loaded, objective, val, image, hp)}
                loaded.model.train()
            if step % hp.checkpoint_every == 0 and step < total_steps:
                save(f"step-{step}")
            if on_step is not None:
                on_step(step)
    bar.close()
    loaded.model.eval()
    # ---- save
    metrics = {**metrics, "final_train_loss": losses[-1] if losses else None}
    final = save("final")
    return FinetuneResult(
        final_dir=final,
        steps=step,
        samples=len(train) + len(val),
        trainable_parameters=count_trainable(loaded.model),
        losses=losses,
        metrics=metrics,
        seconds=time.perf_counter() - start,
        left_out=left_out,
    )


# What --resume may change: neither changes a weight nor the order of the samples.
RESUMABLE_CHANGES = ("checkpoint_every", "eval_generate")


def resolve_hyperparameters(
    given: dict[str, Any], *, resume_from: Path | None = None
) -> Hyperparameters:
    """The hyperparameters of a run: those `given` (the flags a user typed), then, when
    resuming the run in `resume_from`, the ones its checkpoint was made with, then the
    defaults. A given value that differs from the checkpoint's is refused by finetune(),
    so a resumed run is never silently changed, nor needs every flag repeated."""
    stored: dict[str, Any] = {}
    last = checkpoint.resume_point(resume_from) if resume_from is not None else None
    if last is not None:
        names = {f.name for f in fields(Hyperparameters)}
        stored = {k: v for k, v in checkpoint.stored_hyperparameters(last).items() if k in names}
    return Hyperparameters(**{**stored, **given})


def check_hyperparameters(hp: Hyperparameters) -> None:
    """Refuse numbers no run can use (the CLI refuses them first, as bad usage)."""
    for name in ("epochs", "batch_size", "grad_accum", "checkpoint_every", "reduction"):
        if not isinstance(getattr(hp, name), int) or getattr(hp, name) < 1:
            raise TrainerError(f"{_flag(name)} must be a whole number of at least 1")
    if not (math.isfinite(hp.lr) and hp.lr > 0):
        raise TrainerError(f"--lr must be a finite number greater than 0, not {hp.lr}")
    if not 0 <= hp.val_fraction < 1:
        raise TrainerError(f"val_fraction must be at least 0 and below 1, not {hp.val_fraction}")
    if not 0 <= hp.warmup_fraction <= 1:
        raise TrainerError(f"warmup_fraction must be between 0 and 1, not {hp.warmup_fraction}")
    if not (math.isfinite(hp.weight_decay) and hp.weight_decay >= 0):
        raise TrainerError(f"weight_decay must be at least 0, not {hp.weight_decay}")
    if not (math.isfinite(hp.clip) and hp.clip > 0):
        raise TrainerError(f"clip must be greater than 0, not {hp.clip}")


def _flag(name: str) -> str:
    cli = ("epochs", "lr", "batch_size", "grad_accum", "seed", "checkpoint_every")
    return f"--{name.replace('_', '-')}" if name in cli else name


def _resume_point(out_dir: Path, hp: Hyperparameters) -> Path:
    """The checkpoint --resume continues from, made with these same hyperparameters."""
    last = checkpoint.resume_point(out_dir)
    if last is None:
        raise TrainerError(
            f"--resume: no checkpoint to resume in {out_dir} (none was completed); "
            "run without --resume to start"
        )
    stored = checkpoint.stored_hyperparameters(last)
    now = asdict(hp)
    changed = [
        f"{_flag(k)} {stored[k]!r} (now {now[k]!r})"
        for k in now
        if k not in RESUMABLE_CHANGES and k in stored and stored[k] != now[k]
    ]
    if changed:
        raise TrainerError(
            f"--resume: {last} was made with {', '.join(changed)}; resume with the same "
            "values, or choose another --out to start a new run"
        )
    return last


def _split(
    samples: list[Sample], hp: Hyperparameters, last: Path | None, parent: Path | None
) -> tuple[list[Sample], list[Sample], int]:
    """(train, val, images left out). A resumed run keeps its own split (images curated
    since it started are left out, so it ends as it would have); a run from a parent
    adapter keeps the parent's (new images are split among themselves); else a fresh split."""
    earlier, state = None, {}
    if last is not None:
        state = checkpoint.read_state(last)
        earlier = Split.from_json(state.get("split"))
        new_images = "leave_out"
    elif parent is not None:
        earlier = Split.from_json(read_adapter_config(parent).extra.get("split"))
        new_images = "split"
    if earlier is None:  # no split recorded (a checkpoint or an adapter of an older trainer)
        train, val = split_by_image(samples, hp.val_fraction, hp.seed)
        left_out = 0
    else:
        train, val, left_out = split_keeping(samples, earlier, hp.val_fraction, hp.seed, new_images)
    stored = state.get("training_samples")
    if isinstance(stored, dict) and stored.get("digest") != sample_digest(train):
        # Fields of the run's own images were corrected or withdrawn since it started: the
        # steps already taken were over other samples, so it cannot end as it would have.
        raise TrainerError(
            f"--resume: the run's training images now give {len(train)} samples, not the "
            f"{stored.get('count')} it started with (fields corrected or withdrawn since); "
            "start a new run: another --out, or no --resume"
        )
    if not train:
        raise TrainerError(
            "nothing to train on: every curated image is held out for validation "
            "(correct or approve more images)"
        )
    return train, val, left_out


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
    # No weight decay on norm gains and biases (ndim < 2): decay pulls a gain towards 0,
    # not towards its pretrained value, and would scale the layer's output down.
    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": hp.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if hp.optimizer == "adamw8bit":
        if loaded.device.type != "cuda":
            raise ArtnoteError("--optimizer adamw8bit needs a CUDA GPU (bitsandbytes); use adamw")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=hp.lr)
    if hp.optimizer != "adamw":
        raise ArtnoteError(f"unknown optimizer {hp.optimizer!r}: use adamw or adamw8bit")
    return torch.optim.AdamW(groups, lr=hp.lr)


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


def _extra(
    hp: Hyperparameters, samples: list[Sample], metrics: dict[str, Any], split: Split
) -> dict[str, Any]:
    return {
        "hyperparameters": asdict(hp),
        "training_samples": len(samples),
        "fields": sorted({s.field for s in samples}),
        "emotions": list(EMOTIONS),
        "metrics": metrics,
        "split": split.to_json(),  # the next round from this adapter keeps it (--from-adapter)
    }
