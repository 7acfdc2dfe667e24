"""Benchmark: `scan --engine ray` against the local engine, on one machine.

    python bench/ray_bench.py [--images N] [--shape tiny|smolvlm-256m] [--tokens T]
                              [--batch-size B] [--workers W] [--json FILE]

Both engines scan the same images (unique copies of ../shared/art) with the same
RANDOM-weight model of the named architecture (saved to a folder, loaded by both
as a scan loads it) and T generated tokens per field, each into its own catalog.
What the engine costs is split apart:

- start-up: Ray's own start (ray.init) and, for both, the time to the first
  annotated batch (the model load, the ONNX export or its cache, the first batch);
- steady state: images/s from the first annotated batch to the last, the number the
  goal is about (Ray's steady state at least 0.8x the local engine's on 2 CPUs).

The ONNX export is made once before either run (a warm-up scan of one image), so
neither pays it. Every number printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class _Clock:
    """Progress reporter that timestamps each annotated batch (a pipeline ProgressFactory)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def __call__(self, total: int) -> _Clock:
        return self

    def update(self, n: int = 1) -> None:
        self.marks.append((time.perf_counter(), n))

    def close(self) -> None:
        pass


def _model_folder(shape: str, work: Path) -> Path:
    from scan_bench import build

    from artnote.model.tiny import build_tiny_model

    if shape == "tiny":
        return build_tiny_model(work / "tiny", "smolvlm")
    loaded = build(shape, "cpu", work)
    folder = work / shape
    loaded.model.save_pretrained(folder)
    loaded.processor.save_pretrained(folder)
    return folder


def _settings(model: Path, tokens: int, batch: int, db: Path):
    from artnote.config import Settings

    s = Settings()
    s.model.name, s.model.device = str(model), "cpu"
    g = s.generation
    g.alt_text_tokens = g.description_tokens = g.explanation_tokens = g.min_new_tokens = tokens
    s.scan.batch_size = batch
    s.catalog.url = str(db)
    return s


def _scan(folder: Path, settings, engine=None) -> dict[str, Any]:
    from artnote.catalog import open_catalog
    from artnote.model.annotate import load_annotator
    from artnote.pipeline import AnnotatorFactory, scan

    clock = _Clock()
    start = time.perf_counter()
    with open_catalog(settings.catalog.url) as cat:
        summary = scan(
            folder,
            settings,
            cat,
            AnnotatorFactory(lambda: load_annotator(settings)),
            model_name=settings.model.name,
            progress=clock,
            engine=engine,
        )
    end = time.perf_counter()
    first_t, first_n = clock.marks[0]
    later = sum(n for _, n in clock.marks[1:])
    span = clock.marks[-1][0] - first_t
    # Batches that arrive together (Ray Data may hand several over at once) give no rate:
    # steady state needs at least two later batches spread over a second or more.
    steady = later / span if len(clock.marks) >= 3 and span >= 1.0 else None
    return {
        "annotated": summary.annotated,
        "seconds": end - start,
        "to_first_batch_s": first_t - start,
        "steady_images_per_s": steady,
        "steady_images": later,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--shape", default="smolvlm-256m", choices=("tiny", "smolvlm-256m"))
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import ray
    from scan_bench import make_collection

    from artnote.ray_engine import RayEngine, RayOptions

    with tempfile.TemporaryDirectory(prefix="artnote-ray-bench-") as tmp:
        work = Path(tmp)
        os.environ["ARTNOTE_CACHE_DIR"] = str(work / "cache")
        model = _model_folder(args.shape, work)
        folder = work / "images"
        make_collection(folder, args.images)
        warm = work / "warm"
        make_collection(warm, 1)
        _scan(warm, _settings(model, 2, 1, work / "warm.db"))  # the ONNX export, once

        local = _scan(folder, _settings(model, args.tokens, args.batch_size, work / "local.db"))
        print(f"local: {json.dumps(local)}", file=sys.stderr, flush=True)
        tick = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - tick
        try:
            engine = RayEngine(RayOptions(workers=args.workers, batch_size=args.batch_size))
            remote = _scan(
                folder, _settings(model, args.tokens, args.batch_size, work / "ray.db"), engine
            )
        finally:
            ray.shutdown()
    remote["ray_init_s"] = ray_start
    steady = (remote["steady_images_per_s"], local["steady_images_per_s"])
    ratio = steady[0] / steady[1] if None not in steady else None
    overall = local["seconds"] / (remote["seconds"] + ray_start)  # everything included
    result = {
        "shape": args.shape,
        "images": args.images,
        "tokens": args.tokens,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "local": local,
        "ray": remote,
        "steady_ratio_ray_over_local": ratio,
        "overall_ratio_ray_over_local": overall,
    }
    print(f"images: {args.images} ({args.shape}, {args.tokens} tokens per field, batch "
          f"{args.batch_size}, {args.workers} Ray worker(s), {os.cpu_count()} CPUs)")  # fmt: skip

    def rate(x: float | None) -> str:
        return "not measurable (results came in one burst)" if x is None else f"{x:.3f} images/s"

    print(f"local: steady {rate(local['steady_images_per_s'])}; first batch after "
          f"{local['to_first_batch_s']:.1f} s; all {local['seconds']:.1f} s")  # fmt: skip
    print(f"ray:   steady {rate(remote['steady_images_per_s'])}; ray.init {ray_start:.1f} s, "
          f"then first batch after {remote['to_first_batch_s']:.1f} s; "
          f"all {remote['seconds']:.1f} s")  # fmt: skip
    if ratio is not None:
        print(f"steady state, ray / local: {ratio:.2f}x (goal >= 0.8x)")
    print(f"whole run (start-up and model loads included), ray / local: {overall:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
