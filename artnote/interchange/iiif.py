"""IIIF Presentation 3 for viewers (Mirador, Universal Viewer) and aggregators.

`write_iiif()` turns catalog rows into a top-level Collection of Manifests, one Manifest
per folder of a scanned collection. Each present image is one Canvas (the image's
width and height), painted by the image itself (`--base-url` + its path under the
scanned folder, or an IIIF Image API 3 service when `--image-service` is given),
with one AnnotationPage of W3C Web Annotations carrying artnote's text:

| annotation   | motivation   | body                                     |
|--------------|--------------|------------------------------------------|
| alt text     | `describing` | TextualBody, `purpose: describing`       |
| description  | `describing` | TextualBody, `purpose: describing`       |
| emotion      | `tagging`    | TextualBody: the dominant ArtEmis label  |
| explanation  | `describing` | TextualBody: why that emotion            |

Each annotation carries a `label` naming which one it is, the text's `language`, and who
wrote it, so that machine text stays apart from human text (the practice of linked.art
and the National Gallery): `creator` is the model (an Agent of type Software, named
with its adapter) for model text, the model and the approving curator (a Person) for
approved model text, and the curator alone for a curator's correction; `generator` is
always artnote. `created` is when the model wrote it, `modified` when a curator last
reviewed it.

The models come from `iiif-prezi3` (the IIIF community's library), which checks every
object as it is built. Each Manifest is written, atomically, as soon as its folder is
complete, and its canvases are serialised one by one, so memory stays flat at any size:
the catalog's path order closes a folder for good once the walk leaves it. Folders are
therefore kept open only along the current path (a stack as deep as the folder tree).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

from artnote import __version__
from artnote.errors import ArtnoteError
from artnote.files import atomic_write, write_error

LANGUAGE = "en"  # the prompts ask for English; a later language setting replaces this
CONTEXT = "http://iiif.io/api/presentation/3/context.json"
GENERATOR = {"type": "Software", "name": f"artnote {__version__}"}
# (row key, label, motivation); the emotion's body is the dominant label itself
TEXTS = (
    ("alt_text", "Alt text", "describing"),
    ("description", "Description", "describing"),
    ("dominant_emotion", "Emotion (ArtEmis)", "tagging"),
    ("explanation", "Emotion explanation", "describing"),
)
REVIEW_FIELD = {"dominant_emotion": "emotion"}  # row key -> correction field, where they differ
OBJECT = "\0object"  # the first half of an object's manifest key (a folder's: its root)


class IiifError(ArtnoteError):
    """The IIIF export cannot be written as asked (a bad URL, an unwritable folder)."""


class _Discarded(Exception):
    """Thrown into a manifest's atomic_write to drop its temporary file."""


@dataclass
class IiifReport:
    manifests: int = 0
    canvases: int = 0
    collection: Path | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def write_iiif(
    rows: Iterable[Mapping[str, Any]],
    out: Path,
    *,
    base_url: str,
    iiif_url: str | None = None,
    label: str = "artnote collection",
    image_service: str | None = None,
    per: str = "folder",
) -> IiifReport:
    """Write out/collection.json and one out/manifests/NAME.json per folder, or with
    per="object" per object of the collection records (rows in export_rows(by_object=True)
    order; images without a record still go per folder).

    `base_url`: where the scanned folders' images are served (an image's URL is base_url
    + its path under the scanned folder). `iiif_url`: where `out` itself will be served
    (the ids of the written documents); default base_url + "iiif/".
    """
    if per not in ("folder", "object"):
        raise IiifError(f"--per must be folder or object, not {per!r}")
    base = _url_folder(base_url, "--base-url")
    published = _url_folder(iiif_url or base + "iiif/", "--iiif-url")
    service = _url_folder(image_service, "--image-service").rstrip("/") if image_service else None
    try:
        (out / "manifests").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IiifError(f"cannot write to {out}: {exc.strerror or exc}") from None
    writer = _Writer(out, published, base, service)
    report = IiifReport()
    try:
        for row in rows:
            folder = _folder_of(row)
            if per == "object" and folder and row.get("object_number"):
                folder = (OBJECT, str(row["object_number"]))
            size = _size(row) if folder else None
            if folder is None or size is None:
                why = "its path leaves the scanned folder" if folder is None else "unreadable"
                report.skipped.append((str(row.get("path")), why))
                continue
            writer.close_until(folder, report)
            writer.open(folder, row).add(row, size)
            report.canvases += 1
        writer.close_until(None, report)
    except OSError as exc:
        raise IiifError(f"cannot write to {out}: {exc.strerror or exc}") from None
    finally:
        writer.discard_open()
    from iiif_prezi3 import Collection, ManifestRef

    collection = Collection(
        id=published + "collection.json",
        label={LANGUAGE: [label]},
        items=[ManifestRef(id=i, label={LANGUAGE: [name]}) for i, name in writer.written],
    )
    report.collection = out / "collection.json"
    _write_atomically(report.collection, lambda fh: fh.write(collection.jsonld()))
    return report


class _Manifest:
    """One folder's Manifest, written canvas by canvas to a temporary file."""

    def __init__(self, writer: _Writer, key: tuple[str, str], part: int, first: Any) -> None:
        root, folder = key
        self.writer = writer
        self.name = folder or Path(root).name or "collection"
        if root == OBJECT and first.get("title"):  # an object's manifest: its title
            self.name = f"{first['title']} ({folder})"
        self.path = writer.out / "manifests" / _file_name(key, folder or self.name, part)
        if part > 1:
            self.name += f" (part {part})"
        self.id = writer.published + "manifests/" + self.path.name
        self.count = 0
        from iiif_prezi3 import Manifest

        metadata = _record_metadata(first) if root == OBJECT else None
        manifest = Manifest(id=self.id, label={LANGUAGE: [self.name]}, items=[], metadata=metadata)
        shell = json.loads(manifest.jsonld())
        del shell["items"]
        head = json.dumps(shell, ensure_ascii=False)
        # Held open across many rows, so entered by hand: close() publishes, discard() drops.
        self.file, self.done = atomic_write(self.path, "w", encoding="utf-8"), False
        self.fh: IO[str] = self.file.__enter__()
        self.write(head[:-1] + ', "items": [')

    def add(self, row: Mapping[str, Any], size: tuple[int, int]) -> None:
        canvas = _canvas(row, size, self.id, self.writer.base, self.writer.service)
        self.write((",\n" if self.count else "\n") + canvas)
        self.count += 1

    def write(self, text: str) -> None:
        """Append `text`; a failure drops the manifest (whether it is open or closing)."""
        try:
            self.fh.write(text)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError):  # a full disk names this manifest
                raise write_error(self.path, exc) from None
            raise

    def close(self) -> None:
        self.write("\n]}\n")
        self.done = True
        self.file.__exit__(None, None, None)

    def discard(self) -> None:
        if not self.done:
            self.done = True
            self.file.__exit__(_Discarded, _Discarded(), None)  # removes the temporary file


class _Writer:
    def __init__(self, out: Path, published: str, base: str, service: str | None) -> None:
        self.out, self.published, self.base, self.service = out, published, base, service
        self.open_folders: list[tuple[tuple[str, str], _Manifest]] = []  # outermost first
        self.written: list[tuple[str, str]] = []  # (manifest id, label)
        # Manifests written per folder: more than one only where the database's collation
        # does not sort paths bytewise (PostgreSQL in some locales) and a folder comes back.
        self.parts: dict[tuple[str, str], int] = {}

    def open(self, key: tuple[str, str], row: Mapping[str, Any]) -> _Manifest:
        if self.open_folders and self.open_folders[-1][0] == key:
            return self.open_folders[-1][1]
        self.parts[key] = self.parts.get(key, 0) + 1
        manifest = _Manifest(self, key, self.parts[key], row)
        self.open_folders.append((key, manifest))
        return manifest

    def discard_open(self) -> None:
        """After a failure: remove the manifests still being written."""
        for _, manifest in self.open_folders:
            manifest.discard()
        self.open_folders.clear()

    def close_until(self, key: tuple[str, str] | None, report: IiifReport) -> None:
        """Close the open folders that `key` (the next row's folder) is not inside: path
        order never comes back to them."""
        while self.open_folders and not _inside(key, self.open_folders[-1][0]):
            _, manifest = self.open_folders.pop()
            manifest.close()
            self.written.append((manifest.id, manifest.name))
            report.manifests += 1


def _inside(key: tuple[str, str] | None, folder: tuple[str, str]) -> bool:
    if key is None or key[0] != folder[0]:
        return False
    if folder[0] == OBJECT:  # objects do not nest
        return key == folder
    return key[1] == folder[1] or not folder[1] or key[1].startswith(folder[1] + "/")


def _canvas(
    row: Mapping[str, Any], size: tuple[int, int], manifest_id: str, base: str, service: str | None
) -> str:
    from iiif_prezi3 import Annotation, AnnotationPage, Canvas

    relpath = str(row["relpath"])
    canvas_id = f"{manifest_id}/canvas/{row['image_id']}"
    width, height = size
    painting = Annotation(
        id=canvas_id + "/painting",
        motivation="painting",
        body=_image_body(relpath, width, height, base, service),
        target=canvas_id,
    )
    texts = [
        _text_annotation(row, key, title, motivation, f"{canvas_id}/annotation/{key}", canvas_id)
        for key, title, motivation in TEXTS
        if row.get(key)
    ]
    canvas = Canvas(
        id=canvas_id,
        label={"none": [PurePosixPath(relpath).name]},
        metadata=_record_metadata(row),
        width=width,
        height=height,
        items=[AnnotationPage(id=canvas_id + "/page/painting", items=[painting])],
        annotations=[AnnotationPage(id=canvas_id + "/page/artnote", items=texts)],
    )
    data = canvas.model_dump(exclude_none=True, by_alias=True, mode="json")
    return json.dumps(data, ensure_ascii=False)


def _image_body(
    relpath: str, width: int, height: int, base: str, service: str | None
) -> dict[str, Any]:
    kind = mimetypes.guess_type(relpath)[0] or "image/jpeg"
    if service is None:
        url = base + quote(relpath)
        return {"id": url, "type": "Image", "format": kind, "width": width, "height": height}
    identifier = f"{service}/{quote(relpath, safe='')}"  # the Image API escapes "/" too
    return {
        "id": identifier + "/full/max/0/default.jpg",
        "type": "Image",
        "format": "image/jpeg",
        "width": width,
        "height": height,
        "service": [{"id": identifier, "type": "ImageService3", "profile": "level1"}],
    }


def _text_annotation(
    row: Mapping[str, Any], key: str, title: str, motivation: str, anno_id: str, target: str
) -> Any:
    from iiif_prezi3 import Annotation

    value = str(row[key])
    body = {
        "type": "TextualBody",
        "value": value,
        "format": "text/plain",
        "language": LANGUAGE,
        "purpose": motivation,
    }
    extra: dict[str, Any] = {"creator": _creators(row, REVIEW_FIELD.get(key, key))}
    if row.get("annotated_at"):
        extra["created"] = str(row["annotated_at"])
    if row.get("reviewed_at") and row.get("status") != "draft":
        extra["modified"] = str(row["reviewed_at"])
    return Annotation(
        id=anno_id,
        label={"en": [title]},
        motivation=motivation,
        body=body,
        target=target,
        generator=GENERATOR,
        **extra,
    )


def _record_metadata(row: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The museum's object number, title and maker (artnote import records), as IIIF
    metadata pairs; None for an image without a record."""
    if not row.get("object_number"):
        return None
    pairs = [("Object number", "object_number"), ("Title", "title"), ("Maker", "maker")]
    return [
        {"label": {LANGUAGE: [label]}, "value": {"none": [str(row[key])]}}
        for label, key in pairs
        if row.get(key)
    ]


def _creators(row: Mapping[str, Any], review_field: str) -> list[dict[str, str]]:
    """Who wrote this text: the curator for a correction; the model, joined by the curator
    who approved it, for model text."""
    curator = {"type": "Person", "name": str(row.get("reviewed_by") or "unnamed curator")}
    if review_field in (row.get("corrected_fields") or ()):
        return [curator]
    model = str(row.get("model") or "unknown model")
    if row.get("adapter"):
        name = row.get("adapter_name") or "adapter"
        model += f" + {name} ({str(row['adapter'])[:12]})"
    software = {"type": "Software", "name": model}
    return [software, curator] if row.get("status") == "approved" else [software]


def _size(row: Mapping[str, Any]) -> tuple[int, int] | None:
    width, height = row.get("width"), row.get("height")
    if width and height:
        return int(width), int(height)
    from PIL import Image  # the catalog lacks the size: read the file's header

    try:
        with Image.open(str(row["path"])) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)  # turned
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _folder_of(row: Mapping[str, Any]) -> tuple[str, str] | None:
    relpath = PurePosixPath(str(row["relpath"]))
    if relpath.is_absolute() or ".." in relpath.parts:
        return None
    parent = str(relpath.parent)
    return str(row["root"]), "" if parent == "." else parent


def _file_name(key: tuple[str, str], name: str, part: int) -> str:
    """A stable file name per folder: readable, and unique across collections."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "folder"
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:8]
    return f"{slug}.{digest}.json" if part == 1 else f"{slug}.{digest}.part{part}.json"


def _url_folder(url: str, option: str) -> str:
    if not re.match(r"https?://[^/\s]+", url) or any(c.isspace() for c in url):
        raise IiifError(f"{option} must be an http(s) URL, not {url!r}")
    return url if url.endswith("/") else url + "/"


def _write_atomically(path: Path, write: Any) -> None:
    try:
        with atomic_write(path, "w", encoding="utf-8") as fh:
            write(fh)
    except OSError as exc:
        raise write_error(path, exc) from None
