"""What training and evaluation run with, built one way for both: the scanner's image
decoder and encoder, the objective, the image stream over the feature cache, and the
scanner's Annotator for held-out metrics.

The encoder is the one `artnote scan` makes from the same settings (ONNX Runtime, in
the same precision; see artnote.model.encoder_paths): its frozen features feed the
trainer's projector, so a sample's projected features in training are the scanner's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artnote.config import Settings
from artnote.model.load import LoadedModel
from trainer.features import FeatureCache, cache_key
from trainer.loader import ImageStream
from trainer.objectives import Objective


@dataclass
class RunContext:
    loaded: LoadedModel
    encoder: Any
    objective: Objective
    stream: ImageStream
    annotator: Any
    decode: Callable[[str], Any]  # path -> the picture the scanner would see
    cache: FeatureCache
    autocast: Callable[[], Any]  # a new autocast context for the base's dtype


def make_context(
    loaded: LoadedModel,
    settings: Settings,
    max_answer_tokens: int,
    load_image: Callable[[str], Any] | None = None,
) -> RunContext:
    """load_image: path -> picture instead of the scan's decoder (tests; then the file's
    sha256 is not checked against the sample's)."""
    from artnote.model.annotate import Annotator
    from artnote.model.encoder import cache_dir, make_encoder

    encoder = make_encoder(loaded, settings.model.encoder, settings.model.encoder_precision)
    decode = load_image or scan_decoder(loaded, settings)
    objective = Objective(loaded, encoder, max_answer_tokens=max_answer_tokens)
    fmt, prefix = objective.format, objective.prefix

    def prepare(path: str, sha256: str) -> tuple[Any, Any, dict[str, Any]]:
        if load_image is None:  # the scan's decoder: the bytes must still be the content
            check_content(path, sha256)
        enc = fmt.encode_prefix(prefix, [decode(path)])
        return enc.input_ids, enc.image_mask, enc.pixels

    key = cache_key(loaded, encoder, prefix, settings.scan.max_pixels)
    cap = int(settings.train.feature_cache_gb * 1e9)
    cache = FeatureCache(cache_dir() / "features", key, cap)
    train = settings.train
    stream = ImageStream(cache, encoder, prepare, train.loader_workers, train.prefetch)
    annotator = Annotator(loaded, settings.generation, encoder=encoder)
    return RunContext(
        loaded, encoder, objective, stream, annotator, decode, cache, lambda: autocast(loaded)
    )


def float32_masters(loaded: LoadedModel, adapter_dir: Path | None = None) -> list[Any]:
    """The trainable parameters, held in float32 whatever the base's dtype (then filled
    from `adapter_dir`, exactly, when given).

    With a bf16/fp16 (or 8-/4-bit) base, a norm gain near 1.0 has a spacing of 2^-7 in
    bf16: AdamW's updates at lr 1e-5 would round away and nothing would be learned.
    Held in float32 they accumulate; the frozen rest stays as loaded, and the forward
    runs under autocast. Training, its validation and `artnote eval` all run so.
    """
    import torch

    from artnote.model.adapters import load_adapter, mark_trainable

    mark_trainable(loaded.model, loaded.family)
    trainable = [p for p in loaded.model.parameters() if p.requires_grad]
    for p in trainable:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    if adapter_dir is not None:  # the file's float32 values, not their base-dtype rounding
        load_adapter(loaded.model, adapter_dir, family=loaded.family, base_model=loaded.name)
    return trainable


def autocast(loaded: LoadedModel) -> Any:
    """The forward's precision: a float32 base on the CPU runs as it is; bf16/fp16 bases
    (and CUDA) compute in autocast around the float32 masters."""
    import contextlib

    import torch

    if loaded.device.type == "cuda":
        dtype = torch.float16 if loaded.dtype == torch.float16 else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)
    if loaded.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(loaded.device.type, dtype=loaded.dtype)
    return contextlib.nullcontext()


def check_content(path: str, sha256: str) -> None:
    """Refuse a file whose bytes are no longer the curated content: its features would be
    cached under the old content's hash."""
    import hashlib

    from artnote.errors import ImageError

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise ImageError("changed since it was curated (another sha256): rescan and review it")


def scan_decoder(loaded: LoadedModel, settings: Settings) -> Callable[[str], Any]:
    """Decode exactly as `artnote scan` does, so training sees the pixels scanning sees."""
    from artnote.images import decode_image
    from artnote.model.inputs import input_size

    size = input_size(loaded.processor)

    def load(path: str) -> Any:
        return decode_image(Path(path), max_pixels=settings.scan.max_pixels, target_size=size).image

    return load
