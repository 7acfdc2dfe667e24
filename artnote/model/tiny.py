"""Tiny RANDOM-weight models of the real architectures, built offline.

They exist so that tests, `artnote selftest` and smoke runs exercise exactly the
code path a real checkpoint takes (AutoProcessor + AutoModelForImageTextToText
from a folder) without downloading anything. Their text is meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from artnote.emotions import EMOTIONS
from artnote.errors import ArtnoteError, ConfigError
from artnote.model import prompts

TINY_FAMILIES = ("llava", "smolvlm", "artgpt4")
RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: built by `artnote models tiny` for tests; its text is meaningless."
)

# The chat templates follow the real checkpoints' (llava-1.5, SmolVLM) so the
# prompt path is the same. artgpt4 has none: artnote builds MiniGPT-4's prompt itself.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_CORPUS = [
    "A small ship fights a stormy sea under a dark sky.",
    "A portrait of a woman in a wide hat, painted in bold unmixed colours.",
    "Water lilies float on a pond that mirrors the sky in soft blues and greens.",
    "A figure screams on a bridge under a swirling orange sky.",
    "A great wave curls over boats, with Mount Fuji small in the distance.",
    "Flowers on a gold screen, painted with fine ink lines and flat colour.",
    "A night sky of swirling stars above a quiet village and a dark cypress.",
    "Abstract shapes in grey, pink and blue suggest a dancer in motion.",
    "Oil on canvas, woodblock print, ink and colour on silk, watercolour on paper.",
    "The composition leads the eye from the foreground to the horizon.",
    "Thick brushwork and vivid contrast give the scene energy and movement.",
    "The muted palette and soft light create a calm, contemplative mood.",
] + [f"It makes me feel {e} because the colours and the light." for e in EMOTIONS]


def build_tiny_model(
    out_dir: str | Path, family: str, seed: int = 0, *, force: bool = False
) -> Path:
    """Write a tiny random model of `family` to out_dir; return the folder.

    out_dir must be empty, missing, or an earlier tiny model, unless force: random
    weights written over a real checkpoint would ruin it.
    """
    if family not in TINY_FAMILIES:
        raise ArtnoteError(f"unknown family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    out = Path(out_dir)
    if not force:
        _check_writable(out)
    import torch
    from transformers import AutoModelForImageTextToText

    from artnote.model.load import quiet_transformers

    quiet_transformers()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create folder {out}: {exc.strerror or exc}") from None
    torch.manual_seed(seed)
    tokenizer = family_tokenizer(family)
    config, processor = config_and_processor(family, tokenizer, TINY_SHAPES[family])
    config.artnote_note = RANDOM_WEIGHTS_NOTE
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "README.md").write_text(
        f"# tiny {family} model\n\n{RANDOM_WEIGHTS_NOTE}\n", encoding="utf-8"
    )
    return out


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder: choose another folder")
    if not out.is_dir() or not any(out.iterdir()) or _is_tiny(out):
        return
    raise ConfigError(
        f"folder {out} is not empty and does not hold a tiny model: choose an empty "
        "folder, or pass --force to write random weights over what is there"
    )


def _is_tiny(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("artnote_note") == RANDOM_WEIGHTS_NOTE


# The special tokens the Idefics3/SmolVLM processor expects in its tokenizer.
IDEFICS3_SPECIAL = [
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


def train_tokenizer(special: list[str], extra: tuple[str, ...] = ()):
    """A small byte-level BPE tokenizer trained on the spot (no download), left padding.

    extra: more training text (a family's prompt words, so they become tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base_special = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = _CORPUS + [prompts.question(f, "awe") for f in prompts.FIELDS]
    corpus += [prompts.answer_lead("explanation", e) for e in EMOTIONS]
    corpus += list(extra)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=base_special + special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=special,
        padding_side="left",
    )


_TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    # Wide enough logits that a frozen head can express a confident answer
    # (real checkpoints have that range; 0.02 gives a near-uniform softmax).
    "initializer_range": 0.25,
}

# Tiny shapes of the two families; bench/scan_bench.py passes the real ones.
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "llava": {
        "vision": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
        },
        "text": _TINY_TEXT,
    },
    "smolvlm": {
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        "text": _TINY_TEXT,
        # Splitting on, as in SmolVLM: a large image becomes up to 2x2 tiles plus a
        # global view, so batches really hold images with different token counts.
        "scale_factor": 2,
        "image_seq_len": 4,
        "longest_edge": 64,
        "tile": 32,
    },
    # MiniGPT-4 / ArtGPT-4 as BLIP-2 + Llama: the real one has a ViT-g, a 12-layer Q-Former
    # with 32 queries and a 7B/13B Vicuna; 8 queries here keep the prefix short.
    "artgpt4": {
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        "qformer": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "cross_attention_frequency": 1,
        },
        "num_query_tokens": 8,
        "text": _TINY_TEXT,
    },
}


def config_and_processor(family: str, tokenizer, shape: dict[str, Any]):
    """A transformers config and processor of `family` with the sizes in `shape`."""
    text = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        **shape["text"],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = shape["vision"]
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if family == "llava":
        from transformers import CLIPImageProcessor, LlavaConfig, LlavaProcessor

        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=image_token_id,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        size = vision["image_size"]
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=vision["patch_size"],
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_TEMPLATE,
        )
        return config, processor
    if family == "artgpt4":
        return _blip2_config_and_processor(tokenizer, shape, text)
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=shape["scale_factor"],
        image_token_id=image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=True,
        size={"longest_edge": shape["longest_edge"]},
        max_image_size={"longest_edge": shape["tile"]},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=shape["image_seq_len"],
        chat_template=SMOLVLM_TEMPLATE,
    )
    return config, processor


def _blip2_config_and_processor(tokenizer, shape: dict[str, Any], text: dict[str, Any]):
    """The layout artnote.model.convert_artgpt4 writes: BLIP-2 with a Llama text model,
    Blip2Processor with a BLIP image processor (fixed square input) and the tokenizer."""
    from transformers import Blip2Config, Blip2Processor

    try:  # the PIL image processor: the default one needs torchvision
        from transformers import BlipImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import BlipImageProcessor as ImageProcessor

    vision = shape["vision"]
    size = vision["image_size"]
    processor = Blip2Processor(
        image_processor=ImageProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        num_query_tokens=shape["num_query_tokens"],
    )
    config = Blip2Config(
        vision_config=vision,
        qformer_config={**shape["qformer"], "encoder_hidden_size": vision["hidden_size"]},
        text_config={**text, "vocab_size": len(tokenizer)},  # the processor may add <image>
        num_query_tokens=shape["num_query_tokens"],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return config, processor


# MiniGPT-4's prompt words, so that the tiny tokenizer has tokens for '###' and the roles.
MINIGPT4_CORPUS = ("###Human: <Img></Img> ###Assistant: ###", "###", "###Human:", "###Assistant:")


def family_tokenizer(family: str):
    if family == "artgpt4":
        return train_tokenizer(["<image>"], extra=MINIGPT4_CORPUS)
    return train_tokenizer(["<image>"] if family == "llava" else IDEFICS3_SPECIAL)


def describe_tiny(path: Path) -> dict:
    cfg = json.loads((path / "config.json").read_text())
    return {"path": str(path), "model_type": cfg.get("model_type"), "note": cfg.get("artnote_note")}
