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
from trainer.errors import TrainerError

TEXT_FIELDS = ("alt_text", "description", "explanation")


@dataclass(frozen=True)
class Sample:
    image_path: str
    sha256: str  # the content: the split keeps all samples of one image together
    field: str  # alt_text | description | explanation | emotion
    text: str = ""  # the curated answer for text fields
    emotions: tuple[float, ...] = ()  # target distribution over EMOTIONS for "emotion"
    dominant: str = ""  # for "explanation": the emotion its lead names
    # Every reference text for evaluation (the curated one first; ArtEmis has ~5 per
    # painting); empty: just `text`.
    references: tuple[str, ...] = ()
    context: str = ""  # grounded prompting: the record facts before the question, as scanned

    def refs(self) -> tuple[str, ...]:
        return self.references or (self.text,)


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
    references: dict[str, list[str]] = field(default_factory=dict)  # field -> every reference
    model: str | None = None  # the model whose annotation was curated (None: imported data)
    extra: dict = field(default_factory=dict)
    image_id: int | None = None  # the catalog's image row (its object record, if any)
    context: str = ""  # grounded prompting: its record's facts (artnote.grounding)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CuratedImage:
        """From a Catalog.curated() row."""
        return cls(
            row["path"],
            row["sha256"],
            alt_text=row.get("alt_text"),
            description=row.get("description"),
            explanation=row.get("explanation"),
            emotions=row.get("emotions"),
            dominant_emotion=row.get("dominant_emotion"),
            references=dict(row.get("references") or {}),
            model=row.get("model"),
            image_id=row.get("image_id"),
        )


def curated_images(
    rows: list[dict[str, Any]], catalog: Any, use_records: bool
) -> list[CuratedImage]:
    """Catalog.curated() rows as CuratedImage, each with the record facts its prompts get
    at scan time when `use_records` (so an adapter learns the questions it is asked)."""
    from artnote.grounding import RecordContexts

    images = [CuratedImage.from_row(row) for row in rows]
    known = [im for im in images if im.image_id is not None]
    contexts = RecordContexts(catalog, use_records).for_ids([im.image_id for im in known])
    for im, context in zip(known, contexts, strict=True):
        im.context = context
    return images


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
                refs = tuple(dict.fromkeys([text, *im.references.get(name, [])]))
                out.append(
                    Sample(
                        im.image_path,
                        im.sha256,
                        name,
                        text=text,
                        dominant=dominant,
                        references=refs if len(refs) > 1 else (),
                        context=im.context,
                    )
                )
        if im.emotions:
            dist = tuple(float(im.emotions.get(e, 0.0)) for e in EMOTIONS)
            total = sum(dist)
            if total > 0:
                emotions = tuple(d / total for d in dist)
                out.append(
                    Sample(
                        im.image_path, im.sha256, "emotion", emotions=emotions, context=im.context
                    )
                )
    return out


def curated_model(rows: list[dict[str, Any]], configured: str) -> str:
    """The model whose annotations the curators corrected (from provenance); `configured`
    when none was (imported data only); an error when several were."""
    models = sorted({r["model"] for r in rows if r.get("model")})
    if len(models) > 1:
        raise TrainerError(
            f"the curated annotations come from {len(models)} models ({', '.join(models)}); "
            "choose one with --model"
        )
    return models[0] if models else configured


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
