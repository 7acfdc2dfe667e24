"""Turn images and questions into what the language model eats.

Every field's prompt is  [prefix: chat start + image tokens] [suffix: question,
end of turn, assistant start, answer lead].  The prefix is the same for every
field of an image, so the scanner prefills it once and reuses its KV cache; the
trainer builds its samples from the very same pieces.
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


def field_parts(processor: Any, field: str, emotion: str | None = None) -> PromptParts:
    return prompt_parts(
        processor, prompts.question(field, emotion), prompts.answer_lead(field, emotion)
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


def embed_with_images(model: Any, input_ids: Any, image_token_id: int, features: list[Any]):
    """Token embeddings with each image's features scattered over its placeholder tokens."""
    import torch

    embeds = language_model(model).get_input_embeddings()(input_ids)
    mask = input_ids == image_token_id
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
    return None
