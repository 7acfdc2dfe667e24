"""Batch of images -> list of Annotation, with one encode and one prefill per image.

For a batch of B images:
  1. the processor tokenises the shared prefix (chat start + image tokens);
  2. the encoder turns each image into embeddings, once;
  3. the language model prefills the prefix once; its KV cache is the root of
     every field of that image;
  4. emotions are *scored*: the emotion question continues the cache, then the
     nine label words are scored on 9B rows that share it; softmax of the nine
     sequence log-likelihoods is the distribution;
  5. alt text, description and explanation (grounded in the dominant emotion)
     are decoded together on 3B rows branching from the same prefix cache;
     finished rows leave the batch.
Positions are computed from the attention mask, so left padding and padding
between prefix and suffix do not change any row's result.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from artnote.config import GenerationSettings, Settings
from artnote.emotions import EMOTIONS
from artnote.errors import ModelError
from artnote.model import inputs, prompts
from artnote.model.encoder import ImageEncoder, make_encoder
from artnote.model.families import language_model
from artnote.model.load import LoadedModel
from artnote.records import Annotation, Provenance

ALT_TEXT_LIMIT = 125
GEN_FIELDS = ("alt_text", "description", "explanation")


class Annotator:
    def __init__(
        self,
        loaded: LoadedModel,
        generation: GenerationSettings | None = None,
        encoder: ImageEncoder | str = "torch",
        adapter_hash: str | None = None,
        adapter_name: str | None = None,
    ) -> None:
        self.loaded = loaded
        self.gen = generation or GenerationSettings()
        self.encoder = make_encoder(loaded, encoder) if isinstance(encoder, str) else encoder
        self.adapter_hash = adapter_hash
        self.adapter_name = adapter_name
        self.model = loaded.model
        self.tokenizer = loaded.processor.tokenizer
        self.lm = language_model(self.model)
        self.head = self.model.get_output_embeddings()
        self.embed = self.lm.get_input_embeddings()
        self.image_token_id = inputs.image_token_id(self.model, loaded.processor)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        proc = loaded.processor
        self.prefix = inputs.field_parts(proc, "alt_text").prefix
        self.suffixes: dict[str, list[int]] = {}
        for field in ("alt_text", "description", "emotion"):
            parts = inputs.field_parts(proc, field)
            if parts.prefix != self.prefix:
                raise ModelError(
                    "the chat template puts text before the image; cannot share a prefix"
                )
            self.suffixes[field] = inputs.suffix_ids(self.tokenizer, parts)
        self.explain_suffix = {
            e: inputs.suffix_ids(self.tokenizer, inputs.field_parts(proc, "explanation", e))
            for e in EMOTIONS
        }
        emotion_parts = inputs.field_parts(proc, "emotion")
        context = emotion_parts.prefix + emotion_parts.suffix
        self.label_ids = [
            inputs.continuation_ids(self.tokenizer, context, " " + prompts.label_text(e))
            for e in EMOTIONS
        ]
        self.stats: dict[str, float] = defaultdict(float)  # seconds per stage, for benchmarks
        self.counts: dict[str, int] = defaultdict(int)  # tokens processed, for roofline bounds

    # ---- public -------------------------------------------------------------

    @property
    def input_size(self) -> int | None:
        return inputs.input_size(self.loaded.processor)

    def annotate(self, images: list[Any]) -> list[Annotation]:
        """Annotate PIL RGB images; the result is in the same order."""
        if not images:
            return []
        import torch

        start = time.perf_counter()
        with torch.inference_mode():
            kv, mask = self._prefill(images)
            loglik = self._score_emotions(kv, mask)
            probs = torch.softmax(loglik.double(), dim=-1)
            dominant = [EMOTIONS[i] for i in probs.argmax(dim=-1).tolist()]
            texts = self._generate(kv, mask, dominant)
        ms = (time.perf_counter() - start) * 1000 / len(images)
        out = []
        for i, emotion in enumerate(dominant):
            alt, cut = clean_alt_text(texts[i]["alt_text"])
            lead = prompts.answer_lead("explanation", emotion)
            out.append(
                Annotation(
                    alt_text=alt,
                    alt_text_truncated=cut,
                    description=_clean(texts[i]["description"]),
                    emotions={
                        e: float(p) for e, p in zip(EMOTIONS, probs[i].tolist(), strict=True)
                    },
                    dominant_emotion=emotion,
                    explanation=_clean(f"{lead} {texts[i]['explanation'].strip()}"),
                    provenance=self._provenance(ms),
                    extra={"emotion_loglik": loglik[i].tolist()},
                )
            )
        return out

    def emotion_logliks(self, images: list[Any]):
        """(B, 9) log-likelihoods of the nine labels; exposed for tests and evaluation."""
        import torch

        with torch.inference_mode():
            kv, mask = self._prefill(images)
            return self._score_emotions(kv, mask)

    # ---- stages ---------------------------------------------------------------

    def _prefill(self, images: list[Any]):
        t0 = time.perf_counter()
        enc = inputs.encode_prefix(self.loaded.processor, self.prefix, images)
        t1 = time.perf_counter()
        features = self.encoder.encode(inputs.pixel_inputs(enc))
        t2 = time.perf_counter()
        device = self.loaded.device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        embeds = inputs.embed_with_images(self.model, ids, self.image_token_id, features)
        self.counts["prefix_tokens"] += int(mask.sum())
        self.counts["image_tokens"] += sum(int(f.shape[0]) for f in features)
        cache = _new_cache([])
        self._forward(embeds, mask, cache)
        t3 = time.perf_counter()
        self.stats["preprocess"] += t1 - t0
        self.stats["encode"] += t2 - t1
        self.stats["prefill"] += t3 - t2
        return _kv(cache), mask

    def _score_emotions(self, kv, mask):
        import torch

        t0 = time.perf_counter()
        rows = mask.shape[0]
        device = mask.device
        suffix = torch.tensor([self.suffixes["emotion"]] * rows, device=device)
        cache = _new_cache(kv)
        mask = torch.cat([mask, torch.ones_like(suffix)], dim=1)
        hidden = self._forward(self.embed(suffix), mask, cache)
        first = torch.log_softmax(self.head(hidden[:, -1]).float(), dim=-1)
        loglik = torch.stack([first[:, ids[0]] for ids in self.label_ids], dim=1)
        longest = max(len(ids) for ids in self.label_ids)
        if longest > 1:
            n = len(EMOTIONS)
            width = longest - 1
            feed = torch.full((n, width), self.pad_id, device=device)
            target = torch.full((n, width), -1, device=device)
            for k, ids in enumerate(self.label_ids):
                feed[k, : len(ids) - 1] = torch.tensor(ids[:-1])
                target[k, : len(ids) - 1] = torch.tensor(ids[1:])
            feed, target = feed.repeat(rows, 1), target.repeat(rows, 1)  # row b*9+k
            label_mask = (target >= 0).long()
            cache = _new_cache(_kv(cache), repeat=n)
            mask = torch.cat([mask.repeat_interleave(n, dim=0), label_mask], dim=1)
            hidden = self._forward(self.embed(feed), mask, cache)
            logp = torch.log_softmax(self.head(hidden).float(), dim=-1)
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            loglik = loglik + (picked * label_mask).sum(dim=1).view(rows, n)
        self.stats["scoring"] += time.perf_counter() - t0
        return loglik

    def _generate(self, kv, mask, dominant: list[str]) -> list[dict[str, str]]:
        import torch

        t0 = time.perf_counter()
        device = mask.device
        n = len(GEN_FIELDS)
        suffixes, limits = [], []
        budget = {
            "alt_text": self.gen.alt_text_tokens,
            "description": self.gen.description_tokens,
            "explanation": self.gen.explanation_tokens,
        }
        for emotion in dominant:
            for field in GEN_FIELDS:
                ids = (
                    self.explain_suffix[emotion] if field == "explanation" else self.suffixes[field]
                )
                suffixes.append(ids)
                limits.append(budget[field])
        width = max(len(s) for s in suffixes)
        feed = torch.full((len(suffixes), width), self.pad_id, device=device)
        feed_mask = torch.zeros_like(feed)
        for r, ids in enumerate(suffixes):  # pad on the left of the suffix: pads sit mid-sequence
            feed[r, width - len(ids) :] = torch.tensor(ids)
            feed_mask[r, width - len(ids) :] = 1
        cache = _new_cache(kv, repeat=n)
        mask = torch.cat([mask.repeat_interleave(n, dim=0), feed_mask], dim=1)
        hidden = self._forward(self.embed(feed), mask, cache)
        logits = self.head(hidden[:, -1]).float()
        rows = torch.arange(len(suffixes), device=device)
        limit = torch.tensor(limits, device=device)
        generated: list[list[int]] = [[] for _ in suffixes]
        eos = torch.tensor(sorted(self.eos_ids), device=device)
        sampler = _Sampler(self.gen, device)
        step = 0
        while True:
            if step < self.gen.min_new_tokens and len(eos):
                logits[:, eos] = float("-inf")
            token = sampler(logits)
            for r, t in zip(rows.tolist(), token.tolist(), strict=True):
                if t not in self.eos_ids:
                    generated[r].append(t)
            step += 1
            done = torch.isin(token, eos) | (step >= limit[rows])
            if bool(done.all()):
                break
            keep = (~done).nonzero().squeeze(1)
            if len(keep) < len(rows):
                rows, token, mask = rows[keep], token[keep], mask[keep]
                cache = _new_cache([(k[keep], v[keep]) for k, v in _kv(cache)])
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            hidden = self._forward(self.embed(token[:, None]), mask, cache)
            logits = self.head(hidden[:, -1]).float()
        self.stats["generate"] += time.perf_counter() - t0
        out = []
        for i in range(len(dominant)):
            texts = {}
            for j, field in enumerate(GEN_FIELDS):
                texts[field] = self.tokenizer.decode(generated[i * n + j], skip_special_tokens=True)
            out.append(texts)
        return out

    def _forward(self, embeds, mask, cache):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
        return out.last_hidden_state

    def _provenance(self, ms: float) -> Provenance:
        gen = {
            "alt_text_tokens": self.gen.alt_text_tokens,
            "description_tokens": self.gen.description_tokens,
            "explanation_tokens": self.gen.explanation_tokens,
            "min_new_tokens": self.gen.min_new_tokens,
            "do_sample": self.gen.do_sample,
        }
        if self.gen.do_sample:
            gen.update(temperature=self.gen.temperature, top_p=self.gen.top_p, seed=self.gen.seed)
        return Provenance(
            model=self.loaded.name,
            revision=self.loaded.revision,
            family=self.loaded.family.name,
            adapter=self.adapter_hash,
            adapter_name=self.adapter_name,
            prompt_version=prompts.PROMPT_VERSION,
            prompt_hash=prompts.prompt_hash(),
            generation=gen,
            encoder=self.encoder.name,
            device=str(self.loaded.device),
            ms=round(ms, 2),
        )


def load_annotator(
    settings: Settings, adapter_dir: Path | None = None, adapter_name: str | None = None
) -> Annotator:
    """Load the model (and adapter, if any) as settings say, ready to annotate."""
    from artnote.model.adapters import load_adapter
    from artnote.model.load import load_model

    loaded = load_model(settings.model)
    adapter_hash = None
    if adapter_dir is not None:
        config = load_adapter(
            loaded.model, adapter_dir, family=loaded.family, base_model=loaded.name
        )
        adapter_hash = config.content_hash
        adapter_name = adapter_name or Path(adapter_dir).name
    return Annotator(
        loaded,
        settings.generation,
        encoder=settings.model.encoder,
        adapter_hash=adapter_hash,
        adapter_name=adapter_name,
    )


class _Sampler:
    """Greedy by default; temperature + top-p sampling from a seeded generator."""

    def __init__(self, gen: GenerationSettings, device: Any) -> None:
        import torch

        self.gen = gen
        self.generator = None
        if gen.do_sample:
            self.generator = torch.Generator(device=device).manual_seed(gen.seed)

    def __call__(self, logits):
        import torch

        if not self.gen.do_sample:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / max(self.gen.temperature, 1e-5), dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > self.gen.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        pick = torch.multinomial(sorted_p, 1, generator=self.generator)
        return order.gather(-1, pick).squeeze(-1)


def _kv(cache) -> list[tuple[Any, Any]]:
    return [(k, v) for k, v, *_ in cache]


def _new_cache(kv: list[tuple[Any, Any]], repeat: int = 1):
    """A fresh cache over existing tensors: branching never copies or mutates the root."""
    from transformers import DynamicCache

    if repeat > 1:
        kv = [(k.repeat_interleave(repeat, 0), v.repeat_interleave(repeat, 0)) for k, v in kv]
    return DynamicCache(ddp_cache_data=kv) if kv else DynamicCache()


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for token in ("<end_of_utterance>", "<|im_end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def clean_alt_text(text: str) -> tuple[str, bool]:
    """First line, one space between words; over 125 characters -> cut at a word, flagged."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    alt = _clean(lines[0]) if lines else ""
    if len(alt) <= ALT_TEXT_LIMIT:
        return alt, False
    cut = alt[: ALT_TEXT_LIMIT - 1]
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:") + "…", True
