"""Image -> embeddings: exactly what the language model receives for each image.

`TorchEncoder` runs the model's own vision tower and projector; it is the
reference. Each encoder returns one tensor (tokens, hidden) per image, in the
language model's dtype and device, so callers never see pixels again.
"""

from __future__ import annotations

from typing import Any, Protocol

from artnote.model.families import inner_model
from artnote.model.load import LoadedModel


class ImageEncoder(Protocol):
    name: str

    def encode(self, pixel_inputs: dict[str, Any]) -> list[Any]: ...


class TorchEncoder:
    """The model's get_image_features (vision tower + projector/connector)."""

    name = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    def encode(self, pixel_inputs: dict[str, Any]) -> list[Any]:
        import torch

        inner = inner_model(self.loaded.model)
        vision_dtype = next(inner.get_submodule(self.loaded.family.vision).parameters()).dtype
        moved = {
            k: v.to(self.loaded.device, dtype=vision_dtype if v.is_floating_point() else None)
            for k, v in pixel_inputs.items()
        }
        with torch.inference_mode():
            out = inner.get_image_features(**moved, return_dict=True)
        return [f.reshape(-1, f.shape[-1]).to(self.loaded.dtype) for f in out.pooler_output]


def make_encoder(loaded: LoadedModel, kind: str) -> ImageEncoder:
    if kind != "torch":
        raise ValueError(f"unknown encoder {kind!r}")
    return TorchEncoder(loaded)
