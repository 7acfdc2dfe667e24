"""Losses, built from exactly the prompt pieces the scanner uses.

Text fields: cross-entropy on the answer tokens only (prompt and image masked),
averaged over each answer's tokens so that every sample weighs the same.
Emotion: the nine label words are scored as at scan time (sum of the label
tokens' log-probabilities after the emotion question); the loss is the
cross-entropy between softmax(scores) and the target distribution, which is the
KL term to an ArtEmis histogram (plus a constant) and plain CE for one label.

Images come as `Prepared` (trainer.features): the prompt prefix and the frozen
vision features, float16, from the feature cache or just computed; the projector
runs here, with gradients. Logits are computed only where a loss reads them (the
answer positions, the label positions), not over the whole sequence.
"""

from __future__ import annotations

from typing import Any

import torch

from artnote.emotions import EMOTIONS
from artnote.model import inputs, prompts
from artnote.model.encoder import TorchEncoder, project_features
from artnote.model.families import language_model
from artnote.model.load import LoadedModel
from trainer.data import Sample
from trainer.features import Prepared, round_features

MAX_ANSWER_TOKENS = 160  # the authors' max_txt_len: an answer and its end, at most


class Objective:
    def __init__(
        self, loaded: LoadedModel, encoder: Any = None, max_answer_tokens: int = MAX_ANSWER_TOKENS
    ) -> None:
        self.loaded = loaded
        self.encoder = encoder or TorchEncoder(loaded)  # for images given as pictures
        self.max_answer_tokens = max_answer_tokens
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

    def answer_ids(self, sample: Sample) -> tuple[list[int], list[int]]:
        """(suffix ids, answer ids + end) for a text sample; the end is the format's
        (end of turn, or MiniGPT-4's `###`). At most max_answer_tokens answer ids: a
        longer answer is cut, as the authors' max_txt_len cuts it (end included)."""
        parts = self.format.parts(sample.field, sample.dominant or None, sample.context)
        answer = sample.text.strip()
        if sample.field == "explanation":
            answer = without_lead(answer)  # the prompt ends with the lead already
        target = self.format.target_ids(parts, answer)
        return self.format.suffix_ids(parts), target[: self.max_answer_tokens]

    def prepare(self, images: list[Any]) -> list[Prepared]:
        """Pictures -> Prepared (prefix and float16 frozen features), as the stream does."""
        out = []
        for image in images:
            if isinstance(image, Prepared):
                out.append(image)
                continue
            enc = self.format.encode_prefix(self.prefix, [image])
            (frozen,) = self.encoder.encode_frozen(enc.pixels)
            out.append(Prepared(enc.input_ids, enc.image_mask, round_features(frozen)))
        return out

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

    def _prefix_embeds(self, images: list[Any]):
        """Left-padded prefix embeddings with image features (projector gets gradients)."""
        device = self.loaded.device
        rows = []
        for item in self.prepare(images):
            features = project_features(self.loaded, [item.frozen])
            ids = item.input_ids.to(device)
            rows.append(inputs.embed_with_images(self.model, ids, item.image_mask, features)[0])
        width = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            embeds[i, width - r.shape[0] :] = r
            mask[i, width - r.shape[0] :] = 1
        return embeds, mask

    def _hidden(self, embeds, mask):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        )
        return out.last_hidden_state

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
        hidden = self._hidden(embeds, mask)
        start = embeds.shape[1] - ids.shape[1]
        rows, cols = [], []
        for r, (suffix, answer) in enumerate(pieces):
            span = range(len(suffix), len(suffix) + len(answer))
            rows += [r] * len(span)
            cols += span
        rows_t = torch.tensor(rows, device=ids.device)
        cols_t = torch.tensor(cols, device=ids.device)
        targets = ids[rows_t, cols_t]
        # The hidden state at position p predicts token p+1: the head runs on the answer
        # positions only (a (tokens x vocabulary) product, not (batch x length x vocabulary)).
        logits = self.head(hidden[rows_t, start - 1 + cols_t]).float()
        per_token = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        # Mean over each answer's tokens, then over samples: a long description weighs
        # as much as a short alt text, and the loss does not depend on the batching.
        sums = torch.zeros(len(pieces), device=ids.device).index_add(0, rows_t, per_token)
        counts = torch.tensor([len(a) for _, a in pieces], device=ids.device).clamp(min=1)
        return (sums / counts).mean()

    def emotion_suffix_for(self, context: str = "") -> list[int]:
        """The emotion question's ids after the prefix (grounded: after the record)."""
        if not context:
            return self.emotion_suffix
        return self.format.suffix_ids(self.format.parts("emotion", None, context))

    def emotion_scores(self, images: list[Any], contexts: list[str] | None = None) -> torch.Tensor:
        """(B, 9) label log-likelihoods, with gradients."""
        embeds, mask = self._prefix_embeds(images)
        n = len(EMOTIONS)
        questions = [self.emotion_suffix_for(c) for c in contexts or [""] * len(images)]
        embeds, mask = embeds.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        tails = [q + self.label_ids[k] for q in questions for k in range(n)]
        embeds, mask, ids, _ = self._extend(embeds, mask, tails)
        hidden = self._hidden(embeds, mask)
        start = embeds.shape[1] - ids.shape[1]
        rows, cols = [], []
        for r in range(len(tails)):
            first = len(questions[r // n])
            span = range(first, first + len(self.label_ids[r % n]))
            rows += [r] * len(span)
            cols += span
        rows_t = torch.tensor(rows, device=ids.device)
        cols_t = torch.tensor(cols, device=ids.device)
        logp = torch.log_softmax(self.head(hidden[rows_t, start - 1 + cols_t]).float(), dim=-1)
        picked = logp.gather(-1, ids[rows_t, cols_t].unsqueeze(-1)).squeeze(-1)
        scores = torch.zeros(len(tails), device=ids.device).index_add(0, rows_t, picked)
        return scores.view(len(images), n)

    def emotion_loss(self, samples: list[Sample], images: list[Any]) -> torch.Tensor:
        target = torch.tensor([s.emotions for s in samples], device=self.loaded.device)
        scores = self.emotion_scores(images, [s.context for s in samples])
        return -(target * torch.log_softmax(scores, dim=-1)).sum(-1).mean()


def without_lead(text: str) -> str:
    """An explanation without its "It makes me feel X because" lead, whichever emotion it
    names (a lead never comes twice: not in a target, not in a score)."""
    text = text.strip()
    for emotion in EMOTIONS:
        lead = prompts.answer_lead("explanation", emotion)
        if text.lower().startswith(lead.lower()):
            return text[len(lead) :].strip()
    return text
