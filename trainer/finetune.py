"""The fine-tuning recipe, top to bottom: setup -> fit -> validate -> save_checkpoint.

ArtGPT-4's stage-2 idea on a museum's own curated annotations: only the
adapters, the layer norms of the trainable set and the projector learn.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from artnote import signals
from artnote.config import Settings
from artnote.emotions import EMOTIONS
from artnote.errors import ArtnoteError
from artnote.files import write_error
from artnote.model.adapters import (
    attach_adapters,
    count_trainable,
    load_adapter,
    read_adapter_config,
)
from artnote.model.load import LoadedModel, load_model
from trainer import checkpoint, history
from trainer.context import RunContext, float32_masters, make_context
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
from trainer.hyperparameters import (
    Hyperparameters,
    changed_since,
    check_hyperparameters,
    learning_rate,
    resolve_hyperparameters,
)
from trainer.validation import evaluate

__all__ = ["FinetuneResult", "Hyperparameters", "finetune", "resolve_hyperparameters"]


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
    encoded: int = 0  # images the frozen encoder ran on (the rest came from the feature cache)
    peak_decoded: int = 0  # most decoded images alive in the training process at once
    left_out_images: dict[str, str] = field(default_factory=dict)  # sha256 -> unreadable why


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
    """Train the adapters on `curated` and save them (final/, and step-N/ checkpoints).

    load_image: path -> picture, instead of the scanner's decoder (tests only).
    """
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
    loaded = load_model(settings.model)
    if from_adapter is not None:
        load_adapter(loaded.model, from_adapter, family=loaded.family, base_model=loaded.name)
    else:
        attach_adapters(loaded.model, reduction=hp.reduction)
    trainable = float32_masters(loaded, from_adapter)
    ctx = make_context(loaded, settings, hp.max_answer_tokens, load_image)
    optimizer = _optimizer(trainable, hp, loaded)
    per_epoch = -(-len(train) // (hp.batch_size * hp.grad_accum))
    total_steps = per_epoch * hp.epochs
    step, metrics, losses, epochs = 0, {}, [], []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, no space: one line
        raise write_error(out_dir, exc) from None
    if last is not None:
        load_adapter(loaded.model, last, family=loaded.family, base_model=loaded.name)
        checkpoint.load_optimizer_state(last, loaded, optimizer)
        resumed = checkpoint.read_state(last)
        step, metrics = resumed["step"], resumed.get("metrics", {})
        losses, epochs = resumed.get("losses", []), list(resumed.get("history", []))

    def save(folder: str) -> Path:
        state = {
            "step": step,
            "epoch": step // per_epoch,  # epochs completed
            "metrics": metrics,
            "history": epochs,
            "losses": losses,
            "hyperparameters": asdict(hp),
            "split": split.to_json(),
            "training_samples": {"count": len(train), "digest": sample_digest(train)},
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        }
        path = checkpoint.save_checkpoint(
            out_dir / folder,
            loaded,
            optimizer,
            hp,
            {**metrics, "history": epochs},
            state,
            extra=_extra(hp, train + val, metrics, split),
        )
        history.plot(path / "metrics.png", losses, epochs, per_epoch)
        return path

    bars = _Bars(hp.epochs, total_steps, step, per_epoch, progress)
    scaler = _scaler(loaded)
    if last is not None and scaler.is_enabled() and resumed.get("scaler"):
        scaler.load_state_dict(resumed["scaler"])  # the loss scale reached, for an exact resume
    # ---- fit
    loaded.model.train()
    with signals.deferred():  # a SIGTERM/SIGHUP ends the fit at a step boundary
        for epoch in range(step // per_epoch, hp.epochs):
            order = list(range(len(train)))
            random.Random(hp.seed * 1000 + epoch).shuffle(order)
            groups = [order[i : i + hp.batch_size] for i in range(0, len(order), hp.batch_size)]
            first = step - epoch * per_epoch
            stream = ctx.stream.batches(train, groups[first * hp.grad_accum :])
            for k in range(first, per_epoch):
                tick = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                micro = [next(stream) for _ in groups[k * hp.grad_accum : (k + 1) * hp.grad_accum]]
                micro = [(batch, prepared) for batch, prepared in micro if batch]  # images left out
                seen, step_loss = sum(len(batch) for batch, _ in micro), 0.0
                for batch, prepared in micro:
                    with ctx.autocast():
                        loss, _ = ctx.objective.loss(batch, prepared)
                    scaler.scale(loss * len(batch) / seen).backward()
                    step_loss += float(loss.detach()) * len(batch) / seen
                del micro
                if seen:  # else every image of the step was left out: the step changes nothing
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, hp.clip)
                    for g in optimizer.param_groups:
                        g["lr"] = learning_rate(step, total_steps, hp)
                    scaler.step(optimizer)
                    scaler.update()
                    losses.append(step_loss)
                step += 1
                bars.step(step_loss, seen / (time.perf_counter() - tick))
                # ---- validate: before a checkpoint that ends the epoch, or a run resumed
                # from that checkpoint would never validate this epoch
                if k == per_epoch - 1:
                    metrics = {"epoch": epoch + 1, "train_loss": _mean(losses[-per_epoch:])}
                    if val:
                        metrics.update(validate(ctx, val, hp))
                    epochs.append(metrics)
                    bars.epoch(metrics)
                saved = step % hp.checkpoint_every == 0 and step < total_steps
                if saved:
                    save(f"step-{step}")
                if on_step is not None:
                    on_step(step)
                received = signals.received()
                if received is not None and step < total_steps:
                    # A scheduler's SIGTERM (or SIGHUP): stop at this step boundary, after a
                    # checkpoint to resume from. A second signal would not wait for it.
                    where = out_dir / f"step-{step}"
                    if not saved:
                        save(where.name)
                    bars.close()
                    raise signals.Stopped(
                        received,
                        note=f"checkpoint {where} saved at step {step} of {total_steps}; "
                        "run the same command with --resume to continue",
                    )
    bars.close()
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
        encoded=ctx.stream.encoded,
        peak_decoded=ctx.stream.peak_live,
        left_out_images=dict(ctx.stream.failed),
    )


def validate(ctx: RunContext, val: list[Sample], hp: Hyperparameters) -> dict[str, Any]:
    """The held-out metrics, exactly as `artnote eval --split val` computes them."""
    return evaluate(
        val,
        objective=ctx.objective,
        stream=ctx.stream,
        annotator=ctx.annotator,
        decode=ctx.decode,
        batch_size=hp.batch_size,
        generate=hp.eval_generate,
        autocast=ctx.autocast,
    )


def _resume_point(out_dir: Path, hp: Hyperparameters) -> Path:
    """The checkpoint --resume continues from, made with these same hyperparameters."""
    last = checkpoint.resume_point(out_dir)
    if last is None:
        raise TrainerError(
            f"--resume: no checkpoint to resume in {out_dir} (none was completed); "
            "run without --resume to start"
        )
    changed = changed_since(checkpoint.stored_hyperparameters(last), hp)
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


def _scaler(loaded: LoadedModel) -> Any:
    """A gradient scaler: in use for an fp16 base on CUDA only (bf16 needs none)."""
    fp16_cuda = loaded.device.type == "cuda" and loaded.dtype == torch.float16
    return torch.amp.GradScaler(loaded.device.type, enabled=fp16_cuda)


class _Bars:
    """tqdm bars: epochs (with the last validation) and steps (loss, samples/s)."""

    def __init__(self, epochs: int, total: int, done: int, per_epoch: int, enabled: bool):
        from tqdm import tqdm

        options = {"file": sys.stderr, "disable": not enabled, "dynamic_ncols": True}
        self.epochs = tqdm(
            total=epochs, initial=done // per_epoch, desc="epochs", unit="epoch", **options
        )
        self.steps = tqdm(total=total, initial=done, desc="steps", unit="step", **options)

    def step(self, loss: float, samples_per_s: float) -> None:
        self.steps.update(1)
        self.steps.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.1f}")

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.epochs.update(1)
        shown = {k: metrics[k] for k in ("val_loss", "emotion_accuracy") if k in metrics}
        self.epochs.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})

    def close(self) -> None:
        self.steps.close()
        self.epochs.close()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


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
