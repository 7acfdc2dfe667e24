"""`artnote selftest`: build tiny models of each family offline and run every stage.

It answers "does artnote work on this machine?" without a download: load,
attach adapters, zero-init identity, annotate a batch, a valid emotion
distribution, and an adapter save/load round trip, per family.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from artnote.model.tiny import TINY_FAMILIES

CHECKS = (
    "load",
    "attach_adapters",
    "zero_init_identity",
    "annotate_batch",
    "emotions_valid",
    "adapter_round_trip",
)


def sample_images(folder: Path | None, count: int = 4) -> tuple[list[Any], str]:
    """The paintings in `folder` when present, else generated images."""
    from PIL import Image

    if folder is not None and folder.is_dir():
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if paths:
            return [Image.open(p).convert("RGB") for p in paths[:count]], str(folder)
    images = [Image.new("RGB", (64 + 16 * i, 48), (40 * i, 90, 200 - 30 * i)) for i in range(count)]
    return images, "generated"


def run_selftest(images_dir: Path | None, progress: Callable[[str], None] = lambda _: None) -> dict:
    images, source = sample_images(images_dir)
    result: dict[str, Any] = {"images": source, "families": {}}
    with tempfile.TemporaryDirectory(prefix="artnote-selftest-") as tmp:
        for family in TINY_FAMILIES:
            progress(f"selftest: {family}")
            result["families"][family] = _check_family(Path(tmp), family, images)
    result["ok"] = all(
        all(v is True for k, v in checks.items() if k in CHECKS)
        for checks in result["families"].values()
    )
    return result


def _check_family(tmp: Path, family: str, images: list[Any]) -> dict[str, Any]:
    import torch

    from artnote.config import GenerationSettings, ModelSettings
    from artnote.model.adapters import attach_adapters, load_adapter, mark_trainable, save_adapter
    from artnote.model.annotate import Annotator
    from artnote.model.load import load_model
    from artnote.model.tiny import build_tiny_model

    checks: dict[str, Any] = dict.fromkeys(CHECKS, False)
    try:
        folder = build_tiny_model(tmp / family, family)
        loaded = load_model(ModelSettings(name=str(folder), device="cpu"))
        checks["load"] = True
        annotator = Annotator(
            loaded,
            GenerationSettings(alt_text_tokens=8, description_tokens=16, explanation_tokens=8),
        )
        before = annotator.emotion_logliks(images)
        attach_adapters(loaded.model)
        checks["attach_adapters"] = True
        checks["zero_init_identity"] = bool(torch.equal(annotator.emotion_logliks(images), before))
        annotations = annotator.annotate(images)
        checks["annotate_batch"] = len(annotations) == len(images) and all(
            a.description is not None and len(a.alt_text) <= 125 for a in annotations
        )
        checks["emotions_valid"] = all(
            len(a.emotions) == 9
            and abs(sum(a.emotions.values()) - 1) < 1e-6
            and min(a.emotions.values()) >= 0
            for a in annotations
        )
        names = mark_trainable(loaded.model, loaded.family)
        params = dict(loaded.model.named_parameters())
        with torch.no_grad():
            for n in names:
                params[n].add_(torch.randn_like(params[n]) * 0.05)
        tuned = annotator.emotion_logliks(images)
        save_adapter(
            loaded.model,
            tmp / f"{family}-adapter",
            family=loaded.family,
            base_model=loaded.name,
            base_revision=None,
        )
        fresh = load_model(ModelSettings(name=str(folder), device="cpu"))
        load_adapter(
            fresh.model, tmp / f"{family}-adapter", family=fresh.family, base_model=fresh.name
        )
        again = Annotator(fresh, annotator.gen).emotion_logliks(images)
        checks["adapter_round_trip"] = bool(torch.allclose(again, tuned, atol=1e-5))
    except Exception as exc:  # a self-test reports failures, it does not crash
        checks["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return checks
