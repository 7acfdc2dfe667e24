"""The frozen-feature cache: what the vision tower says of each image, computed once.

Only the projector after the vision tower (and the language model's adapters and
norms) learn, so the tower's output for an image never changes during training. It
is computed once per image by the scanner's own encoder (the same ONNX file and
precision, see artnote.model.encoder_paths), rounded to float16 and kept on disk
with the image's prompt-prefix ids; the second epoch and the next run on the same
images skip decoding and the vision tower.

Layout: cache_dir()/features/KEY/ab/abcdef....safetensors, one file per image
content (sha256), written whole (artnote.files) and read with safetensors (no
pickle). KEY hashes everything that changes the features: model, revision, family,
the encoder that ran and its weights' fingerprint, the processor's settings, the
prompt prefix and the scan's pixel limit. Files are touched when read; past the
size cap the least recently used go first. A SmolVLM painting is 13-17 tiles of
1024x768 values (20-25 MB), so the cap matters: `[train] feature_cache_gb`.

Training always uses the float16-rounded features, cached or not: a run with the
cache, without it, and its second epoch compute the same numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artnote import __version__
from artnote.files import PARTIAL, WriteError, write_bytes, write_error

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what a file holds changes


@dataclass
class Prepared:
    """One image, ready for the objective: its prompt prefix and frozen features."""

    input_ids: Any  # (1, tokens) the prefix with the image placeholders
    image_mask: Any  # (1, tokens) bool: where the image's embeddings go
    frozen: Any  # float16 features: (tokens, F), or (tiles, tokens, F) for a tiled family


def cache_key(loaded: Any, encoder: Any, prefix: str, max_pixels: int) -> str:
    """What the features depend on, hashed."""
    processor = getattr(loaded.processor, "image_processor", None)
    described = {
        "format": FORMAT,
        "artnote": __version__,
        "model": loaded.name,
        "revision": loaded.revision,
        "family": loaded.family.name,
        "encoder": encoder.name,
        # the ONNX file that runs (its int8 variant) and the frozen weights it was made from
        "session": Path(str(getattr(encoder, "session_path", ""))).name,
        "fingerprint": getattr(encoder, "fingerprint", None),
        # the precision it computes in: an fp16 CUDA export and the CPU's float32 one share
        # a file name and fingerprint; the torch encoder runs in the model's dtype
        "export_dtype": str(getattr(encoder, "export_dtype", None)),
        "dtype": str(loaded.dtype),
        "device": loaded.device.type,
        "processor": processor.to_dict() if hasattr(processor, "to_dict") else repr(processor),
        "prefix": prefix,
        "max_pixels": max_pixels,
    }
    if getattr(encoder, "fingerprint", None) is None:  # the torch encoder: the live weights
        from artnote.model.encoder import encoder_fingerprint

        described["fingerprint"] = encoder_fingerprint(loaded)
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class FeatureCache:
    """Per-image float16 features on disk under `root/key`, capped at `cap_bytes` (0: keep
    nothing on disk)."""

    def __init__(self, root: Path, key: str, cap_bytes: int) -> None:
        self.root = root
        self.folder = root / key
        self.cap = cap_bytes
        self._written = 0  # bytes written since the last eviction

    def path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / f"{sha256}.safetensors"

    def get(self, sha256: str) -> Prepared | None:
        """The cached image, or None (absent, unreadable or malformed: computed again)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if self.cap <= 0:
            return None
        path = self.path(sha256)
        try:
            tensors = load_file(str(path))
            item = Prepared(tensors["input_ids"], tensors["image_mask"].bool(), tensors["frozen"])
        except FileNotFoundError:
            return None
        except (OSError, SafetensorError, KeyError) as exc:
            log.warning("feature cache: %s is unreadable (%s); computing it again", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        _touch(path)  # most recently used: kept longest
        return item

    def put(self, sha256: str, item: Prepared) -> None:
        """Store one image (whole or not at all); a full disk only costs the cache."""
        from safetensors.torch import save

        if self.cap <= 0:
            return
        path = self.path(sha256)
        tensors = {
            "input_ids": item.input_ids.contiguous(),
            "image_mask": item.image_mask.to(dtype=_uint8()).contiguous(),
            "frozen": item.frozen.contiguous(),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = save(tensors)  # bytes, written by Python: the disk's errors reach us
            write_bytes(path, data)
            _touch(path)
            self._written += len(data)
        except (OSError, WriteError) as exc:
            why = write_error(path, exc) if isinstance(exc, OSError) else exc
            log.warning("feature cache: %s; training goes on", why)
            return
        if self._written > self.cap // 20:  # a walk of the cache every 5% of its cap
            self.evict()

    def size(self) -> int:
        """Bytes the cache holds now, every key together."""
        return sum(size for _, size, _ in _files(self.root))

    def evict(self) -> int:
        """Delete the least recently used files (any key) until under the cap; bytes freed."""
        self._written = 0
        day_ago = time.time() - 86400
        for pattern in (f"*/*/.*{PARTIAL}", "*/*/.tmp-*"):  # left by writes that were killed
            for tmp in self.root.glob(pattern):
                with contextlib.suppress(OSError):
                    if tmp.stat().st_mtime < day_ago:
                        tmp.unlink()
        files = sorted(_files(self.root))  # oldest first
        total = sum(size for _, size, _ in files)
        freed = 0
        for _, size, path in files:
            if total - freed <= self.cap:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                freed += size
        return freed


def round_features(frozen: Any) -> Any:
    """What training uses: float16 on the CPU, detached (computed once, never trained)."""
    import torch

    return frozen.detach().to("cpu", torch.float16)


def _files(root: Path) -> list[tuple[float, int, Path]]:
    """(mtime, bytes, path) of every cached file; files vanishing meanwhile are skipped."""
    out = []
    if not root.is_dir():
        return out
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".safetensors"):
                path = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    st = path.stat()
                    out.append((st.st_mtime, st.st_size, path))
    return out


def _touch(path: Path) -> None:
    """Mark as used now, to the clock's resolution (a file system's own 'now' is coarser:
    files used a few milliseconds apart would tie)."""
    now = time.time()
    with contextlib.suppress(OSError):
        os.utime(path, (now, now))


def _uint8() -> Any:
    import torch

    return torch.uint8
