"""ArtEmis's nine emotion categories, in the order the catalog and exports use."""

EMOTIONS: tuple[str, ...] = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
    "something else",
)

# Column names for the catalog and CSV export ("something else" -> "something_else").
EMOTION_COLUMNS: tuple[str, ...] = tuple(e.replace(" ", "_") for e in EMOTIONS)


def normalise_emotion(name: str) -> str | None:
    """Map user input (any case, '_' or ' ') to a canonical label, or None."""
    key = name.strip().lower().replace("_", " ").replace("-", " ")
    return key if key in EMOTIONS else None
