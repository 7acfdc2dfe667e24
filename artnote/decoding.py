"""Decoding ahead of the model: the local engine's worker threads, and the one-image
rule every engine uses (decode_pending)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from artnote.catalog.rows import PendingImage
from artnote.errors import ImageError
from artnote.images import decode_image


def decode_pending(item: PendingImage, max_pixels: int, target: int | None) -> Any:
    """The image ready for the model, its ImageError, or CHANGED (rewritten since hashed)."""
    try:
        if not _unchanged(item):
            return CHANGED
        decoded = decode_image(Path(item.path), max_pixels=max_pixels, target_size=target)
        # Rewritten while we read it? Its pixels may not be the content that was hashed.
        return decoded if _unchanged(item) else CHANGED
    except ImageError as exc:
        return exc


class Decoder:
    """Decodes ahead of the model in worker threads and groups images of like shape.

    It works on windows of BUCKET_WINDOW batches: while the model runs on one
    window's batches, the next window decodes. Inside a window, images are
    sorted by aspect ratio before being cut into batches, so images that the
    processor splits into the same number of tiles (the same prompt length)
    share a batch and left padding is small. Memory stays O(window).
    """

    def __init__(self, max_pixels: int, target: int | None, workers: int) -> None:
        self.max_pixels, self.target = max_pixels, target
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="artnote-decode")

    def _submit(self, window: list[PendingImage]) -> list[Future]:
        return [self.pool.submit(self._one, p) for p in window]

    def _one(self, item: PendingImage) -> Any:
        return decode_pending(item, self.max_pixels, self.target)

    def batches(self, pending: list[PendingImage], size: int) -> Iterator[tuple[list, list]]:
        windows = list(_chunks(pending, size * BUCKET_WINDOW))
        ahead = self._submit(windows[0]) if windows else []
        for i, window in enumerate(windows):
            current = ahead
            ahead = self._submit(windows[i + 1]) if i + 1 < len(windows) else []
            results = [f.result() for f in current]
            order = sorted(range(len(window)), key=lambda k: _shape_key(results[k]))
            for group in _chunks(order, size):
                yield [window[k] for k in group], [results[k] for k in group]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# A file rewritten after it was hashed: its pixels are not the hashed content, so it is
# left pending; the next scan sees the new size/mtime, hashes it again and annotates it.
CHANGED = object()


def _unchanged(item: PendingImage) -> bool:
    if item.size < 0:
        return True
    try:
        st = os.stat(item.path)
    except OSError:
        return True  # let the decoder report the reason
    return (st.st_size, st.st_mtime_ns) == (item.size, item.mtime_ns)


BUCKET_WINDOW = 2  # batches decoded and sorted together (two windows are in memory)


def _shape_key(result: Any) -> float:
    if isinstance(result, ImageError) or result is CHANGED:
        return -1.0
    return round(result.image.width / max(1, result.image.height), 1)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
