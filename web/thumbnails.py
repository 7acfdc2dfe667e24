"""Bounded JPEG copies of catalog images: thumbnails for the grid, previews for the page.

Made once per content (sha256) and size with artnote.images' safe decoding (the pixel
limit is checked from the header, so a decompression bomb is refused, never decoded;
TIFF, 16-bit, CMYK... all come out RGB), kept under CACHE/thumbnails, and served from
there. The original file is never served.
"""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

from artnote.errors import ImageError
from artnote.files import WriteError, write_bytes
from artnote.images import decode_image

THUMB = 256
PREVIEW = 1024
QUALITY = {THUMB: 80, PREVIEW: 85}
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Decoding a 400-megapixel TIFF takes its size in memory: two at a time at most.
_DECODES = threading.BoundedSemaphore(2)


def cached_path(folder: Path, sha256: str, size: int) -> Path:
    return folder / sha256[:2] / f"{sha256}-{size}.jpg"


def cached(folder: Path, sha256: str | None, size: int) -> bytes | None:
    """The JPEG kept for this content and size, None when there is none."""
    if sha256 is None or _SHA256.fullmatch(sha256) is None:
        return None
    try:
        return cached_path(folder, sha256, size).read_bytes()
    except OSError:
        return None


def jpeg_of(
    folder: Path,
    source: str,
    sha256: str | None,
    size: int,
    *,
    max_pixels: int,
    unchanged: bool,
) -> bytes:
    """The JPEG of `source` at most `size` pixels on its longest edge; ImageError when it
    cannot be read. Cached by content when the file is still the one the catalog hashed
    (`unchanged`: same size and mtime as recorded), else made but not kept."""
    keep = unchanged and sha256 is not None and _SHA256.fullmatch(sha256) is not None
    if keep:
        assert sha256 is not None
        path = cached_path(folder, sha256, size)
        try:
            return path.read_bytes()
        except OSError:
            pass
    with _DECODES:
        decoded = decode_image(source, max_pixels=max_pixels, target_size=size)
    out = io.BytesIO()
    try:
        decoded.image.save(out, "JPEG", quality=QUALITY.get(size, 85), optimize=True)
    finally:
        decoded.image.close()
    data = out.getvalue()
    if keep:
        assert sha256 is not None
        _write_atomically(cached_path(folder, sha256, size), data)
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a whole file or nothing (two requests may make the same thumbnail at once)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data)
    except (OSError, WriteError):
        pass  # a cache that cannot be written costs time, not the page


__all__ = ["ImageError", "PREVIEW", "THUMB", "jpeg_of"]
