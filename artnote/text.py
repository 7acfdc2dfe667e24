"""Characters that model text may not carry into the catalog or an export.

Random-weight models emit arbitrary bytes and real models can too; stored as is,
control characters break CSV viewers and make XML-based exports (XMP, IIIF) invalid.
The rule, on code points (XML 1.0's Char production is the reference, as those
exports must parse):

* line breaks: CR LF, CR, VT (U+000B), FF (U+000C), NEL (U+0085), LINE SEPARATOR
  (U+2028) and PARAGRAPH SEPARATOR (U+2029) become LF in multiline text and one
  space in single-line text; LF and TAB are kept in multiline text and become a
  space in single-line text. Turning separators into whitespace rather than
  deleting them keeps the words on either side apart;
* removed: the other C0 controls (U+0000-U+0008, U+000E-U+001F), DEL (U+007F), the
  other C1 controls (U+0080-U+0084, U+0086-U+009F), surrogate code points
  (U+D800-U+DFFF, which UTF-8 cannot encode) and the 66 Unicode noncharacters
  (U+FDD0-U+FDEF and U+nFFFE, U+nFFFF of every plane). XML 1.0 forbids the C0
  controls, surrogates, U+FFFE and U+FFFF outright; it allows DEL, C1 and the other
  noncharacters but discourages them, XML 1.1 makes C1 escape-only, and no
  description needs any of them (C1 mostly come from bytes decoded as the wrong
  code page);
* everything else is kept, format characters included (soft hyphen, zero-width
  joiner, bidirectional marks: emoji sequences and several scripts need them), as
  are private-use and not-yet-assigned code points: all are valid XML and text.

The same rule runs when annotations are made and again at export, for catalogs
written before it existed: clean one-line text, the usual case, costs one
str.isprintable() and other clean text one search of a precompiled pattern, and
either is returned without a copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

TEXT_FIELDS: tuple[str, ...] = ("alt_text", "description", "explanation")
"""The fields of an annotation that a model writes as free text."""

MULTILINE_FIELDS: frozenset[str] = frozenset({"description", "explanation"})
"""Fields that may keep LF and TAB; any other text (alt text, a path) is one line."""

# `re` searches a class of BMP ranges several times faster than one that also lists
# astral code points, so the patterns hold BMP characters only and the astral
# noncharacters (U+1FFFE, U+1FFFF, ... U+10FFFF) are checked one astral character at a
# time, which only text holding such characters (an emoji, say) pays for.
_DROP_BMP = "\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff"
_BREAKS = "\x0b\x0c\x85\u2028\u2029"
_ASTRAL = "\U00010000-\U0010ffff"

_DROP = re.compile(f"[{_DROP_BMP}]")
_ASTRAL_CHAR = re.compile(f"[{_ASTRAL}]")
_LINE_BREAKS = re.compile(f"\r\n?|[{_BREAKS}]")
_ONE_LINE = re.compile(f"\r\n|[\t\n\r{_BREAKS}]")
# What cleaning changes, BMP part; and the same or any astral character, for one search
# that lets clean text (the usual case) through at once.
_CHANGES = {
    True: re.compile(f"[\r{_BREAKS}{_DROP_BMP}]"),
    False: re.compile(f"[\t\n\r{_BREAKS}{_DROP_BMP}]"),
}
_SUSPECT = {
    True: re.compile(f"[\r{_BREAKS}{_DROP_BMP}{_ASTRAL}]"),
    False: re.compile(f"[\t\n\r{_BREAKS}{_DROP_BMP}{_ASTRAL}]"),
}


def _is_noncharacter(char: str) -> bool:
    return ord(char) & 0xFFFE == 0xFFFE  # U+nFFFE, U+nFFFF; U+FDD0-U+FDEF are in _DROP


def _astral_noncharacter_in(text: str, start: int) -> bool:
    return any(_is_noncharacter(m.group()) for m in _ASTRAL_CHAR.finditer(text, start))


def _keep_astral(match: re.Match[str]) -> str:
    char = match.group()
    return "" if _is_noncharacter(char) else char


def needs_cleaning(text: str, *, multiline: bool) -> bool:
    """Whether clean_text would change `text` (for a multiline or a single-line field)."""
    if text.isprintable():  # about three times faster than a search, and sufficient:
        return False  # all that cleaning changes is Cc, Cs, Cn, Zl or Zp, never printable
    suspect = _SUSPECT[multiline].search(text)
    if suspect is None:
        return False
    start = suspect.start()
    if _CHANGES[multiline].search(text, start) is not None:
        return True
    return _astral_noncharacter_in(text, start)


def clean_text(text: str, *, multiline: bool) -> tuple[str, bool]:
    """`text` under the rule of this module's docstring, and whether that changed it.

    Unchanged text comes back as the very same object, with False.
    """
    if not needs_cleaning(text, multiline=multiline):
        return text, False
    out = _LINE_BREAKS.sub("\n", text) if multiline else _ONE_LINE.sub(" ", text)
    out = _DROP.sub("", out)
    if _ASTRAL_CHAR.search(out) is not None:
        out = _ASTRAL_CHAR.sub(_keep_astral, out)
    return out, out != text


def clean_field(name: str, text: str) -> tuple[str, bool]:
    """clean_text with the line rule of field `name` (see MULTILINE_FIELDS)."""
    return clean_text(text, multiline=name in MULTILINE_FIELDS)


def clean_fields(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of `values` with its TEXT_FIELDS cleaned, and the names of those that changed.

    Keys that are not model text, and values that are not strings (None: no text), are
    copied as they are; the names come in TEXT_FIELDS order, ready for Provenance.cleaned.
    """
    out = dict(values)
    changed: list[str] = []
    for name in TEXT_FIELDS:
        value = out.get(name)
        if isinstance(value, str):
            out[name], was_changed = clean_field(name, value)
            if was_changed:
                changed.append(name)
    return out, changed
