"""Training samples: one per (image, curated field), and a seeded split by image.

A run records its split (the sha256 of its training and of its held-out images) in its
checkpoints and its adapter, so that neither a resumed run nor the next round started
from that adapter validates on an image the adapters were trained on.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Literal

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


def sample_digest(samples: list[Sample]) -> str:
    """Which (image, field) samples, in which order: what a resumed run must find again."""
    keys = "\n".join(f"{s.sha256}:{s.field}" for s in samples)
    return hashlib.sha256(keys.encode()).hexdigest()


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


@dataclass(frozen=True)
class Split:
    """Which contents (sha256) a run trained on and which it held out."""

    training: frozenset[str]
    validation: frozenset[str]

    @classmethod
    def of(cls, train: list[Sample], val: list[Sample]) -> Split:
        return cls(frozenset(s.sha256 for s in train), frozenset(s.sha256 for s in val))

    def to_json(self) -> dict[str, list[str]]:
        return {"training": sorted(self.training), "validation": sorted(self.validation)}

    @classmethod
    def from_json(cls, data: Any) -> Split | None:
        """None for what an older trainer wrote (no split recorded) or anything malformed."""
        if not isinstance(data, dict):
            return None
        sides = [data.get("training"), data.get("validation")]
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in sides):
            return None
        return cls(frozenset(sides[0]), frozenset(sides[1]))


def split_keeping(
    samples: list[Sample],
    earlier: Split,
    val_fraction: float,
    seed: int,
    new_images: Literal["split", "leave_out"],
) -> tuple[list[Sample], list[Sample], int]:
    """(train, val, images left out): every image keeps its side of `earlier`'s split.

    Images that `earlier` did not know are split among themselves (`split`: the next round
    from a parent adapter) or left out (`leave_out`: a resumed run trains exactly the images
    it started with; the new ones are for the next run).
    """
    known = earlier.training | earlier.validation
    fresh = [s for s in samples if s.sha256 not in known]
    if new_images == "split":
        fresh_train, fresh_val = split_by_image(fresh, val_fraction, seed)
        left_out = 0
    else:
        fresh_train, fresh_val = [], []
        left_out = len({s.sha256 for s in fresh})
    held = earlier.validation | {s.sha256 for s in fresh_val}
    trained = (earlier.training | {s.sha256 for s in fresh_train}) - held
    return (
        [s for s in samples if s.sha256 in trained],
        [s for s in samples if s.sha256 in held],
        left_out,
    )
