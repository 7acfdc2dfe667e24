"""Losses, built from exactly the prompt pieces the scanner uses.

Text fields: cross-entropy on the answer tokens only (prompt and image masked),
averaged over each answer's tokens so that every sample weighs the same.
Emotion: the nine label words are scored as at scan time (sum of the label
tokens' log-probabilities after the emotion question); the loss is the
cross-entropy between softmax(scores) and the target distribution, which is the
KL term to an ArtEmis histogram (plus a constant) and plain CE for one label.
"""

from __future__ import annotations

from typing import Any

import torch

from artnote.emotions import EMOTIONS
from artnote.model import inputs, prompts
from artnote.model.families import inner_model, language_model
from artnote.model.load import LoadedModel
from trainer.data import Sample


class Objective:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.lm = language_model(self.model)
        self.head = self.model.get_output_embeddings()
        # The scanner's own prompt format: the same pieces, tokenized the same way.
        self.format = fmt = inputs.prompt_format(self.model, self.processor, loaded.family)
        self.prefix = fmt.parts("alt_text").prefix
        self.pad_id = self.tokenizer.pad_token_id or 0
        emotion = fmt.parts("emotion")
        self.emotion_suffix = fmt.suffix_ids(emotion)
        self.label_ids = [fmt.answer_ids(emotion, prompts.label_text(e)) for e in EMOTIONS]
        self._cache: dict[int, Any] = {}

    def answer_ids(self, sample: Sample) -> tuple[list[int], list[int]]:
        """(suffix ids, answer ids + end) for a text sample; the end is the format's
        (end of turn, or MiniGPT-4's `###`)."""
        parts = self.format.parts(sample.field, sample.dominant or None)
        answer = sample.text.strip()
        if sample.field == "explanation":
            lead = prompts.answer_lead("explanation", sample.dominant)
            if answer.startswith(lead):
                answer = answer[len(lead) :].strip()
        return self.format.suffix_ids(parts), self.format.target_ids(parts, answer)

    def loss(
        self, samples: list[Sample], images: list[Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the samples (each sample weighs the same)."""
        text = [i for i, s in enumerate(samples) if s.field != "emotion"]
        emo = [i for i, s in enumerate(samples) if s.field == "emotion"]
        total = torch.zeros((), device=self.loaded.device)
        stats: dict[str, float] = {}
        if text:
            lt = self.text_loss([samples[i] for i in text], [images[i] for i in text])
            total = total + lt * len(text)
            stats["text_loss"] = float(lt.detach())
        if emo:
            le = self.emotion_loss([samples[i] for i in emo], [images[i] for i in emo])
            total = total + le * len(emo)
            stats["emotion_loss"] = float(le.detach())
        return total / len(samples), stats

    # ---- pieces ---------------------------------------------------------------

    def _encoded(self, image: Any) -> dict[str, Any]:
        """The processor's output for one image's prefix, computed once per image."""
        key = id(image)
        if key not in self._cache:
            enc = self.format.encode_prefix(self.prefix, [image])
            self._cache[key] = (image, enc)  # keep the image alive so its id stays unique
        return self._cache[key][1]

    def _prefix_embeds(self, images: list[Any]):
        """Left-padded prefix embeddings with image features (projector gets gradients)."""
        inner = inner_model(self.model)
        vision_dtype = next(inner.get_submodule(self.loaded.family.vision).parameters()).dtype
        device = self.loaded.device
        rows = []
        for image in images:
            enc = self._encoded(image)
            pixels = {k: v.to(device) for k, v in enc.pixels.items()}
            pixels = {
                k: v.to(vision_dtype) if v.is_floating_point() else v for k, v in pixels.items()
            }
            features = inner.get_image_features(**pixels, return_dict=True).pooler_output
            features = [f.reshape(-1, f.shape[-1]) for f in features]
            ids = enc.input_ids.to(device)
            rows.append(inputs.embed_with_images(self.model, ids, enc.image_mask, features)[0])
        width = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            embeds[i, width - r.shape[0] :] = r
            mask[i, width - r.shape[0] :] = 1
        return embeds, mask

    def _forward(self, embeds, mask):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        )
        return self.head(out.last_hidden_state).float()

    def _extend(self, embeds, mask, tails: list[list[int]]):
        """Append per-row token tails (right padded) to prefix embeddings."""
        width = max(len(t) for t in tails)
        ids = torch.full((len(tails), width), self.pad_id, device=embeds.device)
        tail_mask = torch.zeros_like(ids)
        for r, t in enumerate(tails):
            ids[r, : len(t)] = torch.tensor(t)
            tail_mask[r, : len(t)] = 1
        embed = self.lm.get_input_embeddings()
        return torch.cat([embeds, embed(ids)], 1), torch.cat([mask, tail_mask], 1), ids, tail_mask

    def text_loss(self, samples: list[Sample], images: list[Any]) -> torch.Tensor:
        """Cross-entropy on the answer tokens, averaged per sample, then over samples."""
        embeds, mask = self._prefix_embeds(images)
        pieces = [self.answer_ids(s) for s in samples]
        tails = [suffix + answer for suffix, answer in pieces]
        embeds, mask, ids, tail_mask = self._extend(embeds, mask, tails)
        logits = self._forward(embeds, mask)
        start = embeds.shape[1] - ids.shape[1]
        labels = torch.full_like(ids, -100)
        for r, (suffix, answer) in enumerate(pieces):
            labels[r, len(suffix) : len(suffix) + len(answer)] = ids[
                r, len(suffix) : len(suffix) + len(answer)
            ]
        # logits at position p predict token p+1
        pred = logits[:, start - 1 : start - 1 + ids.shape[1]]
        per_token = torch.nn.functional.cross_entropy(
            pred.reshape(-1, pred.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(labels.shape)
        # Mean over each answer's tokens, then over samples: a long description weighs
        # as much as a short alt text, and the loss does not depend on the batching.
        counts = (labels != -100).sum(-1).clamp(min=1)
        return (per_token.sum(-1) / counts).mean()

    def emotion_scores(self, images: list[Any]) -> torch.Tensor:
        """(B, 9) label log-likelihoods, with gradients."""
        embeds, mask = self._prefix_embeds(images)
        n = len(EMOTIONS)
        embeds, mask = embeds.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        tails = [self.emotion_suffix + self.label_ids[k] for _ in images for k in range(n)]
        embeds, mask, ids, _ = self._extend(embeds, mask, tails)
        logp = torch.log_softmax(self._forward(embeds, mask), dim=-1)
        start = embeds.shape[1] - ids.shape[1]
        scores = []
        for r in range(len(tails)):
            k = r % n
            first = len(self.emotion_suffix)
            positions = torch.arange(first, first + len(self.label_ids[k]), device=ids.device)
            scores.append(logp[r, start - 1 + positions, ids[r, positions]].sum())
        return torch.stack(scores).view(len(images), n)

    def emotion_loss(self, samples: list[Sample], images: list[Any]) -> torch.Tensor:
        target = torch.tensor([s.emotions for s in samples], device=self.loaded.device)
        scores = self.emotion_scores(images)
        return -(target * torch.log_softmax(scores, dim=-1)).sum(-1).mean()
