"""Model text loses control and other XML-forbidden characters before it is stored."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from artnote.catalog import FileState, open_catalog
from artnote.config import GenerationSettings, ModelSettings
from artnote.model.annotate import Annotator
from artnote.model.load import load_model
from artnote.records import Annotation, Provenance
from artnote.text import (
    MULTILINE_FIELDS,
    TEXT_FIELDS,
    clean_field,
    clean_fields,
    clean_text,
    needs_cleaning,
)

NONCHARACTERS = [chr(cp) for cp in range(0xFDD0, 0xFDF0)] + [
    chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF)
]
REMOVED = {
    "C0 controls": [chr(cp) for cp in [*range(0x00, 0x09), *range(0x0E, 0x20)]],
    "DEL": ["\x7f"],
    "C1 controls": [chr(cp) for cp in [*range(0x80, 0x85), *range(0x86, 0xA0)]],
    "lone surrogates": [chr(cp) for cp in range(0xD800, 0xE000)],
    "noncharacters": NONCHARACTERS,
}
LINE_BREAKS = ["\r\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"]
KEPT = [
    "plain ASCII, with punctuation: (a) & <b>; 'c' \"d\" ~",
    "Café à l’huile — 北斎 — Мунк",
    "a\u00a0b\u202fc\u2009d",  # no-break, narrow no-break and thin spaces
    "soft\u00adhyphen, zero\u200bwidth, joined \U0001f469\u200d\U0001f3a8",
    "\u200e\u202aembedded\u202c\u2066isolated\u2069\ufeff",  # bidi marks, BOM
    "\ue000 private \U000f0000 use, \ufffd replacement, \U0001fffd last before nonchars",
    "\U0010fffd and \uffef and \U0001f3a8",
]


@pytest.mark.parametrize("kind", list(REMOVED))
@pytest.mark.parametrize("multiline", [True, False])
def test_each_class_of_character_is_removed(kind, multiline):
    for char in REMOVED[kind]:
        assert clean_text(f"A{char}B {char}", multiline=multiline) == ("AB ", True), repr(char)
        assert needs_cleaning(f"A{char}B", multiline=multiline), repr(char)


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_line_breaks_are_one_newline_in_multiline_text_and_one_space_in_one_line(brk):
    assert clean_text(f"one{brk}two", multiline=True) == ("one\ntwo", True)
    assert clean_text(f"one{brk}two", multiline=False) == ("one two", True)
    assert clean_text(f"a{brk}{brk}b", multiline=True)[0] == "a\n\nb"


def test_newline_and_tab_are_kept_in_multiline_text_only():
    text = "First paragraph.\n\n\tSecond,\tindented."
    assert clean_text(text, multiline=True) == (text, False)
    assert not needs_cleaning(text, multiline=True)
    assert clean_text(text, multiline=False) == ("First paragraph.   Second, indented.", True)
    assert needs_cleaning(text, multiline=False)


@pytest.mark.parametrize("text", ["", *KEPT])
@pytest.mark.parametrize("multiline", [True, False])
def test_clean_text_comes_back_unchanged_as_the_same_object(text, multiline):
    out, changed = clean_text(text, multiline=multiline)
    assert out is text and changed is False
    assert not needs_cleaning(text, multiline=multiline)


def test_mixed_text_keeps_everything_but_what_it_must_lose():
    raw = "\ufeffLa\x00 nuit\u2028étoilée\r\n\x1b[1m\U0001f319\U0001fffe\ud83d\x9b.\t"
    assert clean_text(raw, multiline=True) == ("\ufeffLa nuit\nétoilée\n[1m\U0001f319.\t", True)
    assert clean_text(raw, multiline=False) == ("\ufeffLa nuit étoilée [1m\U0001f319. ", True)


# XML 1.0 (fifth edition), production [2] Char.
XML_CHAR = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")


@pytest.mark.parametrize("multiline", [True, False])
def test_every_code_point_follows_the_rule(multiline):
    everything = "".join(map(chr, range(0x110000)))
    out, changed = clean_text(everything, multiline=multiline)
    assert changed and XML_CHAR.fullmatch(out)
    controls = {c for c in set(out) if unicodedata.category(c) == "Cc"}
    assert controls == ({"\n", "\t"} if multiline else set())
    assert not set(out) & set(NONCHARACTERS)
    removed = {c for chars in REMOVED.values() for c in chars}
    breaks = {b for b in LINE_BREAKS if len(b) == 1}
    tab_newline = {"\n", "\t"} if not multiline else set()
    separator = "\n" if multiline else " "
    want = "".join(
        "" if c in removed else separator if c in breaks else " " if c in tab_newline else c
        for c in everything
    )
    assert out == want
    # needs_cleaning agrees with clean_text one character at a time (all of the BMP, and
    # the astral characters around each plane's noncharacters).
    astral = [plane << 16 | low for plane in range(1, 17) for low in (0, 0xFFFD, 0xFFFE, 0xFFFF)]
    for cp in [*range(0x10000), *astral]:
        text = f"x{chr(cp)}y"
        assert needs_cleaning(text, multiline=multiline) == clean_text(text, multiline=multiline)[1]


def test_field_kinds():
    assert MULTILINE_FIELDS == {"description", "explanation"}
    assert set(TEXT_FIELDS) == MULTILINE_FIELDS | {"alt_text"}
    assert clean_field("alt_text", "A boat\non a wave") == ("A boat on a wave", True)
    assert clean_field("description", "A boat\non a wave") == ("A boat\non a wave", False)
    assert clean_field("relpath", "a\tb.jpg") == ("a b.jpg", True)  # other text: one line
    row = {
        "alt_text": "Sea\x00\tfoam",
        "description": "Waves.\n\x07Boats.",
        "explanation": None,
        "relpath": "wave\x07.jpg",  # not model text: left to the caller
        "awe": 0.5,
    }
    cleaned, names = clean_fields(row)
    assert names == ["alt_text", "description"]
    assert cleaned == row | {"alt_text": "Sea foam", "description": "Waves.\nBoats."}
    assert row["alt_text"] == "Sea\x00\tfoam"  # the input is not changed
    assert clean_fields({"description": "Fine."}) == ({"description": "Fine."}, [])


def test_provenance_says_nothing_was_cleaned_unless_told():
    prov = Provenance("tiny", None, "llava", None, None, "1", "ph", {}, "torch", "cpu", 1.0)
    assert prov.cleaned == [] and asdict(prov)["cleaned"] == []


# --- end to end: model output -> Annotation -> catalog ------------------------------

NOISE = "\x00\x07\x1b[0m\x7f\x9b\ufffe"  # no line breaks: stays on the alt text's first line
SHORT = GenerationSettings(alt_text_tokens=6, description_tokens=10, explanation_tokens=6)


def _annotate_with_prefix(
    path: Path, images: list[Image.Image], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Annotation], list[list[str]]]:
    """Annotations of a tiny random model whose decoded output of every field starts with
    `prefix`, and per image the decoded text of each of TEXT_FIELDS. The prefix's tokens
    are put before the generated ones, so the model's own tokenizer turns them into the
    text that the annotator receives."""
    loaded = load_model(ModelSettings(name=str(path), device="cpu", dtype="float32"))
    annotator = Annotator(loaded, SHORT)
    tokenizer = annotator.tokenizer
    extra = tokenizer.encode(prefix, add_special_tokens=False)
    assert tokenizer.decode(extra) == prefix
    decode = tokenizer.decode
    decoded: list[str] = []

    def noisy_decode(ids: list[int], **kwargs: Any) -> str:
        decoded.append(decode(extra + list(ids), **kwargs))
        return decoded[-1]

    monkeypatch.setattr(tokenizer, "decode", noisy_decode)
    annotations = annotator.annotate(images)
    # The annotator decodes image by image, its fields in TEXT_FIELDS order.
    assert len(decoded) == len(images) * len(TEXT_FIELDS)
    n = len(TEXT_FIELDS)
    per_image = [decoded[i : i + n] for i in range(0, len(decoded), n)]
    return annotations, per_image


def _needing_cleaning(decoded: list[str]) -> list[str]:
    return [
        f
        for f, text in zip(TEXT_FIELDS, decoded, strict=True)
        if needs_cleaning(text, multiline=True)
    ]


@pytest.mark.parametrize("family", ["llava", "smolvlm"])
def test_control_characters_from_the_model_are_not_stored(
    tiny_models, art_images, tmp_path, monkeypatch, family
):
    images = art_images[:2]
    noisy, _ = _annotate_with_prefix(tiny_models[family], images, NOISE, monkeypatch)
    # The same output with only the characters that survive cleaning: the fields must
    # come out identical, so cleaning removed those characters and nothing else.
    survivors, _ = clean_text(NOISE, multiline=True)
    assert survivors == "[0m"
    plain, decoded = _annotate_with_prefix(tiny_models[family], images, survivors, monkeypatch)
    for got, want, raw in zip(noisy, plain, decoded, strict=True):
        for name in TEXT_FIELDS:
            text = getattr(got, name)
            assert text == getattr(want, name)
            assert not needs_cleaning(text, multiline=False), (name, text)
            assert survivors in text
        assert got.provenance.cleaned == ["alt_text", "description", "explanation"]
        # Random weights emit control characters of their own now and then.
        assert want.provenance.cleaned == _needing_cleaning(raw)

    with open_catalog(tmp_path / "cat.db") as cat:
        collection = cat.ensure_collection(tmp_path)
        run = cat.start_run({}, "tiny", None)
        ids = cat.record_files(collection, run, [FileState(f"{n}.jpg", 1, 1, n * 64) for n in "ab"])
        cat.add_annotations(run, [(ids["a.jpg"], noisy[0]), (ids["b.jpg"], plain[0])])
        rows = {r["relpath"]: r for r in cat.export_rows()}
    for name in TEXT_FIELDS:
        assert rows["a.jpg"][name] == getattr(noisy[0], name)
    assert rows["a.jpg"]["provenance"]["cleaned"] == ["alt_text", "description", "explanation"]
    assert rows["b.jpg"]["provenance"]["cleaned"] == plain[0].provenance.cleaned


@pytest.mark.parametrize("family", ["llava", "smolvlm"])
def test_a_random_models_own_output_is_stored_clean(tiny_models, art_images, monkeypatch, family):
    annotations, decoded = _annotate_with_prefix(tiny_models[family], art_images, "", monkeypatch)
    for annotation, raw in zip(annotations, decoded, strict=True):
        for name in TEXT_FIELDS:
            text = getattr(annotation, name)
            assert not needs_cleaning(text, multiline=False), (name, text)
        assert annotation.provenance.cleaned == _needing_cleaning(raw)
