"""Each family's encoder path in two parts: the frozen part (exported to ONNX) and the
trainable projection (always run in torch).

    image -> [frozen: vision tower (+ BLIP-2's Q-Former)] -> features -> [project] -> embeddings

The frozen module is batched over images (or tiles) with no per-image Python list,
so the exported graph keeps a dynamic first axis:

- llava: vision tower hidden states at the chosen layer(s); then the multi-modal projector;
- idefics3: vision tower over whole tiles; then the connector (pixel shuffle + linear);
- blip2 (artgpt4): vision tower -> Q-Former (its queries cross-attending to the
  patches); then the language projection: the LLM sees the 32 projected query outputs.

Why the split: fine-tuning retrains the projection (ArtGPT-4's trainable set) and
never the frozen part. The scanner and the trainer therefore share the frozen
part as it is, in the same ONNX precision (the trainer caches its output on disk,
trainer/features.py), and both run the live projection in torch: what the adapters
learn from is what the scan feeds them, and a retrained adapter needs no new export.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

from artnote.errors import ModelError
from artnote.model.families import inner_model, projector, vision_tower


def encoder_modules(loaded: Any) -> tuple[Any, Any]:
    """(vision tower, projector or connector): the ends of the path that is exported."""
    return vision_tower(loaded.model, loaded.family), projector(loaded.model, loaded.family)


def encoder_extra(loaded: Any) -> list[Any]:
    """The path's other modules and parameters (BLIP-2's Q-Former and query tokens)."""
    inner = inner_model(loaded.model)
    return [getattr(inner, name) for name in loaded.family.encoder_extra]


def frozen_path(loaded: Any, dtype: Any, live: bool = False) -> Any:
    """A module computing the frozen features (before the projection), batched over images
    or tiles: the part exported to ONNX (a CPU copy in `dtype` where the model is elsewhere
    or in another dtype), or with `live` the model's own modules as they are."""
    vision = vision_tower(loaded.model, loaded.family)
    copy = not live and (loaded.device.type != "cpu" or next(vision.parameters()).dtype != dtype)
    if copy:
        vision = cpu_copy(vision, dtype)
    recipe = loaded.family.encoder
    if recipe == "llava":
        return _llava_path(loaded, vision)
    if recipe == "idefics3":
        return _idefics3_path(loaded, vision)
    if recipe == "blip2":
        return _blip2_path(loaded, vision, dtype if copy else None)
    raise ModelError(f"family {loaded.family.name} has no encoder export {recipe!r}")


def _llava_path(loaded: Any, vision: Any) -> Any:
    import torch
    from torch import nn

    config = inner_model(loaded.model).config
    # Written out (LlavaModel.get_image_features) because its per-image list would fix
    # the batch size in the graph.
    layer = config.vision_feature_layer
    layers = [layer] if isinstance(layer, int) else list(layer)
    crop = 1 if config.vision_feature_select_strategy == "default" else 0  # the CLS token

    class LlavaPath(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision = vision

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            states = self.vision(pixel_values, output_hidden_states=True).hidden_states
            return torch.cat([states[i][:, crop:] for i in layers], dim=-1)

    return LlavaPath()


def _idefics3_path(loaded: Any, vision: Any) -> Any:
    import torch
    from torch import nn

    patch = inner_model(loaded.model).config.vision_config.patch_size

    class Idefics3Path(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision = vision

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            n, _, h, w = pixel_values.shape
            whole = torch.ones(
                (n, h // patch, w // patch), dtype=torch.bool, device=pixel_values.device
            )
            hidden = self.vision.embeddings(pixel_values=pixel_values, patch_attention_mask=whole)
            # Idefics3VisionTransformer.forward with no attention mask: all patches of a
            # whole tile see each other, as with the all-true mask, without masking ops.
            hidden = self.vision.encoder(inputs_embeds=hidden, attention_mask=None)
            return self.vision.post_layernorm(hidden.last_hidden_state)

    return Idefics3Path()


def _blip2_path(loaded: Any, vision: Any, dtype: Any) -> Any:
    import torch
    from torch import nn

    inner = inner_model(loaded.model)
    qformer, queries = inner.qformer, inner.query_tokens
    # transformers keeps the Q-Former in float32 (_keep_in_fp32_modules); the export runs
    # it in the export's dtype like the rest: the self-check bounds what that costs.
    if dtype is not None and (
        loaded.device.type != "cpu" or next(qformer.parameters()).dtype != dtype
    ):
        qformer = cpu_copy(qformer, dtype)
        queries = nn.Parameter(queries.detach().to("cpu", dtype), requires_grad=False)

    class Blip2Path(nn.Module):
        """Blip2ForConditionalGeneration.get_image_features up to the projection, written out."""

        def __init__(self) -> None:
            super().__init__()
            self.vision, self.qformer = vision, qformer
            self.queries = queries

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            patches = self.vision(pixel_values=pixel_values).last_hidden_state
            n = patches.shape[0]
            seen = torch.ones(patches.shape[:-1], dtype=torch.long, device=patches.device)
            out = self.qformer(
                query_embeds=self.queries.expand(n, -1, -1),
                encoder_hidden_states=patches,
                encoder_attention_mask=seen,
            ).last_hidden_state
            return out.to(patches.dtype)

    return Blip2Path()


def project(loaded: Any, features: Any) -> Any:
    """The live projection (trainable, never exported): frozen features (N, tokens, F) of
    N images or tiles -> embeddings (N, tokens', hidden) in the projection's dtype."""
    proj = projector(loaded.model, loaded.family)
    weight = next(p for p in proj.parameters() if p.is_floating_point())
    return proj(features.to(weight.device, weight.dtype))


def torch_frozen(loaded: Any, pixel_inputs: dict[str, Any]) -> list[Any]:
    """The frozen features of each image, in torch (the live modules, no copy):
    one (tokens, F) tensor per image, or (tiles, tokens, F) for a tiled family.

    What the ONNX file computes; for SmolVLM also tiles with padding inside, which
    the export does not take (the same steps as Idefics3Model.get_image_features).
    """

    inner = inner_model(loaded.model)
    vision = vision_tower(loaded.model, loaded.family)
    dtype = next(vision.parameters()).dtype
    device = next(vision.parameters()).device
    pixels = pixel_inputs["pixel_values"].to(device, dtype)
    # The frozen part always runs as in a scan: a model in training mode (fine-tuning)
    # would apply the Q-Former's dropout (0.1 in BLIP-2) to features that get cached.
    with _eval_mode([vision, *[m for m in encoder_extra(loaded) if hasattr(m, "train")]]):
        return _torch_frozen(loaded, inner, vision, dtype, device, pixels, pixel_inputs)


def _torch_frozen(loaded, inner, vision, dtype, device, pixels, pixel_inputs) -> list[Any]:
    import torch

    if not loaded.family.tiled:
        return list(frozen_path(loaded, dtype, live=True)(pixels))
    batch, tiles = pixels.shape[:2]
    flat = pixels.reshape(batch * tiles, *pixels.shape[2:])
    real = flat.reshape(batch * tiles, -1).ne(0.0).any(dim=1)
    counts = real.view(batch, tiles).sum(dim=1).tolist()
    flat = flat[real].contiguous()
    mask = pixel_inputs.get("pixel_attention_mask")
    if mask is None:
        mask = torch.ones((flat.shape[0], *flat.shape[2:]), dtype=torch.bool, device=device)
    else:
        mask = mask.to(device).reshape(batch * tiles, *mask.shape[2:])[real].contiguous()
    patch = inner.config.vision_config.patch_size
    grid = mask.unfold(1, patch, patch).unfold(2, patch, patch)
    patch_mask = grid.sum(dim=(-1, -2)) > 0
    hidden = vision(pixel_values=flat, patch_attention_mask=patch_mask).last_hidden_state
    return list(hidden.split(counts))


@contextlib.contextmanager
def _eval_mode(modules: list[Any]) -> Iterator[None]:
    """Modules in eval mode (no dropout) for the block, their own modes restored after."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


def cpu_copy(module: Any, dtype: Any) -> Any:
    """Copy a module to the CPU in `dtype` without first duplicating it on the GPU."""
    import torch

    memo: dict[int, Any] = {}
    for t in [*module.parameters(), *module.buffers()]:
        clone = t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype)
        is_param = isinstance(t, torch.nn.Parameter)
        memo[id(t)] = torch.nn.Parameter(clone, requires_grad=False) if is_param else clone
    return copy.deepcopy(module, memo)
