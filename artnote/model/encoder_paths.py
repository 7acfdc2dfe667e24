"""What each family's encoder path is, as one module to export: image -> embeddings.

Each module computes exactly what the model's get_image_features gives the
language model, batched over images (or tiles) with no per-image Python list,
so that the exported graph keeps a dynamic first axis:

- llava: vision tower hidden states at the chosen layer(s) -> multi-modal projector;
- idefics3: vision tower over whole tiles -> connector;
- blip2 (artgpt4): vision tower -> Q-Former (its queries cross-attending to the
  patches) -> language projection: the LLM sees the 32 projected query outputs.
"""

from __future__ import annotations

import copy
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


def encoder_path(loaded: Any, dtype: Any) -> Any:
    """A module computing what get_image_features returns, batched over images or tiles."""
    vision, proj = encoder_modules(loaded)
    if loaded.device.type != "cpu" or next(vision.parameters()).dtype != dtype:
        vision, proj = cpu_copy(vision, dtype), cpu_copy(proj, dtype)
    recipe = loaded.family.encoder
    if recipe == "llava":
        return _llava_path(loaded, vision, proj)
    if recipe == "idefics3":
        return _idefics3_path(loaded, vision, proj)
    if recipe == "blip2":
        return _blip2_path(loaded, vision, proj, dtype)
    raise ModelError(f"family {loaded.family.name} has no encoder export {recipe!r}")


def _llava_path(loaded: Any, vision: Any, proj: Any) -> Any:
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
            self.vision, self.proj = vision, proj

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            states = self.vision(pixel_values, output_hidden_states=True).hidden_states
            return self.proj(torch.cat([states[i][:, crop:] for i in layers], dim=-1))

    return LlavaPath()


def _idefics3_path(loaded: Any, vision: Any, proj: Any) -> Any:
    import torch
    from torch import nn

    patch = inner_model(loaded.model).config.vision_config.patch_size

    class Idefics3Path(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision, self.proj = vision, proj

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            n, _, h, w = pixel_values.shape
            whole = torch.ones(
                (n, h // patch, w // patch), dtype=torch.bool, device=pixel_values.device
            )
            hidden = self.vision.embeddings(pixel_values=pixel_values, patch_attention_mask=whole)
            # Idefics3VisionTransformer.forward with no attention mask: all patches of a
            # whole tile see each other, as with the all-true mask, without masking ops.
            hidden = self.vision.encoder(inputs_embeds=hidden, attention_mask=None)
            return self.proj(self.vision.post_layernorm(hidden.last_hidden_state))

    return Idefics3Path()


def _blip2_path(loaded: Any, vision: Any, proj: Any, dtype: Any) -> Any:
    import torch
    from torch import nn

    inner = inner_model(loaded.model)
    qformer, queries = inner.qformer, inner.query_tokens
    # transformers keeps the Q-Former in float32 (_keep_in_fp32_modules); the export runs
    # it in the export's dtype like the rest: the self-check bounds what that costs.
    if loaded.device.type != "cpu" or next(qformer.parameters()).dtype != dtype:
        qformer = cpu_copy(qformer, dtype)
        queries = nn.Parameter(queries.detach().to("cpu", dtype), requires_grad=False)

    class Blip2Path(nn.Module):
        """Blip2ForConditionalGeneration.get_image_features, written out."""

        def __init__(self) -> None:
            super().__init__()
            self.vision, self.qformer, self.proj = vision, qformer, proj
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
            return self.proj(out.to(patches.dtype))

    return Blip2Path()


def cpu_copy(module: Any, dtype: Any) -> Any:
    """Copy a module to the CPU in `dtype` without first duplicating it on the GPU."""
    import torch

    memo: dict[int, Any] = {}
    for t in [*module.parameters(), *module.buffers()]:
        clone = t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype)
        is_param = isinstance(t, torch.nn.Parameter)
        memo[id(t)] = torch.nn.Parameter(clone, requires_grad=False) if is_param else clone
    return copy.deepcopy(module, memo)
