"""The fine-tuning benchmark's child process: one `finetune` run, measured step by step.

bench/train_bench.py starts each run as `train_bench.py --child SPEC OUT` in a fresh
process (so that its peak RSS is its own); the spec names the model, data and settings,
and the per-step records go to OUT as JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import time
from pathlib import Path
from typing import Any


class _Done(Exception):
    """Raised from on_step after the last measured step."""


def child(spec_path: Path, out_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    from artnote.config import Settings

    settings = Settings()
    settings.model.name, settings.model.device = spec["model"], spec["device"]
    settings.model.encoder = spec["encoder"]
    settings.model.encoder_precision = spec["encoder_precision"]
    settings.train.loader_workers = spec["loader_workers"]
    if spec.get("prepare"):
        out_path.write_text(json.dumps(_prepare(settings)))
        return
    import trainer.finetune as ft
    from trainer.data import CuratedImage, samples_from
    from trainer.hyperparameters import Hyperparameters

    curated = [CuratedImage(**c) for c in json.loads(Path(spec["curated"]).read_text())]
    steps, batch = spec["steps"], spec["batch_size"]
    per_epoch = math.ceil(len(samples_from(curated)) / batch)
    hp = Hyperparameters(
        epochs=math.ceil(steps / per_epoch),  # at least `steps` steps; on_step stops there
        batch_size=batch,
        val_fraction=0.0,
        eval_generate=False,
        checkpoint_every=10**9,  # no checkpoint among the steps
    )
    rec = _Recorder()
    make_context = ft.make_context

    def instrumented(*a: Any, **kw: Any):
        ctx = make_context(*a, **kw)
        rec.instrument(ctx)
        return ctx

    ft.make_context = instrumented

    def on_step(step: int) -> None:
        rec.step()
        if step >= steps:
            raise _Done

    start = time.perf_counter()
    try:
        ft.finetune(curated, settings, hp, Path(spec["out_dir"]), progress=False, on_step=on_step)
    except _Done:
        pass
    else:
        raise SystemExit(f"finetune ended after {len(rec.steps)} steps, before {steps}")
    out_path.write_text(
        json.dumps(
            {
                "steps": rec.steps,
                "setup_seconds": rec.started - start,
                "encode_seconds": rec.encode_total,
                "tiles": rec.tiles,
                "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "children_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                "peak_decoded": rec.ctx.stream.peak_live,
                "encoder": rec.ctx.encoder.name,
                "feature_cache_bytes": rec.ctx.cache.size(),
            }
        )
    )


def _prepare(settings: Any) -> dict[str, Any]:
    """Load the model and make its encoder: the ONNX export (and int8 copy) is cached."""
    from artnote.model.encoder import make_encoder
    from artnote.model.load import load_model

    start = time.perf_counter()
    loaded = load_model(settings.model)
    encoder = make_encoder(loaded, settings.model.encoder, settings.model.encoder_precision)
    return {"encoder": encoder.name, "setup_seconds": time.perf_counter() - start}


class _Recorder:
    """Per step: its seconds (wall and CPU), samples (and how many are emotion samples), a
    digest of its batch, the images the vision tower ran on and its seconds, the seconds
    spent waiting on the loader (whose worker reads the cache or decodes), and the peak
    RSS so far."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.ctx: Any = None
        self.tiles, self.encode_total = 0, 0.0
        self.started = self.last = self.last_cpu = 0.0
        self._zero()

    def _zero(self) -> None:
        self.keys: list[str] = []
        self.emotion, self.encoded, self.encode_s, self.encode_cpu, self.wait_s = 0, 0, 0, 0, 0

    def instrument(self, ctx: Any) -> None:
        self.ctx = ctx
        stream, encoder = ctx.stream, ctx.encoder
        batches, encode_frozen = stream.batches, encoder.encode_frozen

        def timed_encode(pixels: dict[str, Any]):
            tick, cpu = time.perf_counter(), time.process_time()
            try:
                return encode_frozen(pixels)
            finally:
                spent = time.perf_counter() - tick
                self.encode_cpu += time.process_time() - cpu
                self.encode_s += spent
                self.encode_total += spent
                self.encoded += 1
                shape = getattr(pixels.get("pixel_values"), "shape", ())
                self.tiles += int(shape[1]) if len(shape) == 5 else 1

        def timed_batches(samples, groups):
            inner = batches(samples, groups)
            while True:
                tick, before = time.perf_counter(), self.encode_s
                try:
                    batch, prepared = next(inner)
                except StopIteration:
                    return
                # the time in next(), less the vision tower's (it runs inside the stream)
                self.wait_s += time.perf_counter() - tick - (self.encode_s - before)
                self.keys += [f"{s.sha256}:{s.field}" for s in batch]
                self.emotion += sum(s.field == "emotion" for s in batch)
                yield batch, prepared

        stream.batches = timed_batches
        encoder.encode_frozen = timed_encode
        self.started = self.last = time.perf_counter()
        self.last_cpu = time.process_time()

    def step(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.steps.append(
            {
                "seconds": now - self.last,
                "cpu_seconds": cpu - self.last_cpu,  # every thread of this process
                "samples": len(self.keys),
                "emotion": self.emotion,
                "batch": hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:12],
                "encoded": self.encoded,
                "encode_seconds": self.encode_s,
                "encode_cpu_seconds": self.encode_cpu,
                "wait_seconds": self.wait_s,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        self.last, self.last_cpu = now, cpu
        self._zero()
