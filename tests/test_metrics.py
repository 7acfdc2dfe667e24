"""Caption and emotion metrics: pycocoevalcap's own scores, Unicode words, every
reference, fields apart, absent rather than 0."""

from __future__ import annotations

import logging
import math
import re
import shutil

import pytest
from conftest import unavailable
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from artnote.errors import ArtnoteError
from trainer import evaluate
from trainer.evaluate import (
    emotion_metrics,
    field_metrics,
    format_table,
    text_metrics,
    tokenize,
)

# Raw texts as a model and curators write them, and the same texts tokenized by hand.
CANDIDATES = [
    "A red boat at sea, under a grey sky.",
    "Three women in hats sit on a bench.",
    "A portrait of an old man with a beard.",
    "Sunflowers in a vase!",
]
REFERENCES = [
    ["A red boat on the sea.", "A small boat sails under a grey sky."],
    [
        "Three women wearing hats.",
        "Women sit on a park bench.",
        "Three ladies in hats on a bench.",
    ],
    [
        "An old man with a long white beard.",
        "Portrait of a bearded man.",
        "An elderly man looks at the viewer.",
        "A man with a beard, painted in oil.",
        "The portrait of an old man.",
    ],
    ["A vase of sunflowers.", "Yellow flowers in a vase on a table."],
]


def _plain(text: str) -> str:
    return " ".join(re.findall(r"[a-z]+", text.lower()))


def _direct(candidates, references):
    gts = {i: [_plain(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [_plain(c)] for i, c in enumerate(candidates)}
    return gts, res


def test_scores_equal_pycocoevalcap_called_directly():
    gts, res = _direct(CANDIDATES, REFERENCES)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    m = text_metrics(CANDIDATES, REFERENCES)
    assert m["images"] == 4
    for n in range(4):
        assert m[f"bleu{n + 1}"] == pytest.approx(bleu[n], rel=1e-12)
    assert m["rouge_l"] == pytest.approx(rouge, rel=1e-12)
    assert m["cider"] == pytest.approx(cider, rel=1e-12)
    assert 0 < m["bleu4"] < m["bleu1"] < 1 and m["cider"] > 0
    # every reference counts: with only the first, the scores change
    first_only = text_metrics(CANDIDATES, [refs[:1] for refs in REFERENCES])
    assert first_only["bleu1"] != pytest.approx(m["bleu1"])


def test_tokens_keep_accents_and_split_japanese():
    assert tokenize("Un café, près du GEMÄLDE!") == ["un", "café", "près", "du", "gemälde"]
    assert tokenize("cafe\u0301") == ["café"]  # decomposed accent: still one word
    assert tokenize("富士山の大きな波") == ["富", "士", "山", "の", "大", "き", "な", "波"]
    assert tokenize("Hokusai: 富士山") == ["hokusai", "富", "士", "山"]


@pytest.mark.parametrize(
    "text",
    ["Une femme élégante près de la fenêtre, à côté d'un piano.", "富士山の大きな波"],
)
def test_identical_non_english_text_scores_one(text):
    m = text_metrics([text], [[text]])
    assert m["bleu1"] == pytest.approx(1.0)
    assert m["bleu4"] == pytest.approx(1.0)
    assert m["rouge_l"] == pytest.approx(1.0)
    assert m["cider"] is None  # one image


def test_a_different_accented_word_counts():
    cand, ref = "un pêcheur sur la rive", "un pécheur sur la rive"
    old = re.compile(r"[a-z0-9]+")  # the former tokenizer: both texts looked the same
    assert old.findall(cand) == old.findall(ref)
    m = text_metrics([cand], [[ref]])
    assert m["bleu1"] == pytest.approx(4 / 5)
    assert m["rouge_l"] < 1


def test_cider_absent_with_one_image_a_number_with_two():
    one = text_metrics(["a red boat"], [["a red boat at sea"]])
    assert one["cider"] is None and one["images"] == 1
    two = text_metrics(["a red boat", "three women"], [["a red boat at sea"], ["three women"]])
    assert isinstance(two["cider"], float) and two["cider"] > 0
    assert text_metrics([], []) == {}


def test_empty_candidates_are_scored():
    m = text_metrics(["", "three women"], [["a red boat"], ["three women in hats"]])
    assert m["images"] == 2 and 0 < m["bleu1"] < 1 and m["cider"] > 0


def test_misshapen_references_raise():
    with pytest.raises(ArtnoteError, match="list of reference texts"):
        text_metrics(["a red boat"], ["a red boat at sea"])  # the former call: one string each
    with pytest.raises(ArtnoteError, match="no reference"):
        text_metrics(["a red boat"], [[]])
    with pytest.raises(ArtnoteError):
        text_metrics(["a", "b"], [["a"]])


@pytest.mark.slow
def test_meteor_equals_pycocoevalcap_with_java():
    if shutil.which("java") is None:
        unavailable("no Java on this machine: METEOR runs java -jar meteor-1.5.jar")
    from pycocoevalcap.meteor.meteor import Meteor

    gts, res = _direct(CANDIDATES, REFERENCES)
    expected, _ = Meteor().compute_score(gts, res)
    m = text_metrics(CANDIDATES, REFERENCES)
    assert 0 < m["meteor"] <= 1
    assert m["meteor"] == pytest.approx(expected, rel=1e-9)


def test_meteor_absent_when_java_fails(tmp_path, monkeypatch, caplog):
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text("#!/bin/sh\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{java.parent}:/usr/bin:/bin")
    monkeypatch.setattr(evaluate, "_meteor", None)
    with caplog.at_level(logging.WARNING, logger="trainer.evaluate"):
        m = text_metrics(["a red boat"], [["a red boat"]])
    assert m["meteor"] is None and m["bleu1"] == pytest.approx(1.0)
    assert "METEOR is absent" in caplog.text
    assert evaluate._meteor is None


def test_meteor_absent_without_java(monkeypatch):
    monkeypatch.setattr(evaluate.shutil, "which", lambda name: None)
    assert text_metrics(["a red boat"], [["a red boat"]])["meteor"] is None


def test_emotion_kl():
    p, t = [0.25, 0.25, 0.5], [0.5, 0.5, 0.0]
    e = emotion_metrics([[math.log(x) for x in p]], [t])
    assert e["emotion_kl"] == pytest.approx(math.log(2))  # 0.5 ln 2 + 0.5 ln 2 + 0
    assert e["emotion_ce"] == pytest.approx(math.log(4))
    assert e["emotion_accuracy"] == 0.0
    same = emotion_metrics([[math.log(0.7), math.log(0.3), -math.inf]], [[0.7, 0.3, 0.0]])
    assert same["emotion_kl"] == pytest.approx(0.0, abs=1e-12)
    assert same["emotion_accuracy"] == 1.0
    two = emotion_metrics([[math.log(x) for x in p]] * 2, [t, p])
    assert two["emotion_kl"] == pytest.approx(math.log(2) / 2)
    assert emotion_metrics([], []) == {}


def test_field_metrics_keeps_fields_apart():
    alt = (["a red boat", "three women"], [["a red boat"], ["three women"]])
    desc = (["a dog", "blue sky"], [["a red boat at sea"], ["three women in hats"]])
    m = field_metrics({"alt_text": alt, "description": desc})
    assert set(m) == {"alt_text", "description"}
    assert m["alt_text"] == text_metrics(*alt)
    assert m["description"] == text_metrics(*desc)
    assert m["alt_text"]["bleu1"] == pytest.approx(1.0)
    assert m["description"]["bleu1"] < 0.5


def test_format_table():
    metrics = {
        "alt_text": {"images": 1, "bleu1": 0.5, "meteor": None, "cider": None},
        "explanation": {},
        "emotion_accuracy": 0.25,
        "emotion_kl": 1 / 3,
    }
    table = format_table(metrics)
    lines = table.splitlines()
    assert lines[0].split() == ["field", "images", *evaluate.TEXT_METRICS]
    assert lines[1].split()[:3] == ["alt_text", "1", "0.5000"]
    assert lines[1].split()[6] == "absent"  # meteor
    assert set(lines[2].split()[1:]) == {"absent"}
    assert lines[3].split() == ["emotion_accuracy", "0.2500"]
    assert lines[4].split() == ["emotion_kl", "0.3333"]
