"""Import ArtEmis (Achlioptas et al., 2021) as curated emotion annotations.

The release CSV has one row per utterance: art_style, painting, emotion,
utterance, repetition; images live at DIR/art_style/painting.jpg. Per painting,
the histogram of its annotators' emotions becomes the target distribution and
the first utterance naming the dominant emotion its explanation. Every utterance
is kept too, with its emotion, as a reference text for evaluation (ArtEmis scores
against all of a painting's utterances); a re-import adds only those not kept yet.
The images are added to the catalog (hashed, not annotated), so `artnote finetune`
can learn from them and `artnote scan` will annotate them.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from artnote.catalog import Catalog
from artnote.catalog.reviews import emotion_value
from artnote.discover import ImageFile, hash_file
from artnote.emotions import EMOTIONS, normalise_emotion
from artnote.errors import ArtnoteError

REQUIRED = ("art_style", "painting", "emotion", "utterance")


@dataclass
class Painting:
    emotions: Counter = field(default_factory=Counter)
    utterances: list[tuple[str, str]] = field(default_factory=list)  # (emotion, utterance)

    def distribution(self) -> dict[str, float]:
        total = sum(self.emotions.values())
        return {e: self.emotions[e] / total for e in EMOTIONS}

    def dominant(self) -> str:
        # Ties go to the label listed first in ArtEmis's order.
        return max(EMOTIONS, key=lambda e: (self.emotions[e], -EMOTIONS.index(e)))

    def explanation(self) -> str | None:
        best = self.dominant()
        return next((u for e, u in self.utterances if e == best and u.strip()), None)


@dataclass
class ArtemisReport:
    paintings: int = 0
    utterances: int = 0
    imported: int = 0  # paintings whose reviews were added
    unchanged: int = 0  # already imported with the same values
    missing: list[str] = field(default_factory=list)  # expected image paths not found
    skipped_rows: int = 0  # rows with an emotion outside the nine
    references: int = 0  # utterances newly kept as reference texts


def read_artemis(path: Path) -> tuple[dict[tuple[str, str], Painting], int, int]:
    paintings: dict[tuple[str, str], Painting] = {}
    rows = skipped = 0
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ArtnoteError(f"{path} is not an ArtEmis CSV: no {', '.join(missing)} column")
            for row in reader:
                rows += 1
                label = normalise_emotion(row["emotion"] or "")
                if label is None:
                    skipped += 1
                    continue
                p = paintings.setdefault((row["art_style"], row["painting"]), Painting())
                p.emotions[label] += 1
                p.utterances.append((label, (row["utterance"] or "").strip()))
    except OSError as exc:
        raise ArtnoteError(f"cannot read {path}: {exc.strerror or exc}") from None
    return paintings, rows, skipped


def import_artemis(catalog: Catalog, csv_path: Path, images_dir: Path) -> ArtemisReport:
    paintings, rows, skipped = read_artemis(csv_path)
    report = ArtemisReport(paintings=len(paintings), utterances=rows, skipped_rows=skipped)
    root = images_dir.resolve()
    if not root.is_dir():
        raise ArtnoteError(f"images folder not found: {images_dir}")
    found: dict[str, tuple[Painting, ImageFile]] = {}
    for (style, name), painting in sorted(paintings.items()):
        rel = f"{style}/{name}.jpg"
        full = root / style / f"{name}.jpg"
        try:
            st = os.stat(full)
        except OSError:
            report.missing.append(str(full))
            continue
        found[rel] = (painting, ImageFile(rel, str(full), st.st_size, st.st_mtime_ns))
    collection = catalog.ensure_collection(root)
    run_id = catalog.start_run({"import": "artemis", "csv": str(csv_path)}, "artemis", None)
    states = [hash_file(f) for _, f in found.values()]
    ids = catalog.record_files(collection, run_id, states)
    shas = {s.relpath: s.sha256 for s in states}
    before = catalog.review_states([s for s in shas.values() if s])
    items: list[tuple[int, str, str | None, str | None]] = []
    for rel, (painting, _) in found.items():
        if shas.get(rel) is None:
            report.missing.append(str(root / rel))
            continue
        emotion = emotion_value(painting.distribution())
        explanation = painting.explanation()
        state = before.get(shas[rel])
        if (
            state is not None
            and _same(state.corrections.get("emotion"), emotion)
            and (explanation is None or state.corrections.get("explanation") == explanation)
        ):
            report.unchanged += 1
            continue
        items.append((ids[rel], "correction", "emotion", emotion))
        if explanation:
            items.append((ids[rel], "correction", "explanation", explanation))
        report.imported += 1
    catalog.add_reviews(items, by="ArtEmis", source="artemis")
    kept = [(shas[rel], painting) for rel, (painting, _) in found.items() if shas.get(rel)]
    report.references = catalog.add_reference_texts(
        (
            (sha, "explanation", utterance, emotion)
            for sha, painting in kept
            for emotion, utterance in painting.utterances
            if utterance
        ),
        source="artemis",
    )
    catalog.finish_run(
        run_id, "completed", {"imported": report.imported, "missing": len(report.missing)}
    )
    return report


def _same(stored: str | None, new: str) -> bool:
    if stored is None:
        return False
    a, b = json.loads(stored), json.loads(new)
    return all(abs(a[e] - b[e]) < 1e-9 for e in EMOTIONS)
