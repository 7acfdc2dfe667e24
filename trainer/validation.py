"""Held-out evaluation: the one function behind finetune's validation and `artnote eval`.

On a set of curated samples, grouped by image and taken in batches:
- val_loss: the training objective (the feature cache's features), weighted per sample;
- the scanner's own path on the decoded images (Annotator: packed emotion scoring and
  batched decoding, the scan's encoder): emotion accuracy, cross-entropy and KL to the
  curated distribution, and per field (alt text, description, explanation) BLEU-1..4,
  METEOR, ROUGE-L and CIDEr-D against every reference (trainer.evaluate).

Nothing is kept between batches. The same samples, model, adapter, encoder and batch
size give the same numbers, which is what lets `artnote eval` reproduce them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from artnote.errors import ArtnoteError
from trainer.data import Sample
from trainer.evaluate import emotion_metrics, field_metrics
from trainer.objectives import without_lead

TEXT_FIELDS = ("alt_text", "description", "explanation")


def evaluate(
    samples: Sequence[Sample],
    *,
    objective: Any,
    stream: Any,
    annotator: Any,
    decode: Callable[[str], Any],
    batch_size: int,
    generate: bool = True,
    autocast: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """`autocast`: the training forward's precision context (a bf16 base's float32
    masters need it); none on a float32 base."""
    import contextlib

    import torch

    samples = sorted(samples, key=lambda s: (s.sha256, s.field))
    out: dict[str, Any] = {"images": len({s.sha256 for s in samples})}
    if not samples:
        return out
    model = objective.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (autocast or contextlib.nullcontext)():
            groups = [
                list(range(i, min(i + batch_size, len(samples))))
                for i in range(0, len(samples), batch_size)
            ]
            total, counted = 0.0, 0
            for batch, prepared in stream.batches(samples, groups):
                if batch:  # else its images could not be read (stream.failed says why)
                    total += float(objective.loss(batch, prepared)[0]) * len(batch)
                    counted += len(batch)
            out["val_loss"] = total / counted if counted else None
            out.update(_scanner_metrics(samples, annotator, decode, batch_size, generate))
    finally:
        model.train(was_training)
    return out


def _scanner_metrics(
    samples: Sequence[Sample],
    annotator: Any,
    decode: Callable[[str], Any],
    batch_size: int,
    generate: bool,
) -> dict[str, Any]:
    import torch

    by_image: dict[str, list[Sample]] = {}
    for s in samples:
        by_image.setdefault(s.sha256, []).append(s)
    wanted = [
        sha
        for sha, group in by_image.items()
        if any(s.field == "emotion" for s in group)
        or (generate and any(s.field in TEXT_FIELDS for s in group))
    ]
    log_probs, targets = [], []
    per_field: dict[str, tuple[list[str], list[list[str]]]] = {f: ([], []) for f in TEXT_FIELDS}
    for start in range(0, len(wanted), batch_size):
        shas, pictures, contexts = [], [], []
        for sha in wanted[start : start + batch_size]:
            try:
                pictures.append(decode(by_image[sha][0].image_path))
                shas.append(sha)
                contexts.append(by_image[sha][0].context)  # grounded: the scan's prompts
            except (ArtnoteError, OSError):  # left out, as the stream leaves it out
                continue
        if not shas:
            continue
        if generate:
            annotations = annotator.annotate(pictures, contexts)
            scores = torch.tensor([a.extra["emotion_loglik"] for a in annotations])
        else:
            annotations = [None] * len(shas)
            scores = annotator.emotion_logliks(pictures, contexts).cpu()
        del pictures
        dists = torch.log_softmax(scores.double(), dim=-1).tolist()
        for sha, annotation, dist in zip(shas, annotations, dists, strict=True):
            for s in by_image[sha]:
                if s.field == "emotion":
                    log_probs.append(dist)
                    targets.append(list(s.emotions))
                elif annotation is not None and s.field in TEXT_FIELDS:
                    candidate = getattr(annotation, s.field)
                    refs = list(s.refs())
                    if s.field == "explanation":  # the lead is the prompt's, not the model's
                        candidate, refs = without_lead(candidate), [without_lead(r) for r in refs]
                    per_field[s.field][0].append(candidate)
                    per_field[s.field][1].append(refs)
    out: dict[str, Any] = {}
    if targets:
        out.update(emotion_metrics(log_probs, targets))
    if generate:
        fields = field_metrics({f: v for f, v in per_field.items() if v[0]})
        out.update({f: m for f, m in fields.items() if m})
    return out
