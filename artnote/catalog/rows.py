"""Plain records the catalog takes and returns (no SQLAlchemy objects leak out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class KnownFile(NamedTuple):
    """What the catalog remembers of a file from earlier scans.

    A named tuple, not a dataclass: a rescan builds one per file of the
    collection, and tuples are several times cheaper to make.
    """

    image_id: int
    size: int
    mtime_ns: int
    sha256: str | None
    status: str


@dataclass(frozen=True, slots=True)
class FileState:
    """A new or changed file as discovery (and hashing) saw it.

    `error` is set when the file could not be read for hashing; it is then
    recorded as failed with that reason.
    """

    relpath: str
    size: int
    mtime_ns: int
    sha256: str | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """Facts learned by decoding: size after EXIF orientation, file format, original mode."""

    width: int
    height: int
    format: str | None
    mode: str | None


@dataclass(frozen=True, slots=True)
class PendingImage:
    """One file to feed to the model: the representative of a content not yet annotated."""

    image_id: int
    path: str  # absolute
    relpath: str
    sha256: str
    size: int = -1  # as hashed: the decoder skips a file that changed since
    mtime_ns: int = -1
    # With reannotate: the current annotation's adapter and prompt hash (None: none yet).
    current: tuple[str | None, str] | None = None
    reason: str = "new"  # why it is fed again: new | adapter | prompt | force
    context: str = ""  # grounded prompting: its record's facts (prompts.record_context)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """An image row, as `find_image` returns it."""

    id: int
    collection_id: int
    path: str  # absolute, as exported
    relpath: str
    size: int
    mtime_ns: int
    sha256: str | None
    width: int | None
    height: int | None
    format: str | None
    mode: str | None
    status: str
    error: str | None
