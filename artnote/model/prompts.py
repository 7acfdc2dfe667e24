"""Every prompt artnote sends to the model, in one place, with a version.

The scanner and the trainer both build their inputs here, so a fine-tuned
adapter is trained on exactly the questions it is later asked. Change a text
and you must bump PROMPT_VERSION: the catalog records it with each annotation.
"""

from __future__ import annotations

import hashlib

from artnote.emotions import EMOTIONS

PROMPT_VERSION = "2026-11-26.1"

ALT_TEXT = (
    "Write alt text for this artwork for a museum website: one plain sentence of at most "
    "125 characters naming what is depicted and the medium. No 'image of'."
)

DESCRIPTION = (
    "You are a museum curator. Describe this artwork for the collection catalogue: its "
    "subject, composition, colour and light, technique and brushwork, and the mood it "
    "creates. Write in an appreciative, precise register, in one paragraph."
)

EMOTION = (
    "Which one emotion does this artwork most evoke in a viewer? Answer with one of: "
    + ", ".join(EMOTIONS)
    + "."
)

EXPLANATION = (
    "In one sentence, say which feature of this artwork makes you feel {emotion}, "
    "as a museum visitor would."
)

# The assistant's answer for the emotion question is "<label>", and for the
# explanation it starts with this text (it is prefilled, so the model only
# continues the reason; ArtEmis utterances have this shape).
EXPLANATION_LEAD = "It makes me feel {emotion} because"

FIELDS = ("alt_text", "description", "emotion", "explanation")


def question(field: str, emotion: str | None = None) -> str:
    """The user's question for one field."""
    if field == "alt_text":
        return ALT_TEXT
    if field == "description":
        return DESCRIPTION
    if field == "emotion":
        return EMOTION
    if field == "explanation":
        return EXPLANATION.format(emotion=emotion or "something else")
    raise ValueError(f"unknown field {field!r}")


def answer_lead(field: str, emotion: str | None = None) -> str:
    """Text the assistant's answer is forced to start with ('' for most fields)."""
    if field == "explanation":
        return EXPLANATION_LEAD.format(emotion=emotion or "something else")
    return ""


def label_text(emotion: str) -> str:
    """The answer scored for one emotion label."""
    return emotion


def prompt_hash() -> str:
    """A short, stable fingerprint of the prompt texts, recorded as provenance."""
    blob = "\x1f".join(
        [PROMPT_VERSION, ALT_TEXT, DESCRIPTION, EMOTION, EXPLANATION, EXPLANATION_LEAD]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
