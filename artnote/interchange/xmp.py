"""IPTC photo metadata in XMP, for digital asset managers, Lightroom/Bridge and web CMSs.

Two writers take catalog rows (`Catalog.export_rows(provenance=True)`):
`write_sidecars()` writes one XMP sidecar per image, and `embed_copies()` writes copies
of the images with the XMP embedded (JPEG, PNG, TIFF, WebP; exiv2 cannot write GIF or
BMP). The XMP itself is written by exiv2 through pyexiv2, never as hand-made XML, and
only artnote's properties are touched: an existing sidecar keeps every other field.

Written per image, text as lang-alt in "x-default" and LANGUAGE:

| property                             | type     | value                               |
|--------------------------------------|----------|-------------------------------------|
| Iptc4xmpCore:AltTextAccessibility    | lang-alt | alt text                            |
| Iptc4xmpCore:ExtDescrAccessibility   | lang-alt | long description                    |
| dc:description                       | lang-alt | long description (alt text if none) |
| artnote:dominantEmotion              | text     | ArtEmis label                       |
| artnote:emotions                     | struct   | nine Reals, e.g. somethingElse      |
| artnote:explanation                  | lang-alt | why that emotion                    |
| artnote:model, modelRevision, adapter, adapterName, promptVersion | text | provenance |
| artnote:annotatedAt, reviewedAt      | date     | ISO 8601                            |
| artnote:status                       | text     | draft, corrected or approved        |
| artnote:textSource                   | text     | machine (draft) or curator          |
| artnote:reviewedBy                   | text     | the curator                         |
| artnote:correctedFields              | seq      | fields a curator rewrote            |

dc:description is IPTC's "Description/Caption", which CMSs show as the caption: the long
description fills it, the alt text having its own property. A property whose value is
empty is removed, so a rerun never leaves a stale value.

The artnote namespace is NAMESPACE (https://artnote.dev/ns/1.0/), prefix "artnote".

Sidecar names: "ext" (default) gives name.ext.xmp (darktable, digiKam), which no two
images share; "stem" gives name.xmp (Lightroom, exiftool), which a.jpg and a.tif would
share: the first in path order gets it, the others are refused, never overwritten.

Files come from the collection, so their bytes are untrusted: every exiv2 call is
guarded, and a file that fails is reported and skipped. An image is written only when
its bytes still match the catalog's sha256, every file is written through artnote.files
(a temporary file beside it, edited by exiv2 there, then renamed into place), and
originals are never written. A full disk stops the export with one line.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from artnote.emotions import EMOTION_COLUMNS, EMOTIONS
from artnote.errors import ArtnoteError
from artnote.files import DiskFullError, WriteError, atomic_path, write_error

LANGUAGE = "en"  # the prompts ask for English; a later language setting replaces this
NAMESPACE = "https://artnote.dev/ns/1.0/"
PREFIX = "artnote"
NAMINGS = ("ext", "stem")
EMPTY_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>\n'
    '<?xpacket end="w"?>\n'
)
# Struct field names: XMP names cannot hold a space ("something else" -> somethingElse).
EMOTION_FIELDS = tuple(
    words[0] + "".join(w.title() for w in words[1:]) for words in (e.split() for e in EMOTIONS)
)
_PLAIN = (  # (row key, artnote property) of the plain-text properties
    ("model", "model"),
    ("model_revision", "modelRevision"),
    ("adapter", "adapter"),
    ("adapter_name", "adapterName"),
    ("prompt_version", "promptVersion"),
    ("annotated_at", "annotatedAt"),
    ("dominant_emotion", "dominantEmotion"),
)
_CHUNK = 1 << 20


class XmpError(ArtnoteError):
    """The XMP export cannot be written as asked (a bad naming, an unwritable folder)."""


class _Refused(Exception):
    """One image is not written; the message is the reason reported for it."""


@dataclass
class XmpReport:
    """How many files were written; the images not written, each with a one-line reason."""

    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image path, why)


Target = Callable[[Path, PurePosixPath], Path]  # (image, relpath) -> file to write
Writer = Callable[[ModuleType, Mapping[str, Any], Path, Path], None]


def write_sidecars(
    rows: Iterable[Mapping[str, Any]], *, out_dir: Path | None = None, naming: str = "ext"
) -> XmpReport:
    """One XMP sidecar per image: beside it, or at out_dir/RELPATH.xmp (out_dir/RELSTEM.xmp
    with naming "stem") for collections on read-only storage. An existing sidecar is
    merged into: only artnote's properties change."""
    if naming not in NAMINGS:
        raise XmpError(f"naming must be one of {', '.join(NAMINGS)}, not {naming!r}")
    if out_dir is not None:
        _ready(out_dir)

    def target(image: Path, relpath: PurePosixPath) -> Path:
        name = (relpath.name if naming == "ext" else relpath.stem) + ".xmp"
        return (image if out_dir is None else out_dir.joinpath(*relpath.parts)).with_name(name)

    return _run(rows, target, _write_sidecar)


def embed_copies(rows: Iterable[Mapping[str, Any]], *, into: Path) -> XmpReport:
    """Copies of the images at into/RELPATH with the XMP embedded; an earlier copy there is
    replaced, an original never (a copy that would land on its own source is refused)."""
    _ready(into)
    return _run(rows, lambda _image, relpath: into.joinpath(*relpath.parts), _write_copy)


def properties(row: Mapping[str, Any]) -> dict[str, Any]:
    """The XMP to write for one row, as pyexiv2 keys and values (None: remove)."""
    status = str(row.get("status") or "draft")
    reviewed = status != "draft"
    description = _lang_alt(row.get("description") or row.get("alt_text"))
    xmp: dict[str, Any] = {
        "Xmp.iptc.AltTextAccessibility": _lang_alt(row.get("alt_text")),
        "Xmp.iptc.ExtDescrAccessibility": _lang_alt(row.get("description")),
        "Xmp.dc.description": description,
        f"Xmp.{PREFIX}.explanation": _lang_alt(row.get("explanation")),
        f"Xmp.{PREFIX}.status": status,
        f"Xmp.{PREFIX}.textSource": "curator" if reviewed else "machine",
        f"Xmp.{PREFIX}.reviewedBy": _text(row.get("reviewed_by")) if reviewed else None,
        f"Xmp.{PREFIX}.reviewedAt": _text(row.get("reviewed_at")) if reviewed else None,
        f"Xmp.{PREFIX}.correctedFields": list(row.get("corrected_fields") or ()) or None,
    }
    xmp.update((f"Xmp.{PREFIX}.{name}", _text(row.get(key))) for key, name in _PLAIN)
    if row.get("object_number"):  # IPTC's artwork fields: the museum's record of the object
        work = "Xmp.iptcExt.ArtworkOrObject"
        xmp[work] = "type=Bag"
        xmp[f"{work}[1]/iptcExt:AOSourceInvNo"] = _text(row["object_number"])
        xmp[f"{work}[1]/iptcExt:AOTitle"] = _lang_alt(row.get("title"))
        xmp[f"{work}[1]/iptcExt:AOCreator"] = [_text(row["maker"])] if row.get("maker") else None
    xmp[f"Xmp.{PREFIX}.emotions"] = "type=Struct"
    for column, name in zip(EMOTION_COLUMNS, EMOTION_FIELDS, strict=True):
        value = row.get(column)
        path = f"Xmp.{PREFIX}.emotions/{PREFIX}:{name}"
        xmp[path] = None if value is None else f"{float(value):.4f}"
    return xmp


def _run(rows: Iterable[Mapping[str, Any]], target: Target, write: Writer) -> XmpReport:
    exiv2 = _exiv2()
    report = XmpReport()
    # The only state kept across rows: which files this run has claimed, so that two
    # images that map to one file are caught without a first pass over the rows. Kept as
    # 64-bit digests of the paths, not Paths: 100,000 images cost a few MB, not 50.
    claimed: set[int] = set()
    for row in rows:
        where = str(row.get("path") or row.get("relpath"))
        try:
            image, relpath = _image_of(row)
            dest = target(image, relpath)
            key = int.from_bytes(hashlib.blake2b(os.fsencode(dest), digest_size=8).digest())
            if key in claimed:
                raise _Refused(f"{dest} belongs to another image of this export; not overwritten")
            claimed.add(key)
            write(exiv2, row, image, dest)
        except DiskFullError:  # every later file would fail the same way: stop, say so
            raise
        except (_Refused, WriteError) as exc:
            report.skipped.append((where, str(exc)))
        except Exception as exc:  # exiv2 parses untrusted bytes: one file, not the run
            report.skipped.append((where, _one_line(exc)))
        else:
            report.written += 1
    return report


def _write_sidecar(exiv2: ModuleType, row: Mapping[str, Any], image: Path, dest: Path) -> None:
    with _open_image(image) as fh:
        _check_sha256(row, _digest(fh))
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        raise _Refused(f"{dest} is not a regular file; not replaced")
    existing = dest.is_file()
    with _temporary(dest, like=dest if existing else None) as tmp:
        if existing:
            shutil.copyfile(dest, tmp)
        else:
            tmp.write_text(EMPTY_PACKET, encoding="utf-8")
        _modify(exiv2, tmp, dest, row)


def _write_copy(exiv2: ModuleType, row: Mapping[str, Any], image: Path, dest: Path) -> None:
    if dest.exists() and os.path.samefile(dest, image):
        raise _Refused("the copy would replace the original; choose another folder")
    with _open_image(image) as src, _temporary(dest, like=image) as tmp:
        # Hash the very bytes copied, so that a change after the check cannot slip in.
        # Streamed, and edited by exiv2 on disk: a big TIFF is never held in memory.
        with open(tmp, "wb") as out:
            _check_sha256(row, _digest(src, out))
        _modify(exiv2, tmp, dest, row)


def _modify(exiv2: ModuleType, tmp: Path, dest: Path, row: Mapping[str, Any]) -> None:
    try:
        with exiv2.Image(str(tmp)) as xmp:
            xmp.modify_xmp(properties(row))
    except Exception as exc:  # exiv2 refusing the format or the bytes
        raise _Refused("exiv2: " + _one_line(exc).replace(str(tmp), dest.name)) from None


@contextmanager
def _temporary(dest: Path, like: Path | None) -> Iterator[Path]:
    """artnote.files.atomic_path for `dest` (its folder made first: mirrored trees); a
    write error of any kind is one line naming `dest`."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest, like=like) as tmp:
            yield tmp
    except OSError as exc:
        raise write_error(dest, exc) from None


@functools.cache
def _exiv2() -> ModuleType:
    import pyexiv2

    # pyexiv2 prints exiv2's warnings to stdout, into the CLI's output; errors still raise.
    pyexiv2.set_log_level(3)
    pyexiv2.registerNs(NAMESPACE, PREFIX)
    return pyexiv2


def _image_of(row: Mapping[str, Any]) -> tuple[Path, PurePosixPath]:
    relpath = PurePosixPath(str(row.get("relpath") or ""))
    if relpath.is_absolute() or not relpath.parts or ".." in relpath.parts:
        raise _Refused("its path leaves the scanned folder")
    return Path(str(row["root"])).joinpath(*relpath.parts), relpath


def _open_image(image: Path) -> Any:
    """The image opened for reading; _Refused when it cannot be."""
    try:
        return open(image, "rb")  # noqa: SIM115 (the caller's with closes it)
    except OSError as exc:
        raise _Refused(f"cannot read the image: {exc.strerror or exc}") from None


def _digest(src: Any, copy: Any = None) -> str:
    sha = hashlib.sha256()
    while chunk := src.read(_CHUNK):
        sha.update(chunk)
        if copy is not None:
            copy.write(chunk)
    return sha.hexdigest()


def _check_sha256(row: Mapping[str, Any], digest: str) -> None:
    if digest != row.get("sha256"):
        raise _Refused("the image changed since the scan (sha256 differs); scan it again")


def _ready(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XmpError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise XmpError(f"cannot write to {folder}: permission denied")


def _lang_alt(value: Any) -> dict[str, str] | None:
    # exiv2 takes the text after 'lang="…" ' verbatim, whatever it holds.
    text = str(value) if value else ""
    return {'lang="x-default"': text, f'lang="{LANGUAGE}"': text} if text.strip() else None


def _text(value: Any) -> str | None:
    if value is None or str(value) == "":
        return None
    text = str(value)
    # exiv2 reads a leading "type=…" as an array type; an empty one before it is dropped.
    return "type= " + text if text.startswith("type=") else text


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return " ".join(str(exc).split())[:300] or type(exc).__name__
