"""Benchmark: the fine-tuning loop's memory and speed, cold and with the feature cache.

    python bench/train_bench.py [--shape tiny|smolvlm-256m|llava-1.5-7b] [--steps 50]
                                [--sizes 200,2000] [--batch-size 4] [--encoder onnx|torch]
                                [--longest-edge 512] [--repeat 1] [--json FILE]

The curated data is made here: N copies of the paintings in ../shared/art
($ARTNOTE_ART_DIR), at most 384 px on the long side, each recoloured so that every
copy has its own sha256, each with an alt text, a description and an emotion (three
samples per image). The model is a RANDOM-weight one of the named architecture,
saved to a temporary folder that `finetune` loads by name, as a real checkpoint.
SmolVLM's processor resizes every image to its longest_edge before cutting 512 px
tiles (upscaling a small one): --longest-edge 512 (the default) gives one tile per
image; the checkpoint's own 2048 gives 13-17, which at batch 4 needs more than 22 GB
on a CPU (the emotion objective runs each prefix once per emotion, 9 times).

For each size, `finetune` runs twice, each time in a fresh child process (so that
each run's peak RSS is its own), for --steps optimizer steps on one temporary
feature cache: cold (the cache starts empty: the vision tower computes the features
of every image the steps meet) and warm (the same steps again, the same batches in
the same order: every image's features come from the cache). Steps are timed from
one `on_step` to the next; the first step of each run (the loader worker's start)
is left out. The cached-step speed-up compares the same steps: the cold run's steps
that ran the vision tower against those steps in the warm run. Reported also:
samples/s, where the time went (the vision tower, waiting on the loader, the rest:
the language model's forward and backward and the optimizer), and each run's peak
RSS; the ratio of the largest size's to the smallest's shows whether memory grows
with the data set. Validation is off (val_fraction 0, no generation) and no
checkpoint is written during the steps. Model construction, the one-time ONNX export
and the data are made outside every timing.

On a machine shared with other work, --repeat R runs every cold and warm run R times
(the same batches each time) and counts each step with its fastest repeat: another
process taking a core slows torch's threads many times over, never speeds them up.

The child's side (one run, measured) is bench/train_bench_child.py; the printed report
is bench/train_bench_report.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scan_bench import SHAPES  # noqa: E402
from train_bench_child import child  # noqa: E402
from train_bench_report import print_report  # noqa: E402

GOAL_RSS_RATIO = 1.2  # peak RSS at the largest size / at the smallest, at most
GOAL_SPEEDUP = 2.0  # seconds per step with the vision tower / from the cache, at least
MAX_EDGE = 384  # the copies' longest edge, in pixels
SAMPLES_PER_IMAGE = 3  # alt text, description, emotion

_DESCRIPTIONS = [
    "A landscape in strong colour, with a clear horizon and a bright sky.",
    "A portrait in bold brushwork; the figure fills most of the canvas.",
    "A calm scene of water and light, painted in soft blues and greens.",
    "A crowded composition of curving forms that lead the eye across the picture.",
]


# ---- the parent: data, model, children, figures ------------------------------------


def art_sources() -> list[Path]:
    art = Path(os.environ.get("ARTNOTE_ART_DIR", ROOT.parent / "shared" / "art"))
    if "ARTNOTE_ART_DIR" not in os.environ and not art.is_dir():
        art = ROOT / "tests" / "fixtures" / "art"  # a checkout without ../shared
    sources = sorted(art.glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no paintings in {art} (set ARTNOTE_ART_DIR)")
    return sources


def make_curated(folder: Path, count: int) -> list[dict[str, Any]]:
    """`count` curated images (CuratedImage fields): recoloured copies of the paintings,
    at most MAX_EDGE px, each with a distinct sha256, an alt text, a description and an
    emotion."""
    from PIL import Image

    from artnote.emotions import EMOTIONS

    sources = art_sources()
    small = []
    for src in sources:
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((MAX_EDGE, MAX_EDGE), Image.Resampling.LANCZOS)
            small.append(im)
    folder.mkdir(parents=True, exist_ok=True)
    out, seen = [], set()
    for i in range(count):
        k = i // len(sources)  # which copy of its painting: its own colour shift
        shift = [3 * (k % 17) - 24, 3 * (k // 17 % 17) - 24, 3 * (k // 289 % 17) - 24]
        bands = [
            band.point(lambda v, d=d: max(0, min(255, v + d)))
            for band, d in zip(small[i % len(sources)].split(), shift, strict=True)
        ]
        src = sources[i % len(sources)]
        path = folder / f"{i:05d}_{src.stem}.jpg"
        Image.merge("RGB", bands).save(path, quality=90)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() in seen:  # JPEG's rounding met another copy
            data += b"\0artnote-train-bench-%d" % i
            path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        seen.add(digest)
        out.append(
            {
                "image_path": str(path),
                "sha256": digest,
                "alt_text": f"A painting: {src.stem.replace('_', ' ').replace('-', ' ')}.",
                "description": _DESCRIPTIONS[i % len(_DESCRIPTIONS)],
                "emotions": {EMOTIONS[i % len(EMOTIONS)]: 1.0},
            }
        )
    return out


def build_model(shape: str, device: str, folder: Path, longest_edge: int = 0) -> Path:
    """A RANDOM-weight model of `shape`, saved (model + processor) where load_model finds it.
    longest_edge: the SmolVLM processor's (0: the shape's own)."""
    if shape == "tiny":
        from artnote.model.tiny import build_tiny_model

        return build_tiny_model(folder, "smolvlm")
    if shape == "llava-1.5-7b" and device != "cuda":
        raise SystemExit("llava-1.5-7b needs a CUDA GPU (7B random weights are built on the GPU)")
    import torch
    from transformers import AutoModelForImageTextToText

    from artnote.model import tiny
    from artnote.model.load import quiet_transformers, resolve_dtype

    quiet_transformers()
    spec = SHAPES[shape]
    if longest_edge and "longest_edge" in spec:
        spec = {**spec, "longest_edge": longest_edge}
    tokenizer = tiny.family_tokenizer(spec["family"])
    config, processor = tiny.config_and_processor(spec["family"], tokenizer, spec)
    config.artnote_note = tiny.RANDOM_WEIGHTS_NOTE
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=resolve_dtype("auto", device))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def processor_edge(shape: str, longest_edge: int) -> int | None:
    """The longest edge the saved processor resizes images to (None: not a tiled family)."""
    if shape == "tiny":
        from artnote.model.tiny import TINY_SHAPES

        return TINY_SHAPES["smolvlm"]["longest_edge"]
    spec = SHAPES[shape]
    return (longest_edge or spec["longest_edge"]) if "longest_edge" in spec else None


def run_child(spec: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """One measured finetune run (or the export, with spec["prepare"]) in a fresh process."""
    spec_path, out_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path), str(out_path)],
        env={**os.environ, "ARTNOTE_CACHE_DIR": spec["cache_dir"], "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0 or not out_path.is_file():
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"train_bench: the {name} run failed (exit status {proc.returncode})")
    result = json.loads(out_path.read_text())
    result["process_seconds"] = time.perf_counter() - start
    return result


def summarise(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's figures from its per-step records (the first step left out). Repeated runs
    take the same steps: each step counts with its fastest repeat (other work on a shared
    machine only ever slows a step down), the peak RSS is the largest."""
    run = repeats[0]
    steps = [
        min(same, key=lambda s: s["seconds"])
        for same in zip(*(r["steps"] for r in repeats), strict=True)
    ]
    if any(
        s["batch"] != t["batch"] for r in repeats for s, t in zip(r["steps"], steps, strict=True)
    ):
        raise SystemExit("train_bench: repeated runs took different batches")
    timed = steps[1:]
    parallel = sorted(s["cpu_seconds"] / s["seconds"] for r in repeats for s in r["steps"][1:])
    typical = parallel[len(parallel) // 2]
    seconds = sum(s["seconds"] for s in timed)
    encode = sum(s["encode_seconds"] for s in timed)
    wait = sum(s["wait_seconds"] for s in timed)
    encoded = sum(s["encoded"] for s in steps)
    first_encoded = sum(s["encoded"] for s in run["steps"])  # run["tiles"] counts its tiles
    return {
        "steps": len(steps),
        "timed_steps": len(timed),
        "first_step_seconds": steps[0]["seconds"],
        "seconds": seconds,
        "seconds_per_step": seconds / len(timed),
        "cpu_seconds_per_step": sum(s["cpu_seconds"] for s in timed) / len(timed),
        "samples_per_s": sum(s["samples"] for s in timed) / seconds,
        "tower_steps": sum(1 for s in timed if s["encoded"] > 0),
        "encoded_images": encoded,
        "tiles_per_image": run["tiles"] / first_encoded if first_encoded else None,
        "share_vision_tower": encode / seconds,
        "share_loader_wait": wait / seconds,
        "share_model_and_optimizer": max(0.0, 1 - (encode + wait) / seconds),
        "vision_tower_seconds_per_image": (
            sum(s["encode_seconds"] for s in steps) / encoded if encoded else None
        ),
        "most_emotion_samples_in_a_step": max(s["emotion"] for s in steps),
        "repeats": len(repeats),
        # steps (of every repeat) whose process used under 0.7x the cores it typically
        # did: others' work took them; the fastest repeat of a step is what counts
        "contended_steps": sum(1 for p in parallel if p < 0.7 * typical),
        "setup_seconds": min(r["setup_seconds"] for r in repeats),
        "process_seconds": [r["process_seconds"] for r in repeats],
        "peak_rss_mb": max(r["rss_kb"] for r in repeats) / 1024,
        "loader_worker_peak_rss_mb": max(r["children_rss_kb"] for r in repeats) / 1024,
        "peak_decoded_images": max(r["peak_decoded"] for r in repeats),
        "feature_cache_mb": run["feature_cache_bytes"] / 1e6,
        "encoder": run["encoder"],
        "per_step": steps,
    }


def size_figures(n: int, cold: dict[str, Any], warm: dict[str, Any]) -> dict[str, Any]:
    """One size's cold and warm runs, and the speed-up over the steps they share: the
    steps (same batches, same order) that ran the vision tower cold and none warm."""
    pairs = [
        (c, w)
        for c, w in zip(cold["per_step"][1:], warm["per_step"][1:], strict=True)
        if c["batch"] == w["batch"] and c["encoded"] > 0 and w["encoded"] == 0
    ]
    tower = sum(c["seconds"] for c, _ in pairs) / len(pairs) if pairs else None
    cached = sum(w["seconds"] for _, w in pairs) / len(pairs) if pairs else None
    tower_cpu = sum(c["cpu_seconds"] for c, _ in pairs)
    cached_cpu = sum(w["cpu_seconds"] for _, w in pairs)
    return {
        "images": n,
        "samples": SAMPLES_PER_IMAGE * n,
        "cold": cold,
        "warm": warm,
        "peak_rss_mb": max(cold["peak_rss_mb"], warm["peak_rss_mb"]),
        "same_batches": all(
            c["batch"] == w["batch"]
            for c, w in zip(cold["per_step"], warm["per_step"], strict=True)
        ),
        "paired_steps": len(pairs),
        "tower_seconds_per_step": tower,
        "cached_seconds_per_step": cached,
        "cached_step_speedup": tower / cached if pairs else None,
        # the same in CPU seconds of the training process: what other work on a shared
        # machine changes least
        "cached_step_speedup_cpu": tower_cpu / cached_cpu if pairs and cached_cpu else None,
    }


def step_costs(runs: dict[str, Any]) -> dict[str, Any] | None:
    """Where a step's time goes, fitted over the cached steps of every size (no vision
    tower): CPU seconds = a + b x (emotion samples in the step); a is a step of text
    samples only, b what each emotion sample adds (its prefix runs once per emotion).
    The vision tower's CPU seconds per image come from the cold runs."""
    import numpy as np

    steps = [s for r in runs.values() for s in r["warm"]["per_step"][1:]]
    emotion = np.array([s["emotion"] for s in steps], dtype=float)
    if len(set(emotion.tolist())) < 2:
        return None
    b, a = np.polyfit(emotion, np.array([s["cpu_seconds"] for s in steps]), 1)
    cold = [s for r in runs.values() for s in r["cold"]["per_step"][1:]]
    images = sum(s["encoded"] for s in cold)
    tower = sum(s["encode_cpu_seconds"] for s in cold) / images if images else None
    return {
        "fitted_steps": len(steps),
        "text_only_step_cpu_seconds": float(a),
        "per_emotion_sample_cpu_seconds": float(b),
        "vision_tower_cpu_seconds_per_image": tower,
    }


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "load_average": os.getloadavg(),  # other work on the machine (it may be shared)
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), Path(argv[2]))
        return {}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=["tiny", *SHAPES], default="smolvlm-256m")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per run")
    ap.add_argument("--sizes", default="200,2000", help="curated images, comma-separated")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--encoder", choices=["onnx", "torch"], default="onnx")
    ap.add_argument("--encoder-precision", choices=["auto", "full", "int8"], default="auto")
    ap.add_argument("--loader-workers", type=int, help="[train] loader_workers (default 1)")
    ap.add_argument(
        "--longest-edge",
        type=int,
        default=512,
        help="the SmolVLM processor's longest_edge, which every image is resized to before "
        "it is cut into 512 px tiles: 512 gives one tile, the checkpoint's own 2048 13-17 "
        "(0: the shape's own)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each size's cold and warm runs this many times; a step counts with its "
        "fastest repeat (for a machine shared with other work)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes: whole numbers separated by commas, not {args.sizes!r}")
    if not sizes or sizes[0] < 1 or args.steps < 2 or args.batch_size < 1 or args.repeat < 1:
        ap.error("--sizes, --batch-size and --repeat must be at least 1, --steps at least 2")

    from artnote.config import Settings
    from artnote.model.load import resolve_device

    device = resolve_device(args.device)
    if args.shape == "llava-1.5-7b" and device != "cuda":
        raise SystemExit("llava-1.5-7b needs a CUDA GPU (7B random weights are built on the GPU)")
    workers = args.loader_workers
    workers = Settings().train.loader_workers if workers is None else workers
    with tempfile.TemporaryDirectory(prefix="artnote-train-bench-") as tmp:
        work = Path(tmp)
        cache = work / "cache"  # the runs' own: the ONNX export and the feature cache
        _say(f"building the {args.shape} model and {sizes[-1]} curated images")
        folder = build_model(args.shape, device, work / "model", args.longest_edge)
        curated = make_curated(work / "art", sizes[-1])
        base = {
            "model": str(folder),
            "device": device,
            "encoder": args.encoder,
            "encoder_precision": args.encoder_precision,
            "batch_size": args.batch_size,
            "loader_workers": workers,
            "cache_dir": str(cache),
            "steps": args.steps,
        }
        _say("exporting the vision encoder (once, outside the timings)")
        prepared = run_child({**base, "prepare": True}, work, "prepare")
        runs: dict[str, Any] = {}
        for n in sizes:
            data = work / f"curated-{n}.json"
            data.write_text(json.dumps(curated[:n]))
            per: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
            for i in range(args.repeat):
                shutil.rmtree(cache / "features", ignore_errors=True)  # cold: nothing cached
                for phase in ("cold", "warm"):
                    name = f"{n}-{phase}-{i}"
                    _say(f"{n} images, {phase} feature cache, {args.steps} steps ({i + 1})")
                    spec = {**base, "curated": str(data), "out_dir": str(work / f"out-{name}")}
                    per[phase].append(run_child(spec, work, name))
            runs[str(n)] = size_figures(n, summarise(per["cold"]), summarise(per["warm"]))
    small, large = runs[str(sizes[0])], runs[str(sizes[-1])]
    speedups = [r["cached_step_speedup"] for r in runs.values() if r["cached_step_speedup"]]
    rss_ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    result: dict[str, Any] = {
        "shape": args.shape,
        "device": device,
        "steps_per_run": args.steps,
        "repeats": args.repeat,
        "batch_size": args.batch_size,
        "samples_per_image": SAMPLES_PER_IMAGE,
        "image_longest_edge": MAX_EDGE,
        "processor_longest_edge": processor_edge(args.shape, args.longest_edge),
        "encoder": prepared["encoder"],
        "encoder_export_seconds": prepared["setup_seconds"],
        "loader_workers": workers,
        "sizes": runs,
        "peak_rss_ratio": rss_ratio,
        "cached_step_speedup": min(speedups) if speedups else None,
        "step_costs": step_costs(runs),
        "goals": {
            "peak_rss_ratio_at_most": GOAL_RSS_RATIO,
            "peak_rss_ratio_met": rss_ratio <= GOAL_RSS_RATIO,
            "cached_step_speedup_at_least": GOAL_SPEEDUP,
            "cached_step_speedup_met": bool(speedups) and min(speedups) >= GOAL_SPEEDUP,
        },
        "machine": machine(),
    }
    print_report(result, sizes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _say(text: str) -> None:
    print(f"train_bench: {text}...", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
