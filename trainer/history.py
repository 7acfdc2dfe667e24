"""A run's history as a picture: metrics.png beside metrics.json in each checkpoint.

Left: the training loss of every step and its mean per epoch. Right: the validation
numbers of every epoch (val loss, emotion accuracy and KL, BLEU-4 / METEOR / ROUGE-L /
CIDEr per field where present). Drawn with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from artnote.files import WriteError, write_bytes

log = logging.getLogger(__name__)

SHOWN = ("bleu4", "meteor", "rouge_l", "cider")
FIELDS = ("alt_text", "description", "explanation")


def series(epochs: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Name -> [(epoch, value)] of the validation numbers worth a line."""
    out: dict[str, list[tuple[int, float]]] = {}

    def add(name: str, epoch: int, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.setdefault(name, []).append((epoch, float(value)))

    for m in epochs:
        epoch = int(m.get("epoch", 0))
        for key in ("val_loss", "emotion_accuracy", "emotion_kl"):
            add(key, epoch, m.get(key))
        for field in FIELDS:
            for key in SHOWN:
                add(f"{field} {key}", epoch, (m.get(field) or {}).get(key))
    return out


def plot(path: Path, losses: list[float], epochs: list[dict[str, Any]], per_epoch: int) -> None:
    """Write the picture; a failure to draw costs the picture only (logged)."""
    if not losses:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # a broken matplotlib must not lose a trained checkpoint
        log.warning("no metrics.png: matplotlib cannot be imported (%s)", exc)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    try:
        steps = [(i + 1) / per_epoch for i in range(len(losses))]
        left.plot(steps, losses, lw=0.8, alpha=0.6, label="step")
        means = [m for m in epochs if isinstance(m.get("train_loss"), int | float)]
        if means:
            left.plot([m["epoch"] for m in means], [m["train_loss"] for m in means], "o-",
                      label="epoch mean")  # fmt: skip
        left.set(title="training loss", xlabel="epoch", ylabel="loss")
        left.legend()
        lines = series(epochs)
        for name, points in lines.items():
            right.plot([e for e, _ in points], [v for _, v in points], "o-", label=name)
        right.set(title="validation", xlabel="epoch")
        if lines:
            right.legend(fontsize="small")
        else:
            right.text(0.5, 0.5, "no held-out images", ha="center", transform=right.transAxes)
        fig.tight_layout()
        picture = io.BytesIO()
        fig.savefig(picture, format="png", dpi=100)
        try:
            write_bytes(path, picture.getvalue())
        except (OSError, WriteError) as exc:  # a full disk costs the picture, not the run
            log.warning("no %s: %s", path, exc)
    finally:
        plt.close(fig)
