"""The packed scanner path with trained-looking (non-zero) adapters, against brute force.

tests/test_model.py and tests/test_artgpt4.py check the packed branches (one prefill of
the image prefix, then the emotion question, the nine labels and the three fields as
branches over one KV cache with a 4-D mask) against brute force on models whose adapters
are an identity (up-projection zero). Here every adapter parameter gets seeded random
values large enough to move the logits, and the rest of the trainable set (the layer
norms, the projector) is perturbed a little, so a packed path that skipped the adapters,
fed them the wrong residual, or ran them on a stale hook state would show:

  (a) each image's nine emotion log-likelihoods equal one separate full forward of
      prompt + image + emotion question + label per image and label;
  (b) each field's packed greedy decode equals that field generated alone.

The brute force takes none of the annotator's code: the chat families go through the
processor and the model's own forward / generate; artgpt4's prompt and image embeddings
are built by hand (as tests/test_artgpt4.py's reference forward) and run through the
Llama causal LM, hooks and all, one full forward per token.
"""

from __future__ import annotations

import pytest
import torch

from artnote.config import GenerationSettings, ModelSettings
from artnote.emotions import EMOTIONS
from artnote.model import inputs, prompts
from artnote.model.adapters import ATTR, adapters_of, attach_adapters, mark_trainable
from artnote.model.annotate import Annotator, clean_alt_text
from artnote.model.load import load_model
from artnote.text import clean_text

FAMILIES = ("llava", "smolvlm", "artgpt4")
_needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
DEVICES = ("cpu", pytest.param("cuda", marks=_needs_cuda))
TOKENS = 8  # per field: few, but every one of them compared
ADAPTER_SCALE = 0.5  # std of every adapter parameter
NORM_SCALE = 0.1  # std of the noise added to the trainable norms (and projector, relative)
MIN_CHANGE = 0.5  # the adapted model's logits move by at least this much somewhere


def _load(path, device="cpu"):
    if device == "cuda":  # float32 without TF32: greedy tokens compared exactly
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return load_model(ModelSettings(name=str(path), device=device, dtype="float32"))


# ---- brute force: one full forward of a whole prompt, no cache, no packing ----------------


def _minigpt4_pieces(field: str, emotion: str | None = None) -> tuple[str, str]:
    """MiniGPT-4's prompt split around the image, with the field's answer lead."""
    text = inputs.MINIGPT4_PROMPT.format(question=prompts.question(field, emotion))
    before, after = text.split(inputs.MINIGPT4_IMAGE)
    return before, after + prompts.answer_lead(field, emotion)


def _minigpt4_image(loaded, image):
    """ViT -> Q-Former -> projection, written out (not the encoder's get_image_features)."""
    model = loaded.model
    pixels = loaded.processor.image_processor([image], return_tensors="pt")["pixel_values"]
    patches = model.vision_model(pixel_values=pixels.to(loaded.device)).last_hidden_state
    queries = model.qformer(
        query_embeds=model.query_tokens.expand(patches.shape[0], -1, -1),
        encoder_hidden_states=patches,
        encoder_attention_mask=torch.ones(
            patches.shape[:-1], dtype=torch.long, device=loaded.device
        ),
    ).last_hidden_state
    return model.language_projection(queries)  # (1, queries, hidden)


class _BruteForce:
    """Whole prompts of one image through the whole model, one full forward each."""

    def __init__(self, loaded, image) -> None:
        self.loaded = loaded
        self.image = image
        self.tok = loaded.processor.tokenizer
        self.artgpt4 = loaded.family.name == "artgpt4"
        if self.artgpt4:
            self.image_embeds = _minigpt4_image(loaded, image)

    def prompt(self, field: str, emotion: str | None = None) -> dict:
        """The field's prompt (prefix + image + question + lead), ready for `logits`."""
        if self.artgpt4:
            before, after = _minigpt4_pieces(field, emotion)
            return {
                "before": self.tok(before, add_special_tokens=True)["input_ids"],
                "ids": self.tok(after, add_special_tokens=False)["input_ids"],
            }
        parts = inputs.field_parts(self.loaded.processor, field, emotion)
        return {"text": parts.prefix + parts.suffix}

    def with_label(self, prompt: dict, label: str) -> tuple[dict, int]:
        """The prompt followed by the label's words; and how many tokens the label has."""
        if self.artgpt4:  # after "###Assistant: " the answer is tokenized alone
            ids = self.tok(label, add_special_tokens=False)["input_ids"]
            return {**prompt, "ids": prompt["ids"] + ids}, len(ids)
        whole = self._encode(prompt["text"] + " " + label)["input_ids"].shape[1]
        return {"text": prompt["text"] + " " + label}, whole - self._length(prompt)

    def logits(self, prompt: dict, new: list[int] = ()) -> torch.Tensor:
        """(tokens, vocab) float logits of the prompt followed by `new` token ids."""
        device = self.loaded.device
        model = self.loaded.model
        with torch.no_grad():
            if self.artgpt4:
                embed = model.language_model.get_input_embeddings()
                before = embed(torch.tensor([prompt["before"]], device=device))
                after = embed(torch.tensor([prompt["ids"] + list(new)], device=device))
                x = torch.cat([before, self.image_embeds.to(before.dtype), after], dim=1)
                out = model.language_model(inputs_embeds=x).logits
            else:
                enc = self._encode(prompt["text"])
                if new:
                    ids = torch.cat([enc["input_ids"], torch.tensor([list(new)], device=device)], 1)
                    enc = {**enc, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
                out = model(**enc).logits
        return out[0].float()

    def ids(self, prompt: dict) -> list[int]:
        """The prompt's token ids as the model reads them (image positions included)."""
        if self.artgpt4:
            queries = self.image_embeds.shape[1]
            return prompt["before"] + [-1] * queries + prompt["ids"]
        return self._encode(prompt["text"])["input_ids"][0].tolist()

    def _length(self, prompt: dict) -> int:
        return len(self.ids(prompt))

    def _encode(self, text: str):
        nested = self.loaded.family.name == "idefics3"
        images = [[self.image]] if nested else [self.image]
        enc = self.loaded.processor(text=[text], images=images, return_tensors="pt")
        return enc.to(self.loaded.device)


def _brute_emotion_logliks(loaded, image) -> tuple[torch.Tensor, list[list[int]]]:
    """(9,) log-likelihoods of the labels, each from its own full forward; label ids."""
    brute = _BruteForce(loaded, image)
    prompt = brute.prompt("emotion")
    out, label_ids = [], []
    for emotion in EMOTIONS:
        full, n = brute.with_label(prompt, prompts.label_text(emotion))
        ids = brute.ids(full)
        logp = torch.log_softmax(brute.logits(full), dim=-1)
        start = len(ids) - n - 1
        out.append(sum(float(logp[start + j, ids[start + 1 + j]]) for j in range(n)))
        label_ids.append(ids[-n:])
    return torch.tensor(out, dtype=torch.float64), label_ids


def _brute_generate(loaded, image, field, emotion, eos_ids, tokens: int) -> str:
    """The field alone, greedy, as the annotator stores its raw text (before cleaning)."""
    brute = _BruteForce(loaded, image)
    prompt = brute.prompt(field, emotion)
    tok = loaded.processor.tokenizer
    if not brute.artgpt4:  # the model's own generate, with its own cache
        enc = brute._encode(prompt["text"])
        with torch.no_grad():
            out = loaded.model.generate(
                **enc,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=sorted(eos_ids),
            )
        return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    # artgpt4: a plain greedy loop, a full forward of the whole sequence per token; it
    # stops at an end token or at MiniGPT-4's '###' and keeps the text before it.
    new: list[int] = []
    for _ in range(tokens):
        logits = brute.logits(prompt, new)[-1]
        logits[sorted(eos_ids)] = float("-inf")  # min_new_tokens == tokens
        new.append(int(logits.argmax()))
        if inputs.MINIGPT4_END in tok.decode(new, skip_special_tokens=True):
            break
    return tok.decode(new, skip_special_tokens=True).split(inputs.MINIGPT4_END)[0]


# ---- the adapted model ------------------------------------------------------------------


def _adapted(path, device, art_images, seed=1):
    """A tiny model with non-zero adapters and perturbed norms and projector; checked to
    give visibly other logits than the plain model on an emotion prompt."""
    loaded = _load(path, device)
    probe = _BruteForce(loaded, art_images[0])
    prompt, _ = probe.with_label(probe.prompt("emotion"), EMOTIONS[0])
    base = probe.logits(prompt)
    attach_adapters(loaded.model)
    names = mark_trainable(loaded.model, loaded.family)
    gen = torch.Generator().manual_seed(seed)
    params = dict(loaded.model.named_parameters())
    adapter_names = {f"{ATTR}.{n}" for n, _ in adapters_of(loaded.model).named_parameters()}
    assert adapter_names <= set(names)
    norms = [n for n in names if "layernorm" in n]
    assert norms, names
    with torch.no_grad():
        for name in names:
            p = params[name]
            noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
            if name in adapter_names:  # replaced: up is no longer zero
                p.copy_(noise * ADAPTER_SCALE)
            elif name in norms:  # norms near 1: a little off
                p.add_(noise * NORM_SCALE)
            else:  # the projector: a little, relative to its own weights
                p.add_(noise * NORM_SCALE * float(p.std()))
    adapted = _BruteForce(loaded, art_images[0]).logits(prompt)
    change = float((adapted - base).abs().max())
    assert change > MIN_CHANGE, f"the adapters barely change the logits ({change})"
    # The adapters alone (not just the norms) move the output.
    ups = [a.up for a in adapters_of(loaded.model)]
    saved = [(u.weight.clone(), u.bias.clone()) for u in ups]
    with torch.no_grad():
        for u in ups:
            u.weight.zero_()
            u.bias.zero_()
    without = _BruteForce(loaded, art_images[0]).logits(prompt)
    with torch.no_grad():
        for u, (w, b) in zip(ups, saved, strict=True):
            u.weight.copy_(w)
            u.bias.copy_(b)
    assert float((adapted - without).abs().max()) > MIN_CHANGE
    return loaded


# ---- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_emotion_scoring_with_adapters_equals_brute_force(
    tiny_models, art_images, family, device
):
    loaded = _adapted(tiny_models[family], device, art_images)
    annotator = Annotator(loaded, GenerationSettings())
    assert any(len(ids) > 1 for ids in annotator.label_ids)  # the label branches run
    images = art_images[:3]
    fast = annotator.emotion_logliks(images).double().cpu()
    assert fast.shape == (3, len(EMOTIONS))
    for i, image in enumerate(images):
        want, label_ids = _brute_emotion_logliks(loaded, image)
        assert label_ids == annotator.label_ids  # the same label tokens are scored
        torch.testing.assert_close(fast[i], want, rtol=0, atol=1e-4, msg=lambda m, i=i: f"{i}: {m}")
    # Not a flat distribution: the labels are told apart, so the check has teeth.
    assert float((fast.max(dim=1).values - fast.min(dim=1).values).min()) > 0.1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_fields_with_adapters_decode_what_each_field_decodes_alone(
    tiny_models, art_images, family, device
):
    loaded = _adapted(tiny_models[family], device, art_images)
    gen = GenerationSettings(
        alt_text_tokens=TOKENS,
        description_tokens=TOKENS,
        explanation_tokens=TOKENS,
        min_new_tokens=TOKENS,
    )
    annotator = Annotator(loaded, gen)
    images = art_images[:2]
    got = annotator.annotate(images)
    texts = []
    for image, ann in zip(images, got, strict=True):
        # The stored log-likelihoods (the annotate() path) choose the dominant emotion.
        scores = torch.tensor(ann.extra["emotion_loglik"], dtype=torch.float64)
        assert ann.dominant_emotion == EMOTIONS[int(scores.argmax())]
        for field in ("alt_text", "description", "explanation"):
            emotion = ann.dominant_emotion if field == "explanation" else None
            raw = _brute_generate(loaded, image, field, emotion, annotator.eos_ids, TOKENS)
            text = clean_text(raw, multiline=True)[0]  # as the annotator stores it
            if field == "explanation":
                want = f"{prompts.answer_lead(field, emotion)} {text.strip()}"
                assert " ".join(ann.explanation.split()) == " ".join(want.split()), field
            elif field == "alt_text":
                assert ann.alt_text == clean_alt_text(text)[0], field
            else:
                assert ann.description == " ".join(text.split()), field
            texts.append(text)
    assert any(t.strip() for t in texts)  # something was decoded and compared
