"""Held-out metrics, in pure Python: BLEU-1..4, ROUGE-L and CIDEr-D of generated
text against the curators' text (the COCO caption metrics), and emotion
accuracy and cross-entropy from the nine label scores."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu(
    candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
) -> list[float]:
    """Corpus BLEU-1..max_n (closest reference length for the brevity penalty, as COCO)."""
    matches, totals = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        c = tokenize(cand)
        rs = [tokenize(r) for r in refs]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1] if rs else 0
        for n in range(1, max_n + 1):
            counts = _ngrams(c, n)
            best: Counter = Counter()
            for r in rs:
                best |= _ngrams(r, n)
            matches[n - 1] += sum(min(k, best[g]) for g, k in counts.items())
            totals[n - 1] += max(len(c) - n + 1, 0)
    if cand_len == 0:
        return [0.0] * max_n
    bp = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    scores, log_sum = [], 0.0
    tiny = 1e-9
    for n in range(max_n):
        p = (matches[n] + tiny) / (totals[n] + tiny * 10) if totals[n] else tiny
        log_sum += math.log(max(p, tiny))
        scores.append(bp * math.exp(log_sum / (n + 1)))
    return scores


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(
    candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2
) -> float:
    """Mean sentence ROUGE-L F-measure (beta 1.2, as COCO)."""
    scores = []
    for cand, refs in zip(candidates, references, strict=True):
        c = tokenize(cand)
        best_p = best_r = 0.0
        for r in map(tokenize, refs):
            lcs = _lcs(c, r)
            best_p = max(best_p, lcs / len(c) if c else 0.0)
            best_r = max(best_r, lcs / len(r) if r else 0.0)
        if best_p and best_r:
            scores.append((1 + beta**2) * best_p * best_r / (best_r + beta**2 * best_p))
        else:
            scores.append(0.0)
    return sum(scores) / len(scores) if scores else 0.0


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0
) -> float:
    """CIDEr-D: tf-idf n-gram cosine (n = 1..4) with clipping and a length penalty, x10."""
    refs_tok = [[tokenize(r) for r in refs] for refs in references]
    docs = len(refs_tok)
    if docs == 0:
        return 0.0
    df: Counter = Counter()
    for refs in refs_tok:
        df.update({g for r in refs for n in range(1, 5) for g in _ngrams(r, n)})
    log_docs = math.log(float(docs))

    def vec(words: list[str], n: int) -> tuple[dict, float]:
        counts = _ngrams(words, n)
        v = {g: k * (log_docs - math.log(max(1.0, df[g]))) for g, k in counts.items()}
        return v, math.sqrt(sum(x * x for x in v.values()))

    total = 0.0
    for cand, refs in zip(candidates, refs_tok, strict=True):
        c = tokenize(cand)
        score = 0.0
        for n in range(1, 5):
            vc, nc = vec(c, n)
            for r in refs:
                vr, nr = vec(r, n)
                dot = sum(min(x, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, x in vc.items())
                if nc and nr:
                    penalty = math.exp(-((len(c) - len(r)) ** 2) / (2 * sigma**2))
                    score += penalty * dot / (nc * nr)
        total += score / 4 / max(len(refs), 1) * 10
    return total / docs


def text_metrics(candidates: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    refs = [[r] for r in references]
    b = bleu(candidates, refs)
    return {
        "bleu1": b[0],
        "bleu2": b[1],
        "bleu3": b[2],
        "bleu4": b[3],
        "rouge_l": rouge_l(candidates, refs),
        "cider": cider_d(candidates, refs),
    }


def emotion_metrics(
    log_probs: Sequence[Sequence[float]], targets: Sequence[Sequence[float]]
) -> dict[str, float]:
    """Accuracy of the top label against the target's top label, and mean cross-entropy."""
    if not targets:
        return {}
    hits, ce = 0, 0.0
    for lp, t in zip(log_probs, targets, strict=True):
        hits += int(
            max(range(len(lp)), key=lp.__getitem__) == max(range(len(t)), key=t.__getitem__)
        )
        ce -= sum(ti * li for ti, li in zip(t, lp, strict=True))
    return {"emotion_accuracy": hits / len(targets), "emotion_ce": ce / len(targets)}
