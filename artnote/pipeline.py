"""scan(): folder -> discover -> hash -> decode -> annotate -> catalog, stage by stage.

Incremental: files whose (path, size, mtime_ns) are unchanged are never opened;
content already annotated (a duplicate, a moved file) is not annotated again.
Resumable: every batch is committed on its own, so a crash or Ctrl-C loses at
most the batch in flight, and the next scan picks up what is still pending.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from operator import attrgetter
from pathlib import Path
from typing import Any

from artnote import discover
from artnote.catalog import Catalog
from artnote.catalog.queries import image_path
from artnote.catalog.rows import FileState, ImageMeta, PendingImage
from artnote.catalog.tracking import hidden_by
from artnote.config import Settings
from artnote.decoding import CHANGED, Decoder
from artnote.errors import AdapterError, ArtnoteError, ImageError
from artnote.export import gc_paused
from artnote.grounding import RecordContexts
from artnote.progress import Progress, ProgressFactory, Silent, open_progress

log = logging.getLogger(__name__)

RECORD_CHUNK = 500  # files per discovery transaction


@dataclass
class ScanSummary:
    """What a scan did. Every file the walk saw is in exactly one of annotated, duplicates,
    unchanged, pending and failed, so they add up to `seen` (a scan of one file sees one).
    `missing` (files gone since the last scan) and `problems` (folders the walk could not
    read) are not files of the walk and are counted apart."""

    run_id: int
    annotated: int = 0  # fed to the model in this run, new or not (--force, a resumed scan)
    unchanged: int = 0  # unchanged on disk, annotated before: not opened
    duplicates: int = 0  # not fed: their content was annotated before, or now by a twin
    failed: int = 0  # cannot be read, each with a reason (in `failures`)
    pending: int = 0  # left for the next scan: --limit, an interruption, changed mid-scan
    seen: int = 0  # files the walk saw: the sum of the five above
    missing: int = 0  # gone from disk since the last scan
    changed_during_scan: int = 0  # rewritten after hashing: left for the next scan
    seconds: float = 0.0
    outcome: str = "completed"  # completed | interrupted
    # This collection's unreadable files, then its unreadable folders (the run's problems).
    failures: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # folders it could not read
    stages: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # seconds
    # --reannotate: why the images were fed again (adapter | prompt | new) -> how many
    reannotated: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.annotated / self.seconds if self.seconds > 0 else 0.0

    @property
    def some_failed(self) -> bool:
        """A file or a folder could not be read (the CLI's exit code 3)."""
        return bool(self.failures or self.failed)

    def counts(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("failures", "problems", "stages", "reannotated")
        }
        out["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        out["images_per_s"] = round(self.images_per_s, 3)
        if self.reannotated:
            out["reannotated"] = dict(self.reannotated)
        return out

    def reasons_line(self) -> str:
        """--reannotate, why images are fed again: 'to annotate: 3 (another prompt: a record
        added or changed, or prompts updated), 2 (another adapter)'; '' for none."""
        why = {
            "prompt": "another prompt: a record added or changed, or prompts updated",
            "adapter": "another adapter",
            "new": "not annotated yet",
        }
        parts = [f"{n} ({why[r]})" for r, n in self.reannotated.items() if n and r in why]
        return "to annotate: " + ", ".join(parts) if parts else ""

    def line(self) -> str:
        """The one-line summary: 'completed in 12.3 s, 10 files: 8 annotated (0.65 images/s),
        0 unchanged, 2 failed; 1 missing'. Annotated, unchanged and failed always show;
        the rest only when not zero, and the rate only when something was annotated."""
        files = "1 file" if self.seen == 1 else f"{self.seen} files"
        parts = [f"{self.annotated} annotated"]
        if self.annotated:
            parts[0] += f" ({self.images_per_s:.2f} images/s)"
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates")
        parts.append(f"{self.unchanged} unchanged")
        if self.pending:
            parts.append(f"{self.pending} left pending")
        parts.append(f"{self.failed} failed")
        text = f"{self.outcome} in {self.seconds:.1f} s, {files}: {', '.join(parts)}"
        if self.missing:
            text += f"; {self.missing} missing"
        if self.problems:
            n = len(self.problems)
            text += f"; {n} {'folder' if n == 1 else 'folders'} unreadable"
        return text


class AnnotatorFactory:
    """Loads the model only when there is something to annotate (a rescan never does)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._annotator: Any = None

    def get(self) -> Any:
        if self._annotator is None:
            self._annotator = self._make()
        return self._annotator


# What `scan` will take a path as (target.kind: folder | file), or NotFoundError ('does not
# exist: PATH') / NotScannableError; it reads the path only: call it before opening a catalog.
check_scan_target = discover.check_target


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
    progress: bool | ProgressFactory = False,
    engine: Callable[..., None] | None = None,
    use_records: bool | None = None,
) -> ScanSummary:
    """Annotate what is new or changed in the folder `root`, or the one image file `root`.

    A file is scanned as part of the catalogued collection it lies in, if any, else of
    its folder; then nothing but that file is looked at, and nothing else is marked
    missing. `progress`: True for a bar on a terminal, else lines (artnote.progress),
    on stderr; or a factory, total -> reporter. The path is checked before anything is
    written to the catalog. `engine`: what annotates the pending images instead of this
    process (artnote.ray_engine.RayEngine; called as _annotate is, without the factory).
    `use_records` (default: settings.prompt.use_records): grounded prompting, each image's
    object record before the questions; with `reannotate`, images whose current annotation
    was made with another prompt (a record added or changed) are annotated again too.
    """
    if use_records is None:
        use_records = settings.prompt.use_records
    target = check_scan_target(root, settings.scan.extensions)
    target = discover.in_collection(target, catalog.collection_roots())
    folder, only = target.folder, target.file
    start = time.perf_counter()
    collection = catalog.ensure_collection(folder)
    run_settings = {
        "root": str(folder),
        **({"file": only} if only is not None else {}),
        "force": force,
        "reannotate": reannotate,
        "limit": limit,
        **_public(settings),
    }
    run_id = catalog.start_run(run_settings, model_name, adapter)
    summary = ScanSummary(run_id=run_id)
    walk = _Walk(folder, only)
    fed: set[str] = set()  # contents the model annotated in this run
    try:
        needed = _discover(walk, collection, run_id, settings, catalog, summary)
        catalog.link_images(collection)  # files new to the catalog join their objects' records
        pending = []
        if needed or force or reannotate:
            contexts = RecordContexts(catalog, use_records)
            pending = catalog.pending_images(
                collection,
                force=force,
                limit=limit if only is None else None,
                reannotate=reannotate,
                adapter=adapter_hash,
                expected_prompts=contexts.prompt_hashes,
            )
            pending = contexts.attach(walk.restrict(pending, catalog, collection, force))
            if reannotate and not force:
                for item in pending:
                    summary.reannotated[item.reason] = summary.reannotated.get(item.reason, 0) + 1
        if pending:
            walk.touched = True
            fresh_only = not (force or reannotate)
            if engine is None:
                args = (run_id, summary, progress, fresh_only, fed)
                _annotate(pending, settings, catalog, annotator, *args)
            else:
                engine(pending, settings, catalog, run_id, summary, progress, fresh_only, fed)
    except KeyboardInterrupt:
        summary.outcome = "interrupted"
    except BaseException:
        summary.seconds = time.perf_counter() - start
        catalog.finish_run(run_id, "failed", summary.counts())
        raise
    if walk.seen is not None:  # else interrupted before the walk was done: nothing to count
        now = catalog.known_files(collection) if walk.touched else walk.known
        for name, count in walk.tally(now, fed, summary.annotated).items():
            setattr(summary, name, count)
    summary.seconds = time.perf_counter() - start
    summary.failures = walk.failures(catalog)
    catalog.finish_run(run_id, summary.outcome, summary.counts(), summary.problems)
    if summary.problems:  # kept with the run: now listed as the latest run's problems
        summary.failures = walk.failures(catalog)
    return summary


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


class _Walk(discover.Walked):
    """The walk's record (discover.Walked), with where it walked: with `only`, one file."""

    def __init__(self, root: Path, only: str | None) -> None:
        super().__init__()
        self.root, self.only = root, only
        self.touched = False  # whether any seen file's status may have changed

    def restrict(
        self, pending: list[PendingImage], catalog: Catalog, collection: int, force: bool
    ) -> list[PendingImage]:
        """The pending files this walk saw; a content whose file (the lowest id of its
        twins) it did not see is fed through a twin it saw, if any.

        Called before anything is annotated: where _discover found nothing changed and
        left `known` empty, it is read here, while it still tells each file's status
        before the scan (tally needs them once files are annotated)."""
        if self.before is not None:
            self.known, self.before = catalog.known_files(collection), None
        strays = [p for p in pending if not self.saw(p.image_id)]
        if not strays:
            return pending
        usable = ("pending", "annotated", "failed") if force else ("pending", "annotated")
        twins: dict[str, PendingImage] = {}
        for rel, k in catalog.known_files(collection).items():  # new files have ids now
            if k.sha256 and k.status in usable and self.saw(k.image_id):
                path = image_path(str(self.root), rel)
                twins.setdefault(
                    k.sha256, PendingImage(k.image_id, path, rel, k.sha256, k.size, k.mtime_ns)
                )
        kept = [p for p in pending if self.saw(p.image_id)]
        kept += [twins[p.sha256] for p in strays if p.sha256 in twins]
        return sorted(kept, key=attrgetter("relpath"))

    def failures(self, catalog: Catalog) -> list[tuple[str, str]]:
        """This scan's unreadable files and folders: not another collection's, nor, for a
        scan of one file, those of the other files of its collection."""
        if self.only is not None:
            path = image_path(str(self.root), self.only)
            return [(p, r) for p, r in catalog.failures() if p == path]
        prefix = str(self.root).rstrip(os.sep) + os.sep
        return [
            (p, r) for p, r in catalog.failures() if p.startswith(prefix) or p == str(self.root)
        ]


def _discover(walk: _Walk, collection, run_id, settings, catalog, summary) -> bool:
    """Walk, compare with the catalog, hash what is new or changed, note what is gone;
    return whether anything may need the model.

    An unchanged file costs one stat and no write: last_seen is only updated for
    files that are (re)recorded or come back after being missing. A rescan that finds
    nothing changed (_nothing_changed) reads the catalog once, as Catalog.hashed_files,
    and makes no KnownFile.
    """
    # Tens of thousands of small tuples, none cyclic: on a 10,000-file rescan
    # (bench/perf_checks.py) pausing the collector took the median from 65-79 ms to 57-60 ms.
    with gc_paused():
        if walk.only is None:
            hashed, by_status = catalog.hashed_files(collection)
            plan = discover.plan_folder(walk.root, hashed, settings.scan.extensions)
            del hashed  # a big collection's: gone before known_files makes another
            if _nothing_changed(plan, by_status):
                walk.unchanged, walk.seen = set(plan.unchanged), len(plan.unchanged)
                walk.before = {s: n for s, n in by_status.items() if s != "missing"}
                return False
            known = catalog.known_files(collection)
            plan = discover.replan(plan, known)
        else:
            known = catalog.known_files(collection)
            plan = discover.scan_file(walk.root, walk.only, known)
    bad_files = [p for p in plan.problems if not p.is_dir]
    walk.known, walk.unchanged = known, set(plan.unchanged)
    walk.seen = len(plan.unchanged) + len(plan.to_hash) + len(bad_files)
    seen = walk.others  # the known ones now, the new ones as they are recorded
    seen.update(known[f.relpath].image_id for f in plan.to_hash if f.relpath in known)
    seen.update(known[p.relpath].image_id for p in bad_files if p.relpath in known)
    returned = [
        k.image_id for k in known.values() if k.status == "missing" and walk.saw(k.image_id)
    ]
    walk.touched = bool(returned or bad_files or plan.to_hash)
    if returned:
        catalog.touch_seen(run_id, returned)
    summary.problems = [(p.abspath, p.reason) for p in plan.problems if p.is_dir]
    gone: list[int] = []
    if walk.only is None:  # one file's scan says nothing of the others
        hidden = hidden_by(plan.unreadable_dirs)
        gone = [
            k.image_id
            for rel, k in known.items()
            if not walk.saw(k.image_id) and k.status != "missing" and not hidden(rel)
        ]
    if bad_files:
        problems = [FileState(p.relpath, 0, 0, None, error=p.reason) for p in bad_files]
        seen.update(catalog.record_files(collection, run_id, problems).values())
    states = discover.hash_files(plan.to_hash, workers=max(1, settings.scan.decode_workers))
    for chunk in _chunks_of(states, RECORD_CHUNK):  # committed as we go: a crash loses one chunk
        seen.update(catalog.record_files(collection, run_id, chunk).values())
    summary.missing = catalog.set_missing(gone) if gone else 0
    if walk.only is None:
        waiting = any(k.status == "pending" for k in known.values())
    else:
        waiting = getattr(known.get(walk.only), "status", None) == "pending"
    return walk.touched or waiting


def _nothing_changed(plan: discover.ScanPlan, by_status: dict[str, int]) -> bool:
    """Whether a walk found every file of the collection that is not missing, and only
    those, each unchanged, nothing unreadable, and none pending: then a rescan has
    nothing to record, nothing to mark missing, and nothing for the model (and `known`
    is not needed: the catalog's counts by status are the tally's)."""
    present = sum(n for status, n in by_status.items() if status != "missing")
    return (
        not plan.problems
        and not plan.to_hash
        and not by_status.get("pending")
        and len(plan.unchanged) == present  # hashed_files has no id twice: each seen once
    )


def _annotate(
    pending, settings, catalog, factory, run_id, summary, progress, fresh_only, fed
) -> None:
    annotator = factory.get()
    batch_size = settings.scan.batch_size or (32 if str(annotator.loaded.device) == "cuda" else 8)
    target = getattr(annotator, "input_size", None)
    bar = reporter(progress, len(pending))
    decode = Decoder(settings.scan.max_pixels, target, settings.scan.decode_workers)
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
            annotations, model_failures = run_model(annotator, good)
            stages["model"] += time.perf_counter() - tick
            failures += model_failures
            tick = time.perf_counter()
            record_batch(
                catalog, run_id, summary, annotations, failures, of_content, meta, fresh_only
            )
            stages["catalog"] += time.perf_counter() - tick
            annotated_ids = {image_id for image_id, _ in annotations}
            fed.update(item.sha256 for item in batch if item.image_id in annotated_ids)
            bar.update(len(batch))
    finally:
        decode.close()
        bar.close()
        for name, seconds in getattr(annotator, "stats", {}).items():
            stages[f"model.{name}"] = seconds


def record_batch(
    catalog, run_id, summary, annotations, failures, of_content, meta, fresh_only
) -> None:
    """One batch's results into the catalog, as every engine writes them: failures with
    their reasons, then the annotations (only_new for a fresh scan: never a duplicate)."""
    catalog.record_failures(failures, of_content=of_content)
    stored = catalog.add_annotations(run_id, annotations, meta=meta, only_new=fresh_only)
    summary.annotated += len(stored)


def run_model(annotator, good) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """Annotate a batch; if the batch fails, retry one by one so one bad image costs only itself."""
    if not good:
        return [], []
    contexts = [getattr(item, "context", "") for item, _ in good]
    try:
        if any(contexts):  # grounded prompting: each image's record before the questions
            out = annotator.annotate([d.image for _, d in good], contexts)
        else:
            out = annotator.annotate([d.image for _, d in good])
        return [(item.image_id, a) for (item, _), a in zip(good, out, strict=True)], []
    except (ArtnoteError, RuntimeError, ValueError) as exc:
        if len(good) == 1:
            return [], [(good[0][0].image_id, f"the model could not process it: {_first(exc)}")]
        log.warning("batch failed (%s); retrying its images one by one", _first(exc))
    done, failed = [], []
    for pair in good:
        a, f = run_model(annotator, [pair])
        done += a
        failed += f
    return done, failed


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


def reporter(progress: bool | ProgressFactory, total: int) -> Progress:
    if callable(progress):
        return progress(total)
    return open_progress(total) if progress else Silent()


def _public(settings: Settings) -> dict[str, Any]:
    data = asdict(settings)
    data.get("catalog", {}).pop("url", None)  # may hold a password
    return data


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
