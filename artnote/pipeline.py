"""scan(): folder -> discover -> hash -> decode -> annotate -> catalog, stage by stage.

Incremental: files whose (path, size, mtime_ns) are unchanged are never opened;
content already annotated (a duplicate, a moved file) is not annotated again.
Resumable: every batch is committed on its own, so a crash or Ctrl-C loses at
most the batch in flight, and the next scan picks up what is still pending.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from artnote import discover
from artnote.catalog import Catalog
from artnote.catalog.catalog import hidden_by
from artnote.catalog.rows import FileState, ImageMeta, PendingImage
from artnote.config import Settings
from artnote.errors import AdapterError, ArtnoteError, ImageError
from artnote.images import decode_image

log = logging.getLogger(__name__)

RECORD_CHUNK = 500  # files per discovery transaction


@dataclass
class ScanSummary:
    run_id: int
    annotated: int = 0  # images the model annotated in this run
    unchanged: int = 0  # files skipped without being opened
    duplicates: int = 0  # new files whose content was already (or is now) annotated
    failed: int = 0  # files that could not be read, with a reason each
    missing: int = 0  # files gone from disk since the last scan
    changed_during_scan: int = 0  # rewritten after hashing: left for the next scan
    seconds: float = 0.0
    outcome: str = "completed"  # completed | interrupted
    failures: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # folders it could not read
    stages: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # seconds

    @property
    def images_per_s(self) -> float:
        return self.annotated / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("failures", "problems", "stages")
        }
        out["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        out["images_per_s"] = round(self.images_per_s, 3)
        return out


class AnnotatorFactory:
    """Loads the model only when there is something to annotate (a rescan never does)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._annotator: Any = None

    def get(self) -> Any:
        if self._annotator is None:
            self._annotator = self._make()
        return self._annotator


def scan(
    root: Path,
    settings: Settings,
    catalog: Catalog,
    annotator: AnnotatorFactory,
    *,
    model_name: str,
    adapter: str | None = None,
    adapter_hash: str | None = None,
    force: bool = False,
    reannotate: bool = False,
    limit: int | None = None,
    progress: bool = False,
) -> ScanSummary:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ArtnoteError(f"not a folder: {root}")
    root = root.resolve()
    start = time.perf_counter()
    collection = catalog.ensure_collection(root)
    run_settings = {
        "root": str(root),
        "force": force,
        "reannotate": reannotate,
        "limit": limit,
        **_public(settings),
    }
    run_id = catalog.start_run(run_settings, model_name, adapter)
    summary = ScanSummary(run_id=run_id)
    try:
        changed = _discover(root, collection, run_id, settings, catalog, summary)
        pending = []
        if changed or force or reannotate:
            pending = catalog.pending_images(
                collection, force=force, limit=limit, reannotate=reannotate, adapter=adapter_hash
            )
        if pending:
            fresh_only = not (force or reannotate)
            _annotate(pending, settings, catalog, annotator, run_id, summary, progress, fresh_only)
    except KeyboardInterrupt:
        summary.outcome = "interrupted"
    except BaseException:
        summary.seconds = time.perf_counter() - start
        catalog.finish_run(run_id, "failed", summary.counts())
        raise
    summary.seconds = time.perf_counter() - start
    summary.failures = _failures_under(catalog, root)
    summary.failed = len(summary.failures)
    catalog.finish_run(run_id, summary.outcome, summary.counts(), summary.problems)
    if summary.problems:  # kept with the run: now listed as the latest run's problems
        summary.failures = _failures_under(catalog, root)
        summary.failed = len(summary.failures)
    return summary


def _failures_under(catalog: Catalog, root: Path) -> list[tuple[str, str]]:
    """This folder's unreadable files: another collection's failures are not this scan's."""
    prefix = str(root).rstrip(os.sep) + os.sep
    return [(p, r) for p, r in catalog.failures() if p.startswith(prefix) or p == str(root)]


def resolve_adapter(catalog: Catalog, choice: str | None) -> tuple[Path | None, str | None]:
    """--adapter NAME|DIR|latest -> (folder, name); (None, None) for the base model."""
    if not choice:
        return None, None
    path = Path(choice).expanduser()
    if path.is_dir():
        return path.resolve(), path.name
    known = catalog.adapters()
    if choice == "latest":
        if not known:
            raise AdapterError(
                "--adapter latest: no adapter is registered yet (run artnote finetune)"
            )
        chosen = known[-1]
    else:
        chosen = next((a for a in known if a["name"] == choice), None)
        if chosen is None:
            names = ", ".join(a["name"] for a in known) or "none registered"
            raise AdapterError(
                f"no adapter folder or registered adapter named {choice!r} ({names})"
            )
    folder = Path(chosen["path"])
    if not folder.is_dir():
        raise AdapterError(f"adapter {chosen['name']!r} is registered at {folder}, which is gone")
    return folder, chosen["name"]


def _discover(root, collection, run_id, settings, catalog, summary) -> bool:
    """Walk, compare with the catalog, hash what is new or changed, note what is gone.

    An unchanged file costs one stat and no write: last_seen is only updated for
    files that are (re)recorded or come back after being missing.
    """
    with _gc_paused():  # tens of thousands of small tuples, none of them cyclic
        known = catalog.known_files(collection)
        plan = discover.scan_folder(root, known, settings.scan.extensions)
    summary.unchanged = len(plan.unchanged)
    seen = set(plan.unchanged)
    seen.update(known[f.relpath].image_id for f in plan.to_hash if f.relpath in known)
    seen.update(known[p.relpath].image_id for p in plan.problems if p.relpath in known)
    returned = [k.image_id for k in known.values() if k.status == "missing" and k.image_id in seen]
    if returned:
        catalog.touch_seen(run_id, returned)
    summary.problems = [(p.abspath, p.reason) for p in plan.problems if p.is_dir]
    hidden = hidden_by(plan.unreadable_dirs)
    gone = [
        k.image_id
        for rel, k in known.items()
        if k.image_id not in seen and k.status != "missing" and not hidden(rel)
    ]
    if plan.problems and any(not p.is_dir for p in plan.problems):
        problems = [
            FileState(p.relpath, 0, 0, None, error=p.reason) for p in plan.problems if not p.is_dir
        ]
        catalog.record_files(collection, run_id, problems)
    seen_new: set[str] = set()
    states = discover.hash_files(plan.to_hash, workers=max(1, settings.scan.decode_workers))
    for chunk in _chunks_of(states, RECORD_CHUNK):  # committed as we go: a crash loses one chunk
        shas = [s.sha256 for s in chunk if s.sha256]
        already = catalog.annotated_contents(shas)
        for sha in shas:  # a twin of an annotated content, or of another new file
            if sha in already or sha in seen_new:
                summary.duplicates += 1
            seen_new.add(sha)
        catalog.record_files(collection, run_id, chunk)
    summary.missing = catalog.set_missing(gone) if gone else 0
    # Could anything need the model? (Saves the pending query on an unchanged rescan.)
    return bool(plan.to_hash) or any(k.status == "pending" for k in known.values())


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: the rescan makes a tuple or two per file, and
    the collection passes those trigger walk every object in the process. On a
    10,000-file rescan (bench/perf_checks.py) the median went from 65-79 ms to 57-60 ms."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _annotate(pending, settings, catalog, factory, run_id, summary, progress, fresh_only) -> None:
    annotator = factory.get()
    batch_size = settings.scan.batch_size or (32 if str(annotator.loaded.device) == "cuda" else 8)
    target = getattr(annotator, "input_size", None)
    bar = _bar(len(pending), progress)
    decode = _Decoder(settings.scan.max_pixels, target, settings.scan.decode_workers)
    stages = summary.stages
    try:
        batches = decode.batches(pending, batch_size)
        while True:
            tick = time.perf_counter()
            try:
                batch, decoded = next(batches)
            except StopIteration:
                break
            stages["decode_wait"] += time.perf_counter() - tick
            if fresh_only:  # another scan may have annotated some since the list was read
                done = catalog.annotated_contents([item.sha256 for item in batch])
                summary.duplicates += sum(item.sha256 in done for item in batch)
            else:
                done = set()
            good, failures, meta, of_content = [], [], {}, []
            for item, result in zip(batch, decoded, strict=True):
                if item.sha256 in done:
                    continue
                if result is CHANGED:
                    summary.changed_during_scan += 1
                    continue
                if isinstance(result, ImageError):
                    failures.append((item.image_id, str(result)))
                    if result.of_content:
                        of_content.append(item.image_id)
                else:
                    good.append((item, result))
                    meta[item.image_id] = ImageMeta(
                        result.width, result.height, result.format, result.mode
                    )
            tick = time.perf_counter()
            annotations, model_failures = _run_model(annotator, good)
            stages["model"] += time.perf_counter() - tick
            failures += model_failures
            tick = time.perf_counter()
            catalog.record_failures(failures, of_content=of_content)
            stored = catalog.add_annotations(run_id, annotations, meta=meta, only_new=fresh_only)
            stages["catalog"] += time.perf_counter() - tick
            summary.annotated += len(stored)
            summary.duplicates += len(annotations) - len(stored)
            bar.update(len(batch))
    finally:
        decode.close()
        bar.close()
        for name, seconds in getattr(annotator, "stats", {}).items():
            stages[f"model.{name}"] = seconds


def _run_model(annotator, good) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """Annotate a batch; if the batch fails, retry one by one so one bad image costs only itself."""
    if not good:
        return [], []
    try:
        out = annotator.annotate([d.image for _, d in good])
        return [(item.image_id, a) for (item, _), a in zip(good, out, strict=True)], []
    except (ArtnoteError, RuntimeError, ValueError) as exc:
        if len(good) == 1:
            return [], [(good[0][0].image_id, f"the model could not process it: {_first(exc)}")]
        log.warning("batch failed (%s); retrying its images one by one", _first(exc))
    done, failed = [], []
    for pair in good:
        a, f = _run_model(annotator, [pair])
        done += a
        failed += f
    return done, failed


class _Decoder:
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
        try:
            if not _unchanged(item):
                return CHANGED
            decoded = decode_image(
                Path(item.path), max_pixels=self.max_pixels, target_size=self.target
            )
            # Rewritten while we read it? Its pixels may not be the content that was hashed.
            return decoded if _unchanged(item) else CHANGED
        except ImageError as exc:
            return exc

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


def _chunks_of(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc="annotating",
        unit="img",
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _public(settings: Settings) -> dict[str, Any]:
    data = asdict(settings)
    data.get("catalog", {}).pop("url", None)  # may hold a password
    return data


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
