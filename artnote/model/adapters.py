"""ArtGPT-4 bottleneck adapters: attach, choose the trainable set, save and load.

Per decoder layer, on the residual stream right after the attention residual add
and before the post-attention norm and MLP (ArtGPT-4, minigpt4/models/
modeling_llama.py `LlamaDecoderLayer.forward`):

    h = x + attn(norm1(x));  h = h + up(GELU(down(h)));  out = h + mlp(norm2(h))

transformers' layer code is not copied or edited. A forward pre-hook on the
layer keeps its input x (the residual) and a forward hook on `self_attn` returns
attn + delta(x + attn), which makes the layer's own `x + attn` equal to the
adapted h. `up` starts at zero, so an untrained adapter is an exact identity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from artnote import __version__
from artnote.errors import AdapterError
from artnote.files import write_bytes, write_error, write_text
from artnote.model.families import Family, decoder_layers, language_model, projector

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
ATTR = "artnote_adapters"  # where the adapters live on the model (so .to() moves them)


class BottleneckAdapter(nn.Module):
    """y = x + up(GELU(down(x))); hidden -> hidden/reduction -> hidden, with bias."""

    def __init__(self, hidden: int, reduction: int = 4) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, hidden // reduction)
        self.up = nn.Linear(hidden // reduction, hidden)
        self.act = nn.GELU()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self._residual: torch.Tensor | None = None

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.delta(h)


@dataclass
class AdapterConfig:
    base_model: str
    base_revision: str | None
    base_fingerprint: str
    family: str
    reduction: int
    layers: int
    hidden_size: int
    trainable: list[str]
    artnote_version: str = __version__
    content_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def attach_adapters(model: nn.Module, reduction: int = 4) -> nn.ModuleList:
    """Add one adapter per decoder layer (zero-initialised) and hook it in place."""
    if hasattr(model, ATTR):
        raise AdapterError("adapters are already attached to this model")
    layers = decoder_layers(model)
    hidden = language_model(model).config.hidden_size
    if hidden % reduction:
        raise AdapterError(f"hidden size {hidden} is not divisible by reduction {reduction}")
    ref = layers[0].post_attention_layernorm.weight
    adapters = nn.ModuleList(BottleneckAdapter(hidden, reduction) for _ in layers)
    # Cast once, here: the reference code swaps Parameters inside forward.
    adapters.to(device=ref.device, dtype=ref.dtype if ref.dtype.is_floating_point else None)
    setattr(model, ATTR, adapters)
    for layer, adapter in zip(layers, adapters, strict=True):
        layer.register_forward_pre_hook(_keep_residual(adapter), with_kwargs=True)
        layer.self_attn.register_forward_hook(_adapt_attention(adapter))
    return adapters


def _keep_residual(adapter: BottleneckAdapter):
    def hook(_module, args, kwargs):
        adapter._residual = args[0] if args else kwargs["hidden_states"]

    return hook


def _adapt_attention(adapter: BottleneckAdapter):
    def hook(_module, _args, output):
        attn = output[0] if isinstance(output, tuple) else output
        residual, adapter._residual = adapter._residual, None
        if residual is None:
            raise AdapterError("adapter hook ran without the layer's input")
        adapted = attn + adapter.delta(residual + attn)
        return (adapted, *output[1:]) if isinstance(output, tuple) else adapted

    return hook


def adapters_of(model: nn.Module) -> nn.ModuleList | None:
    return getattr(model, ATTR, None)


def trainable_names(model: nn.Module, family: Family) -> list[str]:
    """ArtGPT-4's trainable set: adapters, every post-attention norm, even layers'
    input norm (0-based), and the vision-to-text projector."""
    adapters = adapters_of(model)
    if adapters is None:
        raise AdapterError("attach adapters before choosing the trainable set")
    chosen = _base_trainable_ids(model, family)
    chosen.update(id(p) for p in adapters.parameters())
    return [name for name, p in model.named_parameters() if id(p) in chosen]


def _base_trainable_ids(model: nn.Module, family: Family) -> set[int]:
    """The trainable set without the adapters (which may not be attached yet)."""
    chosen: set[int] = set()
    for i, layer in enumerate(decoder_layers(model)):
        chosen.update(id(p) for p in layer.post_attention_layernorm.parameters())
        if i % 2 == 0:
            chosen.update(id(p) for p in layer.input_layernorm.parameters())
    chosen.update(id(p) for p in projector(model, family).parameters())
    return chosen


def mark_trainable(model: nn.Module, family: Family) -> list[str]:
    """Freeze everything except the trainable set; return its parameter names."""
    names = set(trainable_names(model, family))
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    return sorted(names)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def base_fingerprint(model: nn.Module, *, legacy: bool = False) -> str:
    """Identify the base weights (not just the name, which may be a hub id or a folder).

    256 values spread over the input embeddings enter by their sign only (negative,
    zero, positive), which no cast between float32, bfloat16 and float16 changes: the
    same base loaded in any of them (finetune runs float32, a GPU scan bfloat16 or
    float16) has one fingerprint. `legacy` gives what adapters saved by earlier
    versions carry (the first 64 rows' values as loaded), so they stay loadable onto
    a base loaded in the dtype they were saved from.
    """
    cfg = model.config.to_dict()
    keys = {k: cfg.get(k) for k in ("model_type", "image_token_id")}
    text = language_model(model).config
    keys.update(hidden=text.hidden_size, layers=text.num_hidden_layers, vocab=text.vocab_size)
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode())
    weight = language_model(model).get_input_embeddings().weight.detach()
    if legacy:
        digest.update(weight[:64].float().cpu().numpy().tobytes())
    else:
        flat = weight.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)][:256]
        digest.update(bytes((torch.sign(sample.float()).to(torch.int8) + 1).cpu().tolist()))
    return digest.hexdigest()[:16]


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    family: Family,
    base_model: str,
    base_revision: str | None,
    extra: dict[str, Any] | None = None,
) -> AdapterConfig:
    """Write exactly the trainable tensors and a config naming the base model, each file
    whole or not at all (artnote.files): never a half-written adapter under the real name."""
    from safetensors.torch import save

    adapters = adapters_of(model)
    if adapters is None:
        raise AdapterError("no adapters attached: nothing to save")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    names = trainable_names(model, family)
    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().to("cpu").contiguous() for n in names}
    # Serialised in memory and written by Python, so that a full disk is a clear error.
    write_bytes(out / ADAPTER_FILE, save(tensors))
    config = AdapterConfig(
        base_model=base_model,
        base_revision=base_revision,
        base_fingerprint=base_fingerprint(model),
        family=family.name,
        reduction=adapters[0].down.in_features // adapters[0].down.out_features,
        layers=len(adapters),
        hidden_size=adapters[0].down.in_features,
        trainable=names,
        content_hash=file_hash(out / ADAPTER_FILE),
        extra=extra or {},
    )
    write_text(out / CONFIG_FILE, json.dumps(asdict(config), indent=2))
    return config


def read_adapter_config(adapter_dir: str | Path) -> AdapterConfig:
    path = Path(adapter_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"not an adapter folder (no {CONFIG_FILE}): {adapter_dir}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise AdapterError(f"adapter config {path} is not a JSON object")
    known = {f for f in AdapterConfig.__dataclass_fields__}
    # Old adapter configs stay loadable: unknown keys go to extra, missing ones default.
    extra = {k: v for k, v in data.items() if k not in known}
    data = {k: v for k, v in data.items() if k in known}
    if not isinstance(data.setdefault("extra", {}), dict):
        raise AdapterError(f"adapter config {path}: extra must be a JSON object")
    data["extra"].update(extra)
    try:
        config = AdapterConfig(**data)
    except TypeError as exc:
        raise AdapterError(f"adapter config {path} is incomplete: {exc}") from None
    _check_config_types(config, path)
    return config


def _check_config_types(config: AdapterConfig, path: Path) -> None:
    """JSON can hold anything: refuse what would fail later with a confusing error."""
    for name in ("base_model", "base_fingerprint", "family"):
        if not isinstance(getattr(config, name), str):
            raise AdapterError(f"adapter config {path}: {name} must be a string")
    if config.base_revision is not None and not isinstance(config.base_revision, str):
        raise AdapterError(f"adapter config {path}: base_revision must be a string or null")
    for name in ("reduction", "layers", "hidden_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdapterError(
                f"adapter config {path}: {name} must be a positive integer, not {value!r}"
            )
    if not isinstance(config.trainable, list) or not all(
        isinstance(n, str) for n in config.trainable
    ):
        raise AdapterError(f"adapter config {path}: trainable must be a list of names")


def load_adapter(
    model: nn.Module, adapter_dir: str | Path, *, family: Family, base_model: str
) -> AdapterConfig:
    """Attach (if needed) and fill adapters from a folder; refuse another base model.

    Everything is checked before the model is touched: a refused file leaves it as it was.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_adapter_config(adapter_dir)
    fingerprints = (base_fingerprint(model), base_fingerprint(model, legacy=True))
    if config.base_fingerprint not in fingerprints or config.family != family.name:
        raise AdapterError(
            f"adapter {adapter_dir} was trained for base model {config.base_model!r} "
            f"and cannot be loaded onto {base_model!r}"
        )
    path = Path(adapter_dir) / ADAPTER_FILE
    try:
        tensors = load_file(str(path))  # safetensors: no pickle, no code
    except (OSError, SafetensorError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from None
    targets = _adapter_targets(model, family, config.reduction)
    if set(tensors) != set(targets):
        missing, unexpected = set(targets) - set(tensors), set(tensors) - set(targets)
        raise AdapterError(
            f"adapter {adapter_dir} does not fit this model "
            f"({len(missing)} tensors missing, {len(unexpected)} unexpected)"
        )
    for name, tensor in sorted(tensors.items()):
        shape, dtype = targets[name]
        if tensor.shape != shape:
            raise AdapterError(
                f"adapter tensor {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(shape)}"
            )
        if not tensor.dtype.is_floating_point:
            raise AdapterError(f"adapter tensor {name} is {tensor.dtype}, not floating point")
        if not dtype.is_floating_point:
            raise AdapterError(
                f"model parameter {name} is {dtype} (quantized?), so the adapter cannot be "
                'loaded into it: load the model with [model] quantization = "none"'
            )
    if adapters_of(model) is None:
        attach_adapters(model, reduction=config.reduction)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name].dtype))
    config.content_hash = config.content_hash or file_hash(path)
    return config


def _adapter_targets(
    model: nn.Module, family: Family, reduction: int
) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Name -> (shape, dtype) of every tensor an adapter file must fill, without attaching."""
    params = dict(model.named_parameters())
    if adapters_of(model) is not None:
        return {n: (params[n].shape, params[n].dtype) for n in trainable_names(model, family)}
    chosen = _base_trainable_ids(model, family)
    targets = {n: (p.shape, p.dtype) for n, p in params.items() if id(p) in chosen}
    hidden = language_model(model).config.hidden_size
    if hidden % reduction:
        raise AdapterError(f"hidden size {hidden} is not divisible by reduction {reduction}")
    ref = decoder_layers(model)[0].post_attention_layernorm.weight.dtype
    dtype = ref if ref.is_floating_point else torch.get_default_dtype()  # as attach_adapters
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in BottleneckAdapter(hidden, reduction).named_parameters()}
    for i in range(len(decoder_layers(model))):
        targets.update({f"{ATTR}.{i}.{n}": (shape, dtype) for n, shape in shapes.items()})
    return targets


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
