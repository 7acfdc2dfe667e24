"""Per-family facts, as data: where the layers, projector and vision tower are, which
prompt format the family speaks, and how its encoder is exported.

The decoder layers are found in the loaded model (transformers moves them
between versions), not from a version table: we take the language model the
model itself reports, then its `layers`; a family whose get_decoder() is not
the layers' owner (BLIP-2 returns the causal-LM wrapper) names the owner's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from artnote.errors import ModelError


@dataclass(frozen=True)
class Family:
    name: str  # llava | idefics3 | artgpt4
    model_types: tuple[str, ...]  # config.model_type values of this family
    projector: str  # attribute of the inner model: the vision-to-text projection
    vision: str  # attribute of the inner model: the vision tower
    # Attribute path (from the inner model) of the module holding `layers`; None: the
    # model's own get_decoder().
    decoder: str | None = None
    # text_config.model_type values this family takes (empty: any).
    text_types: tuple[str, ...] = ()
    # "chat": the processor's chat template with its image token;
    # "minigpt4": MiniGPT-4's ###Human/###Assistant prompt, built by artnote (inputs.py).
    prompt: str = "chat"
    # How the encoder path is exported (encoder.py / onnx_paths.py): "llava" (whole
    # images through tower + projector), "idefics3" (tiles), "blip2" (tower + Q-Former +
    # projection).
    encoder: str = "llava"
    # Modules and parameters of the inner model on the encoder path besides the vision
    # tower and projector (sampled into the export's fingerprint; kept out of quantization).
    encoder_extra: tuple[str, ...] = ()

    @property
    def tiled(self) -> bool:
        """Whether the processor cuts an image into tiles (pixel_values (B, tiles, 3, H, W))."""
        return self.encoder == "idefics3"


FAMILIES: tuple[Family, ...] = (
    Family("llava", ("llava",), projector="multi_modal_projector", vision="vision_tower"),
    # SmolVLM-256M/500M ship as idefics3; SmolVLM2 as smolvlm: same layout.
    Family(
        "idefics3",
        ("idefics3", "smolvlm"),
        projector="connector",
        vision="vision_model",
        encoder="idefics3",
    ),
    # ArtGPT-4 and plain MiniGPT-4: EVA ViT + BLIP-2 Q-Former + a linear projection into a
    # Llama (Vicuna), saved as transformers' BLIP-2 with a Llama text config.
    Family(
        "artgpt4",
        ("blip-2",),
        projector="language_projection",
        vision="vision_model",
        decoder="language_model.model",
        text_types=("llama",),
        prompt="minigpt4",
        encoder="blip2",
        encoder_extra=("qformer", "query_tokens"),
    ),
)

# Names users type for a family (CLI, tiny models) -> canonical name.
ALIASES = {
    "llava": "llava",
    "smolvlm": "idefics3",
    "idefics3": "idefics3",
    "artgpt4": "artgpt4",
    "minigpt4": "artgpt4",
}


def family_for(model_type: str, text_type: str | None = None) -> Family:
    """The family of a config's model_type (and, where it matters, its text model's)."""
    for family in FAMILIES:
        if model_type in family.model_types:
            if family.text_types and text_type is not None and text_type not in family.text_types:
                raise ModelError(
                    f"model type {model_type!r} with a {text_type!r} language model is not "
                    f"supported (only {', '.join(family.text_types)})"
                )
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ModelError(f"model type {model_type!r} is not supported (supported: {known})")


def family_of_config(config: Any) -> Family:
    text = getattr(config, "text_config", None)
    return family_for(config.model_type, getattr(text, "model_type", None))


def inner_model(model: Any) -> Any:
    """The VLM's base model (holding vision tower, projector and language model)."""
    return getattr(model, "model", model)


def language_model(model: Any) -> Any:
    """The module holding the decoder layers (a LlamaModel, ...), from the family's data."""
    inner = inner_model(model)
    path = None
    text = getattr(getattr(model, "config", None), "text_config", None)
    if text is not None:  # a VLM: its family says where the layers are
        for family in FAMILIES:
            if model.config.model_type in family.model_types:
                path = family.decoder
    try:
        decoder = inner.get_submodule(path) if path else inner.get_decoder()
    except AttributeError:
        decoder = None
    if not hasattr(decoder, "layers"):
        raise ModelError(f"cannot find the decoder layers of {type(model).__name__}")
    return decoder


def decoder_layers(model: Any) -> list[Any]:
    layers = list(language_model(model).layers)
    for layer in layers:
        for attr in ("self_attn", "input_layernorm", "post_attention_layernorm", "mlp"):
            if not hasattr(layer, attr):
                raise ModelError(
                    f"decoder layer {type(layer).__name__} has no {attr}: adapters cannot be placed"
                )
    return layers


def projector(model: Any, family: Family) -> Any:
    return getattr(inner_model(model), family.projector)


def vision_tower(model: Any, family: Family) -> Any:
    return getattr(inner_model(model), family.vision)
