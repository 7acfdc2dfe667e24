"""Per-family facts: which submodules are the language model and the projector.

The decoder layers are found in the loaded model (transformers moves them
between versions), not from a version table: we take the language model the
model itself reports, then its `layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from artnote.errors import ModelError


@dataclass(frozen=True)
class Family:
    name: str  # llava | idefics3
    model_types: tuple[str, ...]  # config.model_type values of this family
    projector: str  # attribute of the inner model: the vision-to-text projection
    vision: str  # attribute of the inner model: the vision tower


FAMILIES: tuple[Family, ...] = (
    Family("llava", ("llava",), projector="multi_modal_projector", vision="vision_tower"),
    # SmolVLM-256M/500M ship as idefics3; SmolVLM2 as smolvlm: same layout.
    Family("idefics3", ("idefics3", "smolvlm"), projector="connector", vision="vision_model"),
)

# Names users type for a family (CLI, tiny models) -> canonical name.
ALIASES = {"llava": "llava", "smolvlm": "idefics3", "idefics3": "idefics3"}


def family_for(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ModelError(f"model type {model_type!r} is not supported (supported: {known})")


def inner_model(model: Any) -> Any:
    """The VLM's base model (holding vision tower, projector and language model)."""
    return getattr(model, "model", model)


def language_model(model: Any) -> Any:
    decoder = inner_model(model).get_decoder()
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
