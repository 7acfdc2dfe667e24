"""What a fine-tuning run is made with: the hyperparameters, the recipes, the schedule.

The defaults suit a museum's few hundred corrections on a small model. The
`artgpt4` recipe is the authors' stage-2 schedule (MiniGPT-4's
LinearWarmupCosineLRScheduler): warm-up from 1e-6 over 200 steps to 3e-5, then
cosine down to 1e-5, weight decay 0.05. The cosine runs per step here, not per epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from trainer import checkpoint
from trainer.errors import TrainerError


@dataclass
class Hyperparameters:
    epochs: int = 3  # passes over the training samples
    lr: float = 1e-3  # peak learning rate (adapters are small: higher than full fine-tuning)
    batch_size: int = 4  # samples per forward pass
    grad_accum: int = 1  # forward passes per optimizer step
    warmup_fraction: float = 0.1  # share of steps with linear warm-up (if warmup_steps is 0)
    warmup_steps: int = 0  # steps of linear warm-up; 0: warmup_fraction of all steps
    warmup_start_lr: float = 0.0  # where the warm-up starts
    min_lr: float = 0.0  # where the cosine decay ends
    weight_decay: float = 0.05  # AdamW, as ArtGPT-4
    clip: float = 1.0  # gradient-norm clipping
    seed: int = 0  # data order, split and adapter initialisation
    val_fraction: float = 0.1  # images held out for validation (none below 4 images)
    checkpoint_every: int = 50  # optimizer steps between step-N/ checkpoints
    reduction: int = 4  # adapter bottleneck: hidden -> hidden/reduction
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA only)
    eval_generate: bool = True  # generate text on held-out images for BLEU/METEOR/ROUGE/CIDEr
    max_answer_tokens: int = 160  # an answer and its end token, at most (the authors' max_txt_len)


# Presets for --recipe: values a run takes unless a flag gives its own.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "artgpt4": {
        "lr": 3e-5,
        "min_lr": 1e-5,
        "warmup_steps": 200,
        "warmup_start_lr": 1e-6,
        "weight_decay": 0.05,
    },
}

# What --resume may change: neither changes a weight nor the order of the samples.
RESUMABLE_CHANGES = ("checkpoint_every", "eval_generate")


def resolve_hyperparameters(
    given: dict[str, Any], *, resume_from: Path | None = None, recipe: str | None = None
) -> Hyperparameters:
    """The hyperparameters of a run: those `given` (the flags a user typed), then, when
    resuming the run in `resume_from`, the ones its checkpoint was made with, then the
    recipe's, then the defaults. A given value that differs from the checkpoint's is
    refused by finetune(), so a resumed run is never silently changed, nor needs every
    flag repeated."""
    if recipe is not None and recipe not in RECIPES:
        raise TrainerError(f"unknown recipe {recipe!r}: use {' or '.join(RECIPES)}")
    stored: dict[str, Any] = {}
    last = checkpoint.resume_point(resume_from) if resume_from is not None else None
    if last is not None:
        names = {f.name for f in fields(Hyperparameters)}
        stored = {k: v for k, v in checkpoint.stored_hyperparameters(last).items() if k in names}
    return Hyperparameters(**{**RECIPES.get(recipe or "default", {}), **stored, **given})


def check_hyperparameters(hp: Hyperparameters) -> None:
    """Refuse numbers no run can use (the CLI refuses them first, as bad usage)."""
    whole = ("epochs", "batch_size", "grad_accum", "checkpoint_every", "reduction")
    for name in (*whole, "max_answer_tokens"):
        if not isinstance(getattr(hp, name), int) or getattr(hp, name) < 1:
            raise TrainerError(f"{flag(name)} must be a whole number of at least 1")
    if not isinstance(hp.warmup_steps, int) or hp.warmup_steps < 0:
        raise TrainerError("warmup_steps must be a whole number, 0 or more")
    if not (math.isfinite(hp.lr) and hp.lr > 0):
        raise TrainerError(f"--lr must be a finite number greater than 0, not {hp.lr}")
    for name in ("min_lr", "warmup_start_lr"):
        value = getattr(hp, name)
        if not (math.isfinite(value) and 0 <= value <= hp.lr):
            raise TrainerError(f"{name} must be between 0 and --lr ({hp.lr}), not {value}")
    if not 0 <= hp.val_fraction < 1:
        raise TrainerError(f"val_fraction must be at least 0 and below 1, not {hp.val_fraction}")
    if not 0 <= hp.warmup_fraction <= 1:
        raise TrainerError(f"warmup_fraction must be between 0 and 1, not {hp.warmup_fraction}")
    if not (math.isfinite(hp.weight_decay) and hp.weight_decay >= 0):
        raise TrainerError(f"weight_decay must be at least 0, not {hp.weight_decay}")
    if not (math.isfinite(hp.clip) and hp.clip > 0):
        raise TrainerError(f"clip must be greater than 0, not {hp.clip}")


def flag(name: str) -> str:
    cli = ("epochs", "lr", "batch_size", "grad_accum", "seed", "checkpoint_every")
    return f"--{name.replace('_', '-')}" if name in cli else name


def changed_since(stored: dict[str, Any], hp: Hyperparameters) -> list[str]:
    """The values that differ from a checkpoint's, as '--flag old (now new)'."""
    now = asdict(hp)
    return [
        f"{flag(k)} {stored[k]!r} (now {now[k]!r})"
        for k in now
        if k not in RESUMABLE_CHANGES and k in stored and stored[k] != now[k]
    ]


def learning_rate(step: int, total: int, hp: Hyperparameters) -> float:
    """Linear warm-up from warmup_start_lr to lr, then cosine decay to min_lr."""
    warmup = hp.warmup_steps or max(1, int(total * hp.warmup_fraction))
    if step < warmup:
        return hp.warmup_start_lr + (hp.lr - hp.warmup_start_lr) * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return hp.min_lr + (hp.lr - hp.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
