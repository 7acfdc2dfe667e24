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


def make_context(
    loaded: LoadedModel,
    settings: Settings,
    max_answer_tokens: int,
    load_image: Callable[[str], Any] | None = None,
) -> RunContext:
    from artnote.model.annotate import Annotator
    from artnote.model.encoder import cache_dir, make_encoder

    encoder = make_encoder(loaded, settings.model.encoder, settings.model.encoder_precision)
    decode = load_image or scan_decoder(loaded, settings)
    objective = Objective(loaded, encoder, max_answer_tokens=max_answer_tokens)
    fmt, prefix = objective.format, objective.prefix

    def prepare(path: str) -> tuple[Any, Any, dict[str, Any]]:
        enc = fmt.encode_prefix(prefix, [decode(path)])
        return enc.input_ids, enc.image_mask, enc.pixels

    key = cache_key(loaded, encoder, prefix, settings.scan.max_pixels)
    cap = int(settings.train.feature_cache_gb * 1e9)
    cache = FeatureCache(cache_dir() / "features", key, cap)
    train = settings.train
    stream = ImageStream(cache, encoder, prepare, train.loader_workers, train.prefetch)
    annotator = Annotator(loaded, settings.generation, encoder=encoder)
    return RunContext(loaded, encoder, objective, stream, annotator, decode, cache)


def scan_decoder(loaded: LoadedModel, settings: Settings) -> Callable[[str], Any]:
    """Decode exactly as `artnote scan` does, so training sees the pixels scanning sees."""
    from artnote.images import decode_image
    from artnote.model.inputs import input_size

    size = input_size(loaded.processor)

    def load(path: str) -> Any:
        return decode_image(Path(path), max_pixels=settings.scan.max_pixels, target_size=size).image

    return load
