"""Load a Hugging Face VLM (hub id or local folder) the same way for every checkpoint.

Real checkpoints and the tiny random models of `artnote models tiny` take this
one path: AutoProcessor + AutoModelForImageTextToText. The network is touched
only when the weights are not on disk, and then only after a quick check that
the hub can be reached at all, so an offline machine gets one clear error in
seconds instead of a minute of retries.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from artnote.config import ModelSettings
from artnote.errors import ConfigError, ModelError, ModelNotFoundError
from artnote.model.families import Family, family_of_config

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (…ForConditionalGeneration)
    processor: Any
    family: Family
    name: str  # as the user gave it
    revision: str | None  # resolved commit when known
    device: Any  # torch.device
    dtype: Any  # torch.dtype of the language model


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            "--device cuda was asked for, but no CUDA GPU is available (use --device cpu)"
        )
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load processor and model; raise ModelNotFoundError with the fix when weights are missing."""
    quiet_transformers()
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = resolve_device(settings.device)
    native_gqa(device)
    dtype = resolve_dtype(settings.dtype, device)
    if settings.trust_remote_code:
        log.warning("trust_remote_code is on: code shipped with %s will run", settings.name)
    kwargs: dict[str, Any] = {
        "revision": settings.revision,
        "trust_remote_code": settings.trust_remote_code,
    }
    local = Path(settings.name).expanduser().is_dir()
    if not local:
        kwargs["local_files_only"] = _must_stay_offline(settings.name, settings.revision)
    # Weights only from safetensors: a pickled .bin checkpoint can run code when loaded.
    model_kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    quantization = _quantization_config(settings.quantization, device, dtype)
    if quantization is not None:
        model_kwargs.update(quantization_config=quantization, device_map={"": 0})
    name = str(Path(settings.name).expanduser()) if local else settings.name
    try:
        processor = AutoProcessor.from_pretrained(name, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(name, **kwargs, **model_kwargs)
    except (OSError, ValueError) as exc:
        if "safetensors" in str(exc).lower() and _has_pickled_weights(name, local):
            raise ModelError(
                f"model {settings.name!r} has only pickled weights (.bin); artnote loads "
                "safetensors only, because unpickling can run code: convert it with "
                "save_pretrained(safe_serialization=True) on a trusted machine"
            ) from exc
        if local or _looks_missing(exc):
            raise ModelNotFoundError(_how_to_get(settings.name, local)) from exc
        raise ModelError(f"cannot load model {settings.name!r}: {_first_line(exc)}") from exc
    except SafetensorError as exc:  # a truncated or corrupt file, not a missing one
        raise ModelError(
            f"the weights of model {name!r} are unreadable (incomplete copy?): "
            f"{_first_line(exc)}; copy or download them again"
        ) from exc
    family = family_of_config(model.config)
    apply_max_image_side(processor, settings.max_image_side, family)
    if quantization is None:
        try:
            model.to(device)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            raise ModelError(
                f"cannot move model {settings.name!r} to {device}: {_first_line(exc)} "
                '(try [model] quantization = "8bit" or "4bit", or --device cpu)'
            ) from exc
    model.eval()
    if getattr(processor, "tokenizer", None) is None:
        raise ModelError(f"model {settings.name!r} has no tokenizer in its processor")
    processor.tokenizer.padding_side = "left"
    revision = getattr(model.config, "_commit_hash", None) or settings.revision
    return LoadedModel(
        model=model,
        processor=processor,
        family=family,
        name=settings.name,
        revision=revision,
        device=torch.device(device),
        dtype=dtype,
    )


def apply_max_image_side(processor: Any, side: int, family: Family) -> None:
    """`[model] max_image_side`: the longest side SmolVLM's processor resizes images to
    before splitting them into tiles (its `size["longest_edge"]`; 0 keeps the model's).

    Fewer pixels, fewer tiles: 2048 (SmolVLM's default) makes up to 4x4 tiles of 512 px and
    a global view, 1024 up to 2x2 and one. Must be a multiple of the tile size, at least
    one tile. Scan and finetune both load through here; the trainer's feature cache key
    holds the processor's settings, so features of another size are never reused.
    """
    if not side:
        return
    image_processor = getattr(processor, "image_processor", None)
    tile = (getattr(image_processor, "max_image_size", None) or {}).get("longest_edge")
    if not getattr(image_processor, "do_image_splitting", False) or not tile:
        log.warning(
            "[model] max_image_side is for models that split images into tiles (SmolVLM); "
            "the %s model ignores it",
            family.name,
        )
        return
    if side < tile or side % tile:
        raise ConfigError(
            f"[model] max_image_side must be 0 (the model's default, "
            f"{image_processor.size.get('longest_edge')}) or a multiple of the model's "
            f"{tile} px tile, not {side}"
        )
    size = copy.copy(image_processor.size)  # a dict or transformers' SizeDict
    size["longest_edge"] = side
    image_processor.size = size


def check_model_available(settings: ModelSettings) -> None:
    """Fail in well under a second, before any heavy import, when the model cannot be had.

    A scan calls this first so that an offline machine hears about a missing model
    before discovery walks a large collection.
    """
    path = Path(settings.name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(_how_to_get(settings.name, local=True))
        return
    if _in_local_cache(settings.name, settings.revision):
        return
    if _must_stay_offline(settings.name, settings.revision):
        raise ModelNotFoundError(_how_to_get(settings.name, local=False))


def _quantization_config(quantization: str, device: str, dtype):
    if quantization == "none":
        return None
    if device != "cuda":
        raise ModelError(
            f"quantization = {quantization!r} needs a CUDA GPU (bitsandbytes); "
            'set [model] quantization = "none" on this machine'
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as exc:  # bitsandbytes fails in many ways on unsupported machines
        raise ModelError(
            f"quantization = {quantization!r} needs bitsandbytes, which cannot run here "
            f'({_first_line(exc)}); install artnote[gpu] or set quantization = "none"'
        ) from None
    return BitsAndBytesConfig(**quantization_kwargs(quantization, dtype))


# Kept in full precision in both modes: the vision tower and projector are small, the
# ONNX encoder path needs real weights and adapters load into the projector; lm_head
# (transformers skips it by default, but an explicit list replaces that default).
QUANTIZATION_SKIP = [
    "vision_tower",
    "vision_model",
    "multi_modal_projector",
    "connector",
    "qformer",  # BLIP-2 (artgpt4): Q-Former and projection are the encoder path too
    "language_projection",
    "lm_head",
]


def quantization_kwargs(quantization: str, dtype) -> dict[str, Any]:
    """BitsAndBytesConfig arguments for "8bit" or "4bit"."""
    skip = {"llm_int8_skip_modules": list(QUANTIZATION_SKIP)}
    if quantization == "8bit":
        return {"load_in_8bit": True, **skip}
    if quantization == "4bit":
        return {
            "load_in_4bit": True,
            "bnb_4bit_compute_dtype": dtype,
            "bnb_4bit_quant_type": "nf4",
            **skip,
        }
    raise ModelError(f'unknown quantization {quantization!r}; use "none", "8bit" or "4bit"')


def _must_stay_offline(name: str, revision: str | None = None) -> bool:
    """True when only the local cache may be used (offline, the checkpoint is cached, or
    the hub is unreachable)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return True
    if _in_local_cache(name, revision):
        return True
    return not _hub_reachable()


# A checkpoint is in the cache when its config and its weights (one file, or the index of
# the shards) are there, at the revision asked for.
_CACHED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _in_local_cache(name: str, revision: str | None = None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        def cached(filename: str) -> bool:
            return isinstance(try_to_load_from_cache(name, filename, revision=revision), str)

        return cached("config.json") and any(cached(f) for f in _CACHED_WEIGHTS)
    except Exception:  # a malformed id: let from_pretrained give its own error
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so bound the whole probe with a thread.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _has_pickled_weights(name: str, local: bool) -> bool:
    if local:
        return any(Path(name).glob("*.bin")) or any(Path(name).glob("*.pt"))
    return True  # a hub checkpoint that failed on safetensors: say why, not "not found"


def _looks_missing(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "couldn't connect",
            "cannot find",
            "can't find",
            "not found",
            "offline",
            "does not appear to have",
            "is not a local folder",
            "no such file",
            "local_files_only",
        )
    )


def _how_to_get(name: str, local: bool) -> str:
    if local:
        return (
            f"model folder {name!r} does not hold a loadable model (config.json, processor "
            "and weights); point [model] name at a folder made by `hf download` or save_pretrained"
        )
    return (
        f"model {name!r} is not on this machine and the hub cannot be reached: on a connected "
        f"machine run `hf download {name}` (then copy the cache or folder here), or set "
        "[model] name / --model to a local folder"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def native_gqa(device: str) -> None:
    """On the CPU, let SDPA read grouped key/value heads as they are under a mask.

    transformers otherwise copies every cached key and value once per query head
    (repeat_kv) whenever a mask is given, which artnote always gives: on the CPU
    that copy was a third of decoding time for SmolVLM, and torch's SDPA
    (enable_gqa) computes the same attention without it. On CUDA, SDPA has no
    fused kernel for grouped heads under a mask (it would run the slow math
    kernel), so there the copy is the faster way and the switch is turned off.
    transformers reads the switch at each call; a value the user set is kept.
    """
    global _gqa_set_here
    if _GQA_SWITCH in os.environ and not _gqa_set_here:
        return
    os.environ[_GQA_SWITCH] = "1" if device == "cpu" else "0"
    _gqa_set_here = True


_GQA_SWITCH = "TRANSFORMERS_SDPA_FORCE_GQA"
_gqa_set_here = False


def quiet_transformers() -> None:
    """Progress bars and advice from transformers would drown artnote's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
