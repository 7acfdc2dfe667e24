"""Batch of images -> list of Annotation, with one encode and one prefill per image.

For a batch of B images:
  1. the processor tokenises the shared prefix (chat start + image tokens);
  2. the encoder turns each image into embeddings, once;
  3. the language model prefills the prefix once; its KV cache is the root of
     every field of that image;
  4. emotions are *scored*: the emotion question continues the cache, then the
     nine labels' words are scored in one more step; softmax of the nine
     sequence log-likelihoods is the distribution;
  5. alt text, description and explanation (grounded in the dominant emotion)
     are decoded together, one token per field and step; finished fields and
     finished images leave the batch.
Fields and labels are branches of the prefix packed side by side in the image's
own row (`branches.Tree`): a 4-D attention mask lets each branch see only the prefix,
its ancestors and itself, and positions are counted along the branch, so the
prefix's KV cache is never copied per field or label. Left padding and dead
slots are seen by no token, so they do not change any result.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from artnote.config import GenerationSettings, Settings
from artnote.emotions import EMOTIONS
from artnote.errors import ModelError
from artnote.model import inputs, prompts
from artnote.model.branches import (
    DEAD,
    PREFIX,
    GraphedStep,
    Tree,
    attention_kernels,
    kv_pairs,
)
from artnote.model.encoder import ImageEncoder, make_encoder
from artnote.model.families import language_model
from artnote.model.load import LoadedModel
from artnote.records import Annotation, Provenance
from artnote.text import clean_text

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
        encoder_precision: str = "full",
    ) -> None:
        self.loaded = loaded
        self.gen = generation or GenerationSettings()
        if isinstance(encoder, str):
            encoder = make_encoder(loaded, encoder, encoder_precision)
        self.encoder = encoder
        self.adapter_hash = adapter_hash
        self.adapter_name = adapter_name
        self.model = loaded.model
        self.tokenizer = loaded.processor.tokenizer
        self.lm = language_model(self.model)
        self.head = self.model.get_output_embeddings()
        self.embed = self.lm.get_input_embeddings()
        self.format = fmt = inputs.prompt_format(self.model, loaded.processor, loaded.family)
        self.image_token_id = fmt.image_token_id
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.prefix = fmt.parts("alt_text").prefix
        self.suffixes: dict[str, list[int]] = {}
        for field in ("alt_text", "description", "emotion"):
            parts = fmt.parts(field)
            if parts.prefix != self.prefix:
                raise ModelError(
                    "the chat template puts text before the image; cannot share a prefix"
                )
            self.suffixes[field] = fmt.suffix_ids(parts)
        self.explain_suffix = {e: fmt.suffix_ids(fmt.parts("explanation", e)) for e in EMOTIONS}
        emotion_parts = fmt.parts("emotion")
        self.label_ids = [fmt.answer_ids(emotion_parts, prompts.label_text(e)) for e in EMOTIONS]
        self.stats: dict[str, float] = defaultdict(float)  # seconds per stage, for benchmarks
        self.counts: dict[str, int] = defaultdict(int)  # tokens processed, for roofline bounds

    # ---- public -------------------------------------------------------------

    @property
    def input_size(self) -> int | None:
        return inputs.input_size(self.loaded.processor)

    def annotate(self, images: list[Any], contexts: list[str] | None = None) -> list[Annotation]:
        """Annotate PIL RGB images; the result is in the same order.

        `contexts`: per image, the facts of its object's record (prompts.record_context;
        '' for none) that go before every question: grounded prompting.
        """
        if not images:
            return []
        import torch

        contexts = contexts or [""] * len(images)
        start = time.perf_counter()
        with torch.inference_mode():
            kv, mask = self._prefill(images)
            loglik = self._score_emotions(kv, mask, contexts)
            probs = torch.softmax(loglik.double(), dim=-1)
            dominant = [EMOTIONS[i] for i in probs.argmax(dim=-1).tolist()]
            sampler = _Sampler(self.gen, images, mask.device)
            texts = self._generate(kv, mask, dominant, sampler, contexts)
        ms = (time.perf_counter() - start) * 1000 / len(images)
        out = []
        for i, emotion in enumerate(dominant):
            # Cleaned as multiline, alt text too: the line breaks left decide which line
            # of the raw alt text is kept, as they did before there was cleaning.
            raw = {f: clean_text(texts[i][f], multiline=True) for f in GEN_FIELDS}
            alt, cut = clean_alt_text(raw["alt_text"][0])
            lead = prompts.answer_lead("explanation", emotion)
            out.append(
                Annotation(
                    alt_text=alt,
                    alt_text_truncated=cut,
                    description=_clean(raw["description"][0]),
                    emotions={
                        e: float(p) for e, p in zip(EMOTIONS, probs[i].tolist(), strict=True)
                    },
                    dominant_emotion=emotion,
                    explanation=_clean(f"{lead} {raw['explanation'][0].strip()}"),
                    provenance=self._provenance(
                        ms, [f for f in GEN_FIELDS if raw[f][1]], contexts[i]
                    ),
                    extra={"emotion_loglik": loglik[i].tolist()},
                )
            )
        return out

    def emotion_logliks(self, images: list[Any], contexts: list[str] | None = None):
        """(B, 9) log-likelihoods of the nine labels; exposed for tests and evaluation."""
        import torch

        with torch.inference_mode():
            kv, mask = self._prefill(images)
            return self._score_emotions(kv, mask, contexts or [""] * len(images))

    def decode_loop(self) -> str:
        """How the fields are decoded ([generation] decode_loop; the same text each way):
        growing (the cache grows, finished images leave the batch), static (fixed shapes,
        every row stays), cuda-graphs (static, each step replayed as one CUDA graph, for
        GPUs where a step is bound by the host launching its kernels). auto is growing
        until cuda-graphs has been measured and checked on a GPU (see README)."""
        loop = self.gen.decode_loop
        if loop == "auto":
            return "growing"
        if loop == "cuda-graphs" and self.loaded.device.type != "cuda":
            raise ModelError("[generation] decode_loop = cuda-graphs needs a CUDA device")
        return loop

    def suffix(self, field: str, context: str = "", emotion: str | None = None) -> list[int]:
        """The token ids after the prefix of one field's prompt (question, end of turn,
        assistant start, lead); the plain prompts' are made once."""
        if not context:
            return self.explain_suffix[emotion] if field == "explanation" else self.suffixes[field]
        return self.format.suffix_ids(self.format.parts(field, emotion, context))

    # ---- stages ---------------------------------------------------------------

    def _prefill(self, images: list[Any]):
        t0 = time.perf_counter()
        enc = self.format.encode_prefix(self.prefix, images)
        t1 = time.perf_counter()
        features = self.encoder.encode(enc.pixels)
        t2 = time.perf_counter()
        device = self.loaded.device
        ids = enc.input_ids.to(device)
        mask = enc.attention_mask.to(device)
        image_mask = enc.image_mask
        del enc  # the batch's pixels (hundreds of MB of tiles): not kept through the prefill
        embeds = inputs.embed_with_images(self.model, ids, image_mask, features)
        self.counts["prefix_tokens"] += int(mask.sum())
        self.counts["image_tokens"] += sum(int(f.shape[0]) for f in features)
        from transformers import DynamicCache

        cache = DynamicCache()
        self._forward(embeds, mask, cache)
        t3 = time.perf_counter()
        self.stats["preprocess"] += t1 - t0
        self.stats["encode"] += t2 - t1
        self.stats["prefill"] += t3 - t2
        return kv_pairs(cache), mask

    def _score_emotions(self, kv, mask, contexts: list[str]):
        import torch

        t0 = time.perf_counter()
        rows = mask.shape[0]
        device = mask.device
        longest = max(len(ids) for ids in self.label_ids)
        questions = [self.suffix("emotion", c) for c in contexts]
        room = max(map(len, questions)) + len(EMOTIONS) * longest
        tree = Tree(self, kv, mask, room)
        question = tree.new_branch(parent=PREFIX)
        hidden = tree.extend_rows(questions, question, self.pad_id)
        first = torch.log_softmax(self.head(hidden[:, -1]).float(), dim=-1)
        loglik = torch.stack([first[:, ids[0]] for ids in self.label_ids], dim=1)
        # Each label's later tokens: one branch per label after the question, all packed
        # side by side in the image's own row (no copy of the prefix's cache per label).
        feed, owner, pos, label, target = [], [], [], [], []
        for k, ids in enumerate(self.label_ids):
            if len(ids) > 1:
                branch = tree.new_branch(parent=question)
                feed += ids[:-1]
                owner += [branch] * (len(ids) - 1)
                pos += range(len(ids) - 1)
                label += [k] * (len(ids) - 1)
                target += ids[1:]
        if feed:
            positions = tree.after[question][:, None] + torch.tensor(pos, device=device)
            hidden = tree.forward(
                torch.tensor([feed] * rows, device=device),
                torch.tensor([owner] * rows, device=device),
                positions,
            )
            logp = torch.log_softmax(self.head(hidden).float(), dim=-1)
            target_ids = torch.tensor(target, device=device).expand(rows, -1)
            picked = logp.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
            loglik = loglik.index_add(1, torch.tensor(label, device=device), picked)
        self.stats["scoring"] += time.perf_counter() - t0
        return loglik

    def _generate(
        self, kv, mask, dominant: list[str], sampler: _Sampler, contexts: list[str]
    ) -> list[dict[str, str]]:
        import torch

        t0 = time.perf_counter()
        device = mask.device
        n = len(GEN_FIELDS)
        budget = {
            "alt_text": self.gen.alt_text_tokens,
            "description": self.gen.description_tokens,
            "explanation": self.gen.explanation_tokens,
        }
        # The three field prompts of a row, side by side after its prefix; a row whose
        # prompts are shorter (the explanation names the emotion) gets dead slots first.
        rows_suffixes = [
            [self.suffix(f, c, e if f == "explanation" else None) for f in GEN_FIELDS]
            for e, c in zip(dominant, contexts, strict=True)
        ]
        width = max(sum(map(len, row)) for row in rows_suffixes)
        loop = self.decode_loop()
        static = loop != "growing"
        tree = Tree(self, kv, mask, room=width + n * max(budget.values()), static=static)
        branches = [tree.new_branch(parent=PREFIX) for _ in GEN_FIELDS]
        feed = torch.full((len(dominant), width), self.pad_id, device=device)
        owner = torch.full_like(feed, DEAD)
        pos = torch.zeros_like(feed)
        last = torch.zeros((len(dominant), n), dtype=torch.long, device=device)
        for r, row in enumerate(rows_suffixes):
            at = width - sum(map(len, row))
            for j, ids in enumerate(row):
                feed[r, at : at + len(ids)] = torch.tensor(ids)
                owner[r, at : at + len(ids)] = branches[j]
                pos[r, at : at + len(ids)] = torch.arange(len(ids))
                at += len(ids)
                last[r, j] = at - 1
        hidden = tree.forward(feed, owner, tree.after[PREFIX][:, None] + pos)
        hidden = hidden.gather(1, last[..., None].expand(-1, -1, hidden.shape[-1]))
        if loop == "cuda-graphs":
            step_logits = GraphedStep(tree, self.head)
        else:

            def step_logits(ids, owner, positions):
                return self.head(tree.forward(ids, owner, positions)).float()

        logits = self.head(hidden).float()  # (rows, fields, vocab)
        next_pos = tree.after[PREFIX][:, None] + pos.gather(1, last) + 1  # per row and field
        limit = torch.tensor([budget[f] for f in GEN_FIELDS], device=device)
        index = torch.arange(len(dominant), device=device)  # batch row -> image
        live = torch.ones((len(dominant), n), dtype=torch.bool, device=device)
        cols = list(range(n))  # fields still generating in some row
        generated: list[list[list[int]]] = [[[] for _ in GEN_FIELDS] for _ in dominant]
        eos = torch.tensor(sorted(self.eos_ids), device=device)
        stop = _StopTexts(self.tokenizer, self.format.stop_texts)
        step = 0
        while True:
            if step < self.gen.min_new_tokens and len(eos):
                logits[..., eos] = float("-inf")
            token = sampler(logits, index.tolist(), cols)
            step += 1
            wanted = live[:, cols]
            stopped = []  # per row and column: the field's text reached a stop text
            for r, toks, keep in zip(index.tolist(), token.tolist(), wanted.tolist(), strict=True):
                stopped.append([False] * len(cols))
                for k, (j, t, on) in enumerate(zip(cols, toks, keep, strict=True)):
                    if on and t not in self.eos_ids:
                        generated[r][j].append(t)
                        stopped[-1][k] = stop.reached(generated[r][j])
            done = torch.isin(token, eos) | (step >= limit[cols])
            if stop.texts:  # one copy to the device per step, only for formats that stop so
                done |= torch.tensor(stopped, device=device)
            live[:, cols] = wanted & ~done
            if not bool(live.any()):
                break
            going = live.any(dim=1)
            if not static and not bool(going.all()):  # finished images leave the batch
                keep = going.nonzero().squeeze(1)
                tree.select(keep)
                index, token, live, next_pos = index[keep], token[keep], live[keep], next_pos[keep]
            still = [c for c, on in zip(cols, live[:, cols].any(dim=0).tolist(), strict=True) if on]
            if not static and len(still) < len(cols):  # a field done in every image: it goes
                token = token[:, [cols.index(c) for c in still]]
                cols = still
            # (A static tree keeps every row and column: finished ones are fed as DEAD.)
            owner = torch.tensor([branches[c] for c in cols], device=device).expand_as(token)
            owner = torch.where(live[:, cols], owner, DEAD)
            logits = step_logits(token, owner, next_pos[:, cols])
            next_pos[:, cols] += 1
        self.stats["generate"] += time.perf_counter() - t0
        return [
            {
                f: self.format.cut(self.tokenizer.decode(generated[i][j], skip_special_tokens=True))
                for j, f in enumerate(GEN_FIELDS)
            }
            for i in range(len(dominant))
        ]

    def _forward(self, embeds, mask, cache):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
        with attention_kernels():
            out = self.lm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
        return out.last_hidden_state

    def _provenance(self, ms: float, cleaned: list[str], context: str = "") -> Provenance:
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
            prompt_version=prompts.prompt_version(context),
            prompt_hash=prompts.prompt_hash(context),
            generation=gen,
            encoder=self.encoder.name,
            device=str(self.loaded.device),
            ms=round(ms, 2),
            cleaned=cleaned,
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
        encoder_precision=settings.model.encoder_precision,
    )


class _StopTexts:
    """Whether a field's tokens end in one of the format's stop texts (MiniGPT-4's `###`).

    A stop text may be one token or several ('##' + '#'), so the tail of the field's
    text is decoded, not its last id compared: the few last tokens are enough.
    """

    TAIL = 8

    def __init__(self, tokenizer: Any, texts: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.texts = texts

    def reached(self, ids: list[int]) -> bool:
        if not self.texts:
            return False
        tail = self.tokenizer.decode(ids[-self.TAIL :], skip_special_tokens=True)
        return any(t in tail for t in self.texts)


class _Sampler:
    """Greedy by default; else temperature + top-p sampling, from one generator per image.

    Each image's generator is seeded from the seed and the image's pixels, and gives
    one uniform number per field at every step the image is decoded, whichever of its
    fields still run: so an image's text does not depend on its batch neighbours or its
    place in the batch, and the seed reproduces it (also when a failed batch is retried
    image by image).
    """

    def __init__(self, gen: GenerationSettings, images: list[Any], device: Any) -> None:
        import torch

        self.gen = gen
        self.generators = []
        if gen.do_sample:
            for image in images:
                digest = hashlib.blake2b(image.tobytes(), digest_size=8, key=b"artnote")
                digest.update(str(gen.seed).encode())
                seed = int.from_bytes(digest.digest(), "little") >> 1  # torch takes < 2**63
                self.generators.append(torch.Generator(device=device).manual_seed(seed))

    def __call__(self, logits, images: list[int], cols: list[int]):
        """Next tokens (rows, len(cols)) from logits (rows, len(cols), vocab), where row r
        is image images[r] and column k its field cols[k]."""
        import torch

        if bool(logits.isnan().any()):  # a broken model or kernel: no text from it
            raise ModelError("the model produced NaN scores")
        if not self.gen.do_sample:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / max(self.gen.temperature, 1e-5), dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > self.gen.top_p
        cumulative = sorted_p.masked_fill(drop, 0.0).cumsum(-1)
        uniform = torch.stack(
            [
                torch.rand(len(GEN_FIELDS), generator=g, device=g.device)
                for g in (self.generators[i] for i in images)
            ]
        )[:, cols].to(cumulative.dtype)
        # Inverse CDF: the first token whose cumulative probability exceeds u x total.
        target = uniform[..., None] * cumulative[..., -1:]
        pick = torch.searchsorted(cumulative, target, right=True)
        pick = pick.clamp(max=cumulative.shape[-1] - 1)
        return order.gather(-1, pick).squeeze(-1)


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
