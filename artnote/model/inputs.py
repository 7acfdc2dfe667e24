"""Turn images and questions into what the language model eats.

Every field's prompt is  [prefix: chat start + image tokens] [suffix: question,
end of turn, assistant start, answer lead].  The prefix is the same for every
field of an image, so the scanner prefills it once and reuses its KV cache; the
trainer builds its samples from the very same pieces, through the family's
PromptFormat (`prompt_format`):

- ChatFormat (llava, idefics3): the processor's chat template and image tokens;
- MiniGPT4Format (artgpt4): the authors' `###Human: <Img><ImageHere></Img> {question}
  ###Assistant: `, built here, because Blip2Processor puts its image tokens before
  BOS. As MiniGPT-4's prompt_wrap and Chat do, the text before and after <ImageHere>
  is tokenized separately (BOS on the first piece only), the image's query outputs
  fill the positions between, answers end with `###` (end_sym) and decoding stops
  there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from artnote.errors import ModelError
from artnote.model import prompts
from artnote.model.families import language_model


@dataclass
class PromptParts:
    prefix: str  # up to and including the image placeholder
    suffix: str  # question + end of turn + assistant start (+ " " + lead)


def image_token(processor: Any) -> str:
    return getattr(processor, "image_token", None) or "<image>"


def prompt_parts(processor: Any, question: str, lead: str = "") -> PromptParts:
    """Render the chat template with one image and split it after the image."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    if getattr(processor, "chat_template", None):
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:  # very old checkpoints: the llava-1.5 convention
        text = f"USER: {image_token(processor)}\n{question} ASSISTANT:"
    marker = image_token(processor)
    cut = text.find(marker)
    if cut < 0:
        raise ModelError("the model's chat template does not place an image in the prompt")
    cut += len(marker)
    suffix = text[cut:] + (" " + lead if lead else "")
    return PromptParts(prefix=text[:cut], suffix=suffix)


def field_parts(
    processor: Any, field: str, emotion: str | None = None, context: str = ""
) -> PromptParts:
    return prompt_parts(
        processor, prompts.question(field, emotion, context), prompts.answer_lead(field, emotion)
    )


def encode_prefix(processor: Any, prefix: str, images: list[Any]) -> dict[str, Any]:
    """Tokenise the shared prefix for a batch (left padded) and preprocess the images."""
    nested = getattr(processor, "image_processor", None) is not None and type(
        processor
    ).__name__.startswith(("Idefics", "SmolVLM"))
    batch_images = [[im] for im in images] if nested else list(images)
    enc = processor(
        text=[prefix] * len(images), images=batch_images, return_tensors="pt", padding=True
    )
    return dict(enc)


def pixel_inputs(encoded: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in encoded.items() if k.startswith("pixel_") or k == "image_sizes"}


def continuation_ids(tokenizer: Any, context: str, continuation: str) -> list[int]:
    """Token ids of `continuation` as they are when it follows `context`.

    Tokenising the pieces separately can split differently from the whole
    string (merges across the seam, leading-space markers), so take the tail of
    the whole when the context's tokens are its prefix.
    """
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if whole[: len(ctx)] == ctx:
        return whole[len(ctx) :]
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]


def suffix_ids(tokenizer: Any, parts: PromptParts) -> list[int]:
    """The suffix's ids, as they are when they follow the image placeholder."""
    return continuation_ids(tokenizer, parts.prefix, parts.suffix)


def embed_with_images(model: Any, input_ids: Any, image_token_id: Any, features: list[Any]):
    """Token embeddings with each image's features scattered over its placeholder tokens.

    image_token_id: the placeholder's id, or a boolean (rows, tokens) mask of the image
    positions (MiniGPT4Format's placeholder id need not be unique).
    """
    import torch

    embeds = language_model(model).get_input_embeddings()(input_ids)
    if isinstance(image_token_id, int):
        mask = input_ids == image_token_id
    else:
        mask = image_token_id.to(input_ids.device).bool()
    counts = mask.sum(dim=1).tolist()
    if len(features) != len(counts):
        raise ModelError(f"{len(features)} image feature sets for {len(counts)} prompts")
    for count, feats in zip(counts, features, strict=True):
        if count != feats.shape[0]:
            raise ModelError(
                f"image features ({feats.shape[0]}) do not match image tokens ({count})"
            )
    flat = torch.cat([f.to(embeds.dtype) for f in features], dim=0)
    return embeds.masked_scatter(mask.unsqueeze(-1), flat)


def image_token_id(loaded_model: Any, processor: Any) -> int:
    config = loaded_model.config
    token_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    if token_id is None:
        token_id = processor.tokenizer.convert_tokens_to_ids(image_token(processor))
    return int(token_id)


def input_size(processor: Any) -> int | None:
    """The longest image edge the processor can use: decoding may shrink images to this."""
    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    if "longest_edge" in size:
        return int(size["longest_edge"])
    if "shortest_edge" in size:  # resized on the short side, then cropped: keep room
        return int(size["shortest_edge"]) * 3
    if "height" in size and "width" in size:  # BLIP: squashed to a fixed size; keep room
        return max(int(size["height"]), int(size["width"])) * 3
    return None


# ---- per-family prompt formats -------------------------------------------------------


@dataclass
class Prefix:
    """A batch's shared prefix: ids (left padded), mask, image positions, pixel inputs."""

    input_ids: Any  # (rows, tokens)
    attention_mask: Any  # (rows, tokens)
    image_mask: Any  # (rows, tokens) bool: the positions the image features fill
    pixels: dict[str, Any]  # what the encoder takes


class ChatFormat:
    """The processor's chat template with its image tokens (llava, idefics3)."""

    stop_texts: tuple[str, ...] = ()  # decoding stops at the model's end tokens only

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = image_token_id(model, processor)

    def parts(self, field: str, emotion: str | None = None, context: str = "") -> PromptParts:
        """The prompt of one field; `context` (a record's facts) goes before the question."""
        return field_parts(self.processor, field, emotion, context)

    def suffix_ids(self, parts: PromptParts) -> list[int]:
        return suffix_ids(self.tokenizer, parts)

    def answer_ids(self, parts: PromptParts, text: str) -> list[int]:
        """Ids of an answer (or an emotion label) right after the prompt, without its end."""
        return continuation_ids(self.tokenizer, parts.prefix + parts.suffix, " " + text)

    def target_ids(self, parts: PromptParts, text: str) -> list[int]:
        """A training target: the answer, then the token a finished answer ends with."""
        return self.answer_ids(parts, text) + [answer_end_id(self.tokenizer)]

    def encode_prefix(self, prefix: str, images: list[Any]) -> Prefix:
        enc = encode_prefix(self.processor, prefix, images)
        ids = enc["input_ids"]
        return Prefix(ids, enc["attention_mask"], ids == self.image_token_id, pixel_inputs(enc))

    def cut(self, text: str) -> str:
        return text


MINIGPT4_PROMPT = "###Human: <Img><ImageHere></Img> {question} ###Assistant: "
MINIGPT4_IMAGE = "<ImageHere>"
MINIGPT4_END = "###"  # the authors' end_sym: training targets end with it, decoding stops at it


class MiniGPT4Format(ChatFormat):
    """MiniGPT-4 / ArtGPT-4's prompt, tokenized in pieces around <ImageHere> as the authors do."""

    stop_texts = (MINIGPT4_END,)

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.queries = int(model.config.num_query_tokens)
        # The placeholder's id only has to embed (its rows are overwritten by image_mask):
        # a converted checkpoint's vocabulary may not hold the processor's <image> token.
        vocab = language_model(model).get_input_embeddings().num_embeddings
        token_id = getattr(model.config, "image_token_id", None)
        if token_id is None or not 0 <= int(token_id) < vocab:
            token_id = self.tokenizer.pad_token_id or self.tokenizer.unk_token_id or 0
        self.image_token_id = int(token_id)

    def parts(self, field: str, emotion: str | None = None, context: str = "") -> PromptParts:
        text = MINIGPT4_PROMPT.format(question=prompts.question(field, emotion, context))
        before, after = text.split(MINIGPT4_IMAGE)
        return PromptParts(
            prefix=before + MINIGPT4_IMAGE, suffix=after + prompts.answer_lead(field, emotion)
        )

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def suffix_ids(self, parts: PromptParts) -> list[int]:
        return self._ids(parts.suffix)  # p_after: a piece of its own, no BOS

    def answer_ids(self, parts: PromptParts, text: str) -> list[int]:
        if parts.suffix[-1:].isspace():  # after "###Assistant: ": tokenized alone, as in training
            return self._ids(text)
        return continuation_ids(self.tokenizer, parts.suffix, " " + text)  # after a lead

    def target_ids(self, parts: PromptParts, text: str) -> list[int]:
        # The authors tokenize `answer + end_sym` as one piece.
        return self.answer_ids(parts, text + MINIGPT4_END)

    def encode_prefix(self, prefix: str, images: list[Any]) -> Prefix:
        import torch

        before = prefix.split(MINIGPT4_IMAGE)[0]
        ids = self._ids(before, special=True) + [self.image_token_id] * self.queries
        rows = len(images)
        input_ids = torch.tensor([ids] * rows, dtype=torch.long)
        image_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        image_mask[:, len(ids) - self.queries :] = True
        pixels = self.processor.image_processor(images, return_tensors="pt")
        # Every row has the same prompt and 32 image positions: nothing to pad.
        return Prefix(input_ids, torch.ones_like(input_ids), image_mask, dict(pixels))

    def cut(self, text: str) -> str:
        return text.split(MINIGPT4_END)[0]


def prompt_format(model: Any, processor: Any, family: Any) -> ChatFormat:
    """The family's prompt format (Family.prompt)."""
    if family.prompt == "minigpt4":
        return MiniGPT4Format(model, processor)
    if family.prompt == "chat":
        return ChatFormat(model, processor)
    raise ModelError(f"unknown prompt format {family.prompt!r} of family {family.name}")


def answer_end_id(tokenizer: Any) -> int:
    """The token a finished chat answer ends with: end of turn where the model has one."""
    token_id = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    return int(tokenizer.eos_token_id)
