"""Held-out metrics: caption scores per text field, and emotion scores.

Caption scores come from `pycocoevalcap`, the COCO caption scorers that ArtEmis and
most captioning papers report, so the figures compare with published ones: BLEU-1..4,
ROUGE-L, CIDEr (coco-caption's CIDEr is CIDEr-D: clipped n-gram counts and a length
penalty) and METEOR. Every reference of an image counts (ArtEmis has about five per
painting), and each field (alt_text, description, explanation) is scored on its own.

Tokenization is ours, not pycocoevalcap's PTBTokenizer (which needs Java and drops
every non-ASCII character): NFKC, casefold, then words are runs of Unicode letters,
marks, digits and connectors (regex `\\w`; "café" and "gemälde" stay whole), except that
Han, Hiragana, Katakana and Thai split into single characters, as sacrebleu's zh
tokenizer does, since those scripts put no spaces between words. The scorers get the
tokens joined with single spaces.

Absent (None) means the metric could not be computed, never that it scored 0:
METEOR without Java (its scorer runs `java -jar meteor-1.5.jar`) or when that process
fails (logged as a warning); CIDEr with fewer than two images (its idf weights need a
corpus).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from trainer.errors import TrainerError

log = logging.getLogger(__name__)

TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")

# Scripts written without spaces between words: one token per character.
_SPLIT = (
    (0x0E00, 0x0E7F),  # Thai
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x303F),  # CJK symbols: 々 〆 〇
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # halfwidth Katakana
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)


def _split(ch: str) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in _SPLIT)


def tokenize(text: str) -> list[str]:
    """Casefolded Unicode words; Han, kana and Thai as single characters (each keeping
    any combining marks that follow it)."""
    tokens: list[str] = []
    word, after_split = "", False
    for ch in unicodedata.normalize("NFKC", text).casefold():
        cat = unicodedata.category(ch)
        if cat[0] == "M" and (word or after_split):  # a combining mark stays with its base
            if word:
                word += ch
            else:
                tokens[-1] += ch
            continue
        after_split = False
        if cat[0] not in "LMN" and cat != "Pc":  # not a word character: a boundary
            if word:
                tokens.append(word)
            word = ""
        elif _split(ch):
            if word:
                tokens.append(word)
            tokens.append(ch)
            word, after_split = "", True
        else:
            word += ch
    if word:
        tokens.append(word)
    return tokens


def _joined(text: str) -> str:
    return " ".join(tokenize(text))


def text_metrics(
    candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float | None]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of candidates[i] against every text in
    references[i] (all the references of image i), plus "images": how many were scored.
    None: absent (see the module's docstring). No candidates: {}."""
    if len(candidates) != len(references):
        raise TrainerError(
            f"{len(candidates)} candidate texts but references for {len(references)} images"
        )
    if not candidates:
        return {}
    res = {i: [_joined(c)] for i, c in enumerate(candidates)}
    gts: dict[int, list[str]] = {}
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise TrainerError(f"references[{i}] must be a list of reference texts, not a string")
        if not refs:
            raise TrainerError(f"image {i} has no reference text to score against")
        gts[i] = [_joined(r) for r in refs]
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider: float | None = None
    if len(res) >= 2:
        # Cider fails on a corpus without a single reference word; no n-gram can match there.
        has_words = any(r for refs in gts.values() for r in refs)
        cider = float(Cider().compute_score(gts, res)[0]) if has_words else 0.0
    scores = [float(b) for b in bleu]
    return {
        "images": len(res),
        **{f"bleu{n}": scores[n - 1] for n in range(1, 5)},
        "meteor": _meteor_score(gts, res),
        "rouge_l": float(rouge),
        "cider": cider,
    }


def field_metrics(
    per_field: Mapping[str, tuple[Sequence[str], Sequence[Sequence[str]]]],
) -> dict[str, dict[str, float | None]]:
    """{field: text_metrics(candidates, references)} for each field: never pooled."""
    return {name: text_metrics(cands, refs) for name, (cands, refs) in per_field.items()}


# One METEOR process for the whole run: the jar takes seconds to load its paraphrase table.
_meteor: Any = None
_meteor_lock = threading.Lock()


def _meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float | None:
    global _meteor
    if shutil.which("java") is None:
        return None
    with _meteor_lock:
        try:
            if _meteor is None:
                from pycocoevalcap.meteor.meteor import Meteor

                _meteor = Meteor()
            return float(_meteor.compute_score(gts, res)[0])
        except (OSError, ValueError) as exc:  # could not start, died, or answered nonsense
            log.warning("METEOR is absent: its Java process failed: %r", exc)
            _close_meteor()
            return None


def _close_meteor() -> None:
    global _meteor
    meteor, _meteor = _meteor, None
    if meteor is None:
        return
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()
    with contextlib.suppress(OSError):
        meteor.meteor_p.stdin.close()
    # A failed compute_score keeps its lock, and Meteor.__del__ takes it: give it a free one.
    meteor.lock = threading.Lock()


def emotion_metrics(
    log_probs: Sequence[Sequence[float]], targets: Sequence[Sequence[float]]
) -> dict[str, float]:
    """Accuracy of the top label against the target's top label, mean cross-entropy and
    mean KL(target || predicted), natural log; a target's zero entries add nothing."""
    if len(log_probs) != len(targets):
        raise TrainerError(f"{len(log_probs)} predictions for {len(targets)} emotion targets")
    if not targets:
        return {}
    hits, ce, kl = 0, 0.0, 0.0
    for lp, t in zip(log_probs, targets, strict=True):
        hits += int(
            max(range(len(lp)), key=lp.__getitem__) == max(range(len(t)), key=t.__getitem__)
        )
        pairs = [(ti, li) for ti, li in zip(t, lp, strict=True) if ti > 0]
        ce -= sum(ti * li for ti, li in pairs)
        kl += sum(ti * (math.log(ti) - li) for ti, li in pairs)
    n = len(targets)
    return {"emotion_accuracy": hits / n, "emotion_ce": ce / n, "emotion_kl": kl / n}


def _cell(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table: one row per field (the dict-valued entries), one column per
    caption metric, then one line per other entry (emotion scores, losses)."""
    rows = {k: v for k, v in metrics.items() if isinstance(v, Mapping)}
    lines = []
    if rows:
        width = max(len("field"), *map(len, rows))
        columns = ("images", *TEXT_METRICS)
        lines.append(" ".join(["field".ljust(width), *(c.rjust(8) for c in columns)]))
        for name, m in rows.items():
            cells = (_cell(m.get(c)).rjust(8) for c in columns)
            lines.append(" ".join([name.ljust(width), *cells]))
    others = {k: v for k, v in metrics.items() if k not in rows}
    if others:
        width = max(map(len, others))
        lines += [f"{k.ljust(width)}  {_cell(v)}" for k, v in others.items()]
    return "\n".join(lines)
