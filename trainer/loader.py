"""Streaming the training images: nothing is kept from one step to the next.

A torch DataLoader walks the epoch's batches (sample indices, in the seeded order).
Its workers read each sample's image from the feature cache, or decode the image
(as `artnote scan` decodes it) and build its prompt prefix; the main process runs
the frozen encoder for the images that were not cached, rounds their features to
float16 and caches them. At most `prefetch` batches per worker wait ahead, so peak
memory depends on the batch size, not on how many images there are.

`Pending` objects are the decoded images that reach the main process; `LIVE`
counts them (a test checks that no step keeps more than a batch and the prefetch).

An image that cannot be read, or whose bytes no longer have the content's sha256 (the
file was replaced since it was curated), is left out of its batch with a warning and
counted in `failed`; the run goes on, and a resumed run leaves it out the same way.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from artnote.errors import ArtnoteError
from trainer.data import Sample
from trainer.errors import TrainerError
from trainer.features import FeatureCache, Prepared, round_features

log = logging.getLogger(__name__)

LIVE: weakref.WeakSet = weakref.WeakSet()  # Pending objects alive in this process


@dataclass(frozen=True)
class Failed:
    """A sample's image that could not be prepared, and why."""

    sha256: str
    reason: str


@dataclass(eq=False)
class Pending:
    """A decoded image not in the cache yet: its prefix and its pixels for the encoder."""

    sha256: str
    input_ids: Any
    image_mask: Any
    pixels: dict[str, Any]


class _Batches:
    """A map-style dataset: batch i -> one Prepared or Pending per sample (run in workers)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        groups: Sequence[Sequence[int]],
        cache: FeatureCache,
        prepare: Callable[[str, str], tuple[Any, Any, dict[str, Any]]],
    ) -> None:
        self.samples, self.groups, self.cache, self.prepare = samples, groups, cache, prepare

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> list[Prepared | Pending | Failed]:
        out: list[Prepared | Pending | Failed] = []
        for index in self.groups[i]:
            sample = self.samples[index]
            item = self.cache.get(sample.sha256)
            if item is None:
                try:
                    ids, mask, pixels = self.prepare(sample.image_path, sample.sha256)
                except (ArtnoteError, OSError) as exc:
                    item = Failed(sample.sha256, f"{sample.image_path}: {exc}")
                else:
                    item = Pending(sample.sha256, ids, mask, pixels)
            out.append(item)
        return out


class ImageStream:
    """Prepared images for batches of samples, in order, with bounded prefetch."""

    def __init__(
        self,
        cache: FeatureCache,
        encoder: Any,
        prepare: Callable[[str, str], tuple[Any, Any, dict[str, Any]]],
        workers: int = 1,
        prefetch: int = 2,
    ) -> None:
        self.cache, self.encoder, self.prepare = cache, encoder, prepare
        self.workers, self.prefetch = workers, prefetch
        self.encoded = 0  # images run through the frozen encoder (a test counts them)
        self.peak_live = 0  # most decoded images alive in this process at once
        self.failed: dict[str, str] = {}  # sha256 -> why its image was left out

    def batches(
        self, samples: Sequence[Sample], groups: Sequence[Sequence[int]]
    ) -> Iterator[tuple[list[Sample], list[Prepared]]]:
        """(samples, prepared images) for each group of indices into `samples`, in order."""
        from torch.utils.data import DataLoader

        if not groups:
            return
        dataset = _Batches(samples, groups, self.cache, self.prepare)
        options: dict[str, Any] = {}
        if self.workers > 0:
            options = {
                "num_workers": self.workers,
                "prefetch_factor": self.prefetch,
                "worker_init_fn": _one_thread,
                "multiprocessing_context": "fork",  # the processor and decoder as they are
            }
        loader = DataLoader(dataset, batch_size=None, shuffle=False, collate_fn=_same, **options)
        for group, items in zip(groups, loader, strict=True):
            for item in items:
                if isinstance(item, Pending):
                    LIVE.add(item)
            self.peak_live = max(self.peak_live, len(LIVE))
            kept = [(samples[i], item) for i, item in zip(group, items, strict=True)]
            for _, item in kept:
                if isinstance(item, Failed) and item.sha256 not in self.failed:
                    self.failed[item.sha256] = item.reason
                    log.warning("left out of training: %s", item.reason)
            kept = [(s, item) for s, item in kept if not isinstance(item, Failed)]
            yield [s for s, _ in kept], self._ready([item for _, item in kept])
            del items, kept

    def _ready(self, items: list[Prepared | Pending]) -> list[Prepared]:
        """Run the frozen encoder once per image not cached (twins in a batch: once)."""
        done: dict[str, Prepared] = {}
        out = []
        for item in items:
            if isinstance(item, Prepared):
                out.append(item)
                continue
            if item.sha256 not in done:
                (frozen,) = self.encoder.encode_frozen(item.pixels)
                frozen = round_features(frozen)
                if not bool(frozen.isfinite().all()):
                    raise TrainerError(
                        f"the vision tower's features of image {item.sha256[:12]} do not fit "
                        "float16 (values beyond 65504); this model cannot use the feature cache"
                    )
                self.encoded += 1
                done[item.sha256] = Prepared(item.input_ids, item.image_mask.bool(), frozen)
                self.cache.put(item.sha256, done[item.sha256])
            out.append(done[item.sha256])
        return out


def _same(item: Any) -> Any:
    return item


def _one_thread(_: int) -> None:
    """A decoding worker uses one thread: the main process needs the cores for the model."""
    import torch

    torch.set_num_threads(1)
