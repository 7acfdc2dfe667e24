"""`artnote scan --engine ray`: the annotation stage on Ray Data, for collections that
outgrow one machine.

The driver (the `artnote scan` process) walks, hashes and plans exactly as the local
engine does (artnote.pipeline.scan: unchanged files are skipped before anything is
sent, byte-identical twins are annotated once, --reannotate, --limit, --adapter).
Only the images to annotate go to Ray:

    from_items(pending) -> map_batches(decode, CPU tasks) -> map_batches(Annotate, actor pool)
                        -> streamed back to the driver -> catalog, a batch at a time

- Decoding runs in CPU tasks with artnote's own safe decoder (size limits, the file
  checked unchanged since it was hashed); an unreadable image becomes a row with its
  reason, never an exception, so it never fails its batch.
- Each actor loads the model, adapter and ONNX encoder once (artnote.model.annotate.
  load_annotator, the local engine's loader) and annotates batches; a batch that fails
  is retried image by image, as locally. Actors are restarted and their tasks retried
  when a worker dies (max_restarts, max_task_retries).
- Results come back to the driver, which alone writes the catalog, in batches, with
  the local engine's writes (only_new for a fresh scan; twins of a content written
  once per run): a retried task never makes a duplicate, and a killed run resumes
  like a local one. Workers need no catalog credentials, and a local Ray may use SQLite.

This module depends on artnote; artnote's library never imports it (only the CLI
does, for --engine ray). Ray is an optional extra: pip install -e ".[ray]".
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from artnote.config import CatalogSettings, Settings
from artnote.errors import ArtnoteError, ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[ray]"'


class RayUnavailable(ArtnoteError):
    """--engine ray without Ray installed, or a Ray set-up that cannot work."""


@dataclass
class RayOptions:
    address: str | None = None  # None: a Ray started for this scan on this machine
    workers: int = 1  # annotator actors (one model each)
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 0  # images per actor call; 0: [scan] batch_size, else 8 (32 with GPUs)


def check_ray(options: RayOptions, catalog_url: str) -> None:
    """Refuse what cannot work, before anything is opened or written."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable(
            f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    if options.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if options.gpus_per_worker < 0 or options.cpus_per_worker <= 0:
        raise ConfigError("--gpus-per-worker must be 0 or more and --cpus-per-worker above 0")
    from artnote.catalog.engine import catalog_url as parse

    remote = options.address not in (None, "", "local")
    if remote and parse(catalog_url).get_backend_name() == "sqlite":
        raise ConfigError(
            "a SQLite catalog cannot be shared by a Ray cluster's nodes: use a PostgreSQL "
            "catalog (--catalog postgresql+psycopg://...), or no --ray-address for a local Ray"
        )


class RayEngine:
    """The annotation stage of pipeline.scan, run on Ray (pipeline.scan's `engine`)."""

    def __init__(
        self,
        options: RayOptions,
        adapter_dir: Path | None = None,
        adapter_name: str | None = None,
        on_batch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.options = options
        self.adapter_dir, self.adapter_name = adapter_dir, adapter_name
        self.on_batch = on_batch  # sees each result batch (tests: which process made it)
        self.pids: set[int] = set()  # the processes annotations came from

    def __call__(self, pending, settings, catalog, run_id, summary, progress, fresh_only, fed):
        from artnote import pipeline

        ray = _start(self.options)
        from ray.data import ActorPoolStrategy

        batch = self.options.batch_size or settings.scan.batch_size
        batch = batch or (32 if self.options.gpus_per_worker else 8)
        target = _input_size(settings)
        rows = [
            {"image_id": p.image_id, "sha256": p.sha256, "path": p.path, "size": p.size,
             "mtime_ns": p.mtime_ns, "context": p.context}
            for p in pending
        ]  # fmt: skip
        ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch)))
        ds = ds.map_batches(
            _decode_rows,
            batch_size=batch,
            fn_kwargs={"max_pixels": settings.scan.max_pixels, "target": target},
            num_cpus=1,
            batch_format="numpy",
        )
        ds = ds.map_batches(
            _Annotate,
            batch_size=batch,
            compute=ActorPoolStrategy(size=self.options.workers),
            fn_constructor_kwargs={
                # The catalog URL (it may hold a password) stays with the driver.
                "settings": replace(settings, catalog=CatalogSettings(url="")),
                "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
                "adapter_name": self.adapter_name,
            },
            num_cpus=self.options.cpus_per_worker,
            num_gpus=self.options.gpus_per_worker or None,
            batch_format="numpy",
        )  # Ray Data restarts a dead actor and runs its batches again (its defaults:
        # max_restarts=-1, max_task_retries=-1); test_a_worker_killed_mid_run_costs_nothing
        bar = pipeline.reporter(progress, len(pending))
        stages = summary.stages
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            tick = time.perf_counter()
            for out in batches:
                stages["ray_wait"] += time.perf_counter() - tick
                if self.on_batch is not None:
                    self.on_batch(out)
                tick = time.perf_counter()
                self._record(out, catalog, run_id, summary, fresh_only, fed)
                stages["catalog"] += time.perf_counter() - tick
                bar.update(len(out["image_id"]))
                tick = time.perf_counter()
        finally:
            bar.close()
            # Stopped early (Ctrl-C, SIGTERM, an error): closing the iterator shuts Ray
            # Data's executor down now, which kills the annotator actors, rather than
            # whenever the garbage collector gets to it.
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _record(self, out, catalog, run_id, summary, fresh_only, fed) -> None:
        from artnote import pipeline
        from artnote.catalog.rows import ImageMeta
        from artnote.records import annotation_from_dict

        annotations, failures, of_content, meta = [], [], [], {}
        for i, image_id in enumerate(out["image_id"].tolist()):
            sha = str(out["sha256"][i])
            if bool(out["changed"][i]):
                summary.changed_during_scan += 1
                continue
            if out["error"][i]:
                failures.append((image_id, str(out["error"][i])))
                if bool(out["of_content"][i]):
                    of_content.append(image_id)
                continue
            if sha in fed:  # a retried task's second answer for a content done in this run
                continue
            self.pids.add(int(out["pid"][i]))
            meta[image_id] = ImageMeta(
                int(out["width"][i]), int(out["height"][i]),
                str(out["format"][i]) or None, str(out["mode"][i]),
            )  # fmt: skip
            annotations.append((image_id, annotation_from_dict(json.loads(out["annotation"][i]))))
            fed.add(sha)
        pipeline.record_batch(
            catalog, run_id, summary, annotations, failures, of_content, meta, fresh_only
        )


def _start(options: RayOptions) -> Any:
    """The Ray to use: one already started in this process (tests), the cluster at
    --ray-address, or a local one for this scan."""
    import ray

    if not ray.is_initialized():
        address = None if options.address in (None, "", "local") else options.address
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # artnote's own bar or log lines
    context.print_on_execution_start = False
    return ray


def _input_size(settings: Settings) -> int | None:
    """The longest edge the model takes, from its processor alone (no weights loaded)."""
    from transformers import AutoProcessor

    from artnote.model.inputs import input_size
    from artnote.model.load import quiet_transformers

    quiet_transformers()
    processor = AutoProcessor.from_pretrained(
        settings.model.name,
        revision=settings.model.revision,
        trust_remote_code=settings.model.trust_remote_code,
    )
    if settings.model.max_image_side:  # as load_model sets it: decode to the same size
        from transformers import AutoConfig

        from artnote.model.families import family_of_config
        from artnote.model.load import apply_max_image_side

        config = AutoConfig.from_pretrained(
            settings.model.name,
            revision=settings.model.revision,
            trust_remote_code=settings.model.trust_remote_code,
        )
        apply_max_image_side(processor, settings.model.max_image_side, family_of_config(config))
    return input_size(processor)


# ---- in Ray's processes ----------------------------------------------------------------


def _decode_rows(batch: dict[str, Any], max_pixels: int, target: int | None) -> dict[str, Any]:
    """CPU task: decode each image as the local engine does; a failure is a row, not an
    exception. Pixels travel as raw RGB bytes with their size."""
    import numpy as np

    from artnote.catalog.rows import PendingImage
    from artnote.decoding import CHANGED, decode_pending
    from artnote.errors import ImageError

    out: dict[str, list[Any]] = {k: [] for k in _DECODED}
    for i in range(len(batch["image_id"])):
        item = PendingImage(
            int(batch["image_id"][i]), str(batch["path"][i]), "", str(batch["sha256"][i]),
            int(batch["size"][i]), int(batch["mtime_ns"][i]),
        )  # fmt: skip
        result = decode_pending(item, max_pixels, target)
        row = {"image_id": item.image_id, "sha256": item.sha256, "pixels": b"", "w": 0, "h": 0,
               "width": 0, "height": 0, "format": "", "mode": "", "error": "",
               "of_content": False, "changed": result is CHANGED,
               "context": str(batch["context"][i])}  # fmt: skip
        if isinstance(result, ImageError):
            row.update(error=str(result), of_content=bool(result.of_content))
        elif result is not CHANGED:
            image = result.image
            row.update(pixels=image.tobytes(), w=image.width, h=image.height,
                       width=result.width, height=result.height,
                       format=result.format or "", mode=result.mode)  # fmt: skip
        for k in _DECODED:
            out[k].append(row[k])
    return {k: np.array(v, dtype=object if k in _OBJECTS else None) for k, v in out.items()}


_DECODED = ("image_id", "sha256", "pixels", "w", "h", "width", "height", "format", "mode",
            "error", "of_content", "changed", "context")  # fmt: skip
_OBJECTS = ("sha256", "pixels", "format", "mode", "error", "context")


class _Annotate:
    """Actor: the model, adapter and encoder, loaded once; a batch of decoded images in,
    their annotations (JSON) or failures out."""

    def __init__(self, settings: Settings, adapter_dir: str | None, adapter_name: str | None):
        from artnote.model.annotate import load_annotator

        self.annotator = load_annotator(
            settings, Path(adapter_dir) if adapter_dir else None, adapter_name
        )
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from types import SimpleNamespace

        import numpy as np
        from PIL import Image

        from artnote import pipeline

        n = len(batch["image_id"])
        good = []
        for i in range(n):
            if batch["error"][i] or bool(batch["changed"][i]):
                continue
            size = (int(batch["w"][i]), int(batch["h"][i]))
            image = Image.frombytes("RGB", size, batch["pixels"][i])
            item = SimpleNamespace(image_id=int(batch["image_id"][i]),
                                   context=str(batch["context"][i]))  # fmt: skip
            good.append((item, SimpleNamespace(image=image)))
        done, failed = pipeline.run_model(self.annotator, good)
        texts = {image_id: json.dumps(a.to_dict()) for image_id, a in done}
        errors = dict(failed)
        out = {k: batch[k] for k in ("image_id", "sha256", "width", "height", "format", "mode",
                                     "of_content", "changed")}  # fmt: skip
        ids = [int(x) for x in batch["image_id"]]
        out["error"] = np.array(
            [batch["error"][i] or errors.get(ids[i], "") for i in range(n)], dtype=object
        )
        out["annotation"] = np.array([texts.get(i, "") for i in ids], dtype=object)
        out["pid"] = np.full(n, self.pid)
        return out
