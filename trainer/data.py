"""Training samples: one per (image, curated field), and a seeded split by image."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from artnote.emotions import EMOTIONS

TEXT_FIELDS = ("alt_text", "description", "explanation")


@dataclass(frozen=True)
class Sample:
    image_path: str
    sha256: str  # the content: the split keeps all samples of one image together
    field: str  # alt_text | description | explanation | emotion
    text: str = ""  # the curated answer for text fields
    emotions: tuple[float, ...] = ()  # target distribution over EMOTIONS for "emotion"
    dominant: str = ""  # for "explanation": the emotion its lead names


@dataclass
class CuratedImage:
    """What a curator settled for one image (None: not corrected or approved)."""

    image_path: str
    sha256: str
    alt_text: str | None = None
    description: str | None = None
    explanation: str | None = None
    emotions: dict[str, float] | None = None  # a distribution (one-hot for a single label)
    dominant_emotion: str | None = None  # the current one, when emotions were not curated
    extra: dict = field(default_factory=dict)


def samples_from(images: list[CuratedImage]) -> list[Sample]:
    out: list[Sample] = []
    for im in images:
        dominant = max(im.emotions, key=im.emotions.get) if im.emotions else ""
        dominant = dominant or im.dominant_emotion or ""
        for name in TEXT_FIELDS:
            text = getattr(im, name)
            if text:
                if name == "explanation" and not dominant:
                    continue  # its prompt names the emotion: without one it cannot be asked
                out.append(Sample(im.image_path, im.sha256, name, text=text, dominant=dominant))
        if im.emotions:
            dist = tuple(float(im.emotions.get(e, 0.0)) for e in EMOTIONS)
            total = sum(dist)
            if total > 0:
                out.append(
                    Sample(
                        im.image_path, im.sha256, "emotion", emotions=tuple(d / total for d in dist)
                    )
                )
    return out


def split_by_image(
    samples: list[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out whole images (never a field of a training image). Fewer than 4 images: no split."""
    contents = sorted({s.sha256 for s in samples})
    if len(contents) < 4 or val_fraction <= 0:
        return list(samples), []
    rng = random.Random(seed)
    rng.shuffle(contents)
    held = set(contents[: max(1, round(len(contents) * val_fraction))])
    return [s for s in samples if s.sha256 not in held], [s for s in samples if s.sha256 in held]
