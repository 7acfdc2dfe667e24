"""Plain records passed between the model, the pipeline and the catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from artnote.emotions import EMOTIONS


@dataclass
class Provenance:
    """Where an annotation came from: enough to reproduce it and to tell AI text from human text."""

    model: str  # hub id or folder as given
    revision: str | None  # resolved commit hash when known
    family: str  # llava | idefics3 | artgpt4
    adapter: str | None  # adapter content hash, None for the base model
    adapter_name: str | None
    prompt_version: str  # version of the prompt set in artnote.model.prompts
    prompt_hash: str  # sha256 prefix of the exact prompt texts used
    generation: dict[str, Any]  # max tokens per field, sampling settings
    encoder: str  # onnx | torch
    device: str
    ms: float  # wall time for this image's share of its batch
    # The text fields (artnote.text.TEXT_FIELDS order) whose model output held characters
    # that artnote.text removes or replaces (controls, noncharacters, CR and other line
    # breaks than LF), so a reader knows the stored text differs from the output in more
    # than spacing. The key is absent from provenance stored before cleaning existed.
    cleaned: list[str] = field(default_factory=list)


@dataclass
class Annotation:
    alt_text: str  # one sentence, at most 125 characters
    description: str  # long artistic description
    emotions: dict[str, float]  # ArtEmis's nine labels (EMOTIONS order) -> probability, sums to 1
    dominant_emotion: str
    explanation: str  # ArtEmis-style: "... because ..."
    provenance: Provenance
    alt_text_truncated: bool = False  # the model ran over 125 characters and was cut
    extra: dict[str, Any] = field(default_factory=dict)

    def emotion_vector(self) -> list[float]:
        return [self.emotions[e] for e in EMOTIONS]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def annotation_from_dict(data: dict[str, Any]) -> Annotation:
    """The inverse of Annotation.to_dict (an annotation sent between processes as JSON)."""
    values = dict(data)
    values["provenance"] = Provenance(**values["provenance"])
    return Annotation(**values)


# The catalogue fields of an object record that artnote knows by name (artnote import
# records); anything else in a collection system's export is kept in `extra`.
RECORD_FIELDS = ("title", "maker", "date", "medium", "dimensions", "credit_line", "rights")


@dataclass
class CollectionRecord:
    """A museum's record of one object (its current revision), as imported from a
    collection system: what the museum already knows about the work."""

    object_number: str  # the accession number, the museum's key
    title: str | None = None
    maker: str | None = None  # artist, maker or culture, as the museum displays it
    date: str | None = None  # as written ("c. 1831", "1889")
    medium: str | None = None
    dimensions: str | None = None
    credit_line: str | None = None
    rights: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other columns, kept as given
    revision: int = 1  # 1 for the first import, +1 each time an import changes the record
