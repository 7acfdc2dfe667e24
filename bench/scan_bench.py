"""Benchmark: artnote's scan pipeline against the naive one-image-at-a-time way.

    python bench/scan_bench.py [--images N] [--shape tiny|smolvlm-256m|llava-1.5-7b]
                               [--tokens T] [--batch-size B] [--json FILE]

Both run in this process, on the same images (copies of ../shared/art, each made
unique so that artnote's de-duplication cannot skip work), with the same
RANDOM-weight model of the named architecture and T generated tokens per field
(min = max new tokens, so random weights cannot stop early).

- naive: what model cards and one-image tools do: per image and per field (alt
  text, description, explanation, emotion question), the processor and
  `model.generate(pixel_values=...)`, batch 1, the torch vision encoder.
- artnote: the real `artnote scan` pipeline into a temporary catalog.

Model construction and artnote's one-time ONNX export are outside both timings.
On CUDA it also computes a roofline bound for artnote's work and reports
artnote's images/s as a fraction of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Published dense bf16 peak FLOP/s and memory bandwidth (bytes/s) of GPUs we may be lent.
GPU_PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}

SHAPES: dict[str, dict[str, Any]] = {
    # HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP-B/16 at 512 px, pixel-shuffle x4 connector,
    # a 30-layer 576-wide Llama (SmolLM2-135M), images split into 512 px tiles up to 2048 px.
    "smolvlm-256m": {
        "family": "smolvlm",
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 512,
            "patch_size": 16,
        },
        "text": {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49280,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "tie_word_embeddings": True,
        },
        "scale_factor": 4,
        "image_seq_len": 64,
        "longest_edge": 2048,
        "tile": 512,
    },
    # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px, 2-layer MLP projector, Vicuna-7B.
    "llava-1.5-7b": {
        "family": "llava",
        "vision": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
        },
        "text": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
        },
    },
}


def build(shape: str, device: str, work: Path):
    """A LoadedModel of RANDOM weights with the exact architecture of `shape`."""
    import torch

    from artnote.config import ModelSettings
    from artnote.model.families import family_for
    from artnote.model.load import (
        LoadedModel,
        load_model,
        native_gqa,
        quiet_transformers,
        resolve_dtype,
    )

    quiet_transformers()
    native_gqa(device)  # as load_model does; the naive run shares it
    if shape == "tiny":
        from artnote.model.tiny import build_tiny_model

        folder = build_tiny_model(work / "tiny", "smolvlm")
        return load_model(ModelSettings(name=str(folder), device=device))
    spec = SHAPES[shape]
    dtype = resolve_dtype("auto", device)
    if shape == "llava-1.5-7b" and device != "cuda":
        raise SystemExit("llava-1.5-7b needs a CUDA GPU (7B random weights are built on the GPU)")
    from artnote.model import tiny

    tokenizer = tiny.family_tokenizer(spec["family"])
    config, processor = tiny.config_and_processor(spec["family"], tokenizer, spec)
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.eval()
    return LoadedModel(
        model=model,
        processor=processor,
        family=family_for(config.model_type),
        name=f"random:{shape}",
        revision=None,
        device=torch.device(device),
        dtype=dtype,
    )


def make_collection(folder: Path, count: int) -> list[Path]:
    """`count` distinct files cycling through the paintings (a suffix after the image data
    changes the bytes, not the pixels)."""
    art = Path(os.environ.get("ARTNOTE_ART_DIR", ROOT.parent / "shared" / "art"))
    sources = sorted(art.glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no paintings in {art} (set ARTNOTE_ART_DIR)")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        dst = folder / f"{i:05d}_{src.name}"
        shutil.copyfile(src, dst)
        with open(dst, "ab") as f:
            f.write(b"\0artnote-bench-%d" % i)
        out.append(dst)
    return out


def run_naive(loaded, paths: list[Path], tokens: int) -> float:
    """Per image and per field: processor + generate(pixel_values), batch 1, torch encoder."""
    import torch
    from PIL import Image

    from artnote.model import inputs

    proc, model = loaded.processor, loaded.model
    nested = loaded.family.name == "idefics3"
    fields = [
        ("alt_text", None),
        ("description", None),
        ("emotion", None),
        ("explanation", "something else"),
    ]

    def generate(image, name, emotion, tokens):
        parts = inputs.field_parts(proc, name, emotion)
        enc = proc(
            text=[parts.prefix + parts.suffix],
            images=[[image]] if nested else [image],
            return_tensors="pt",
        ).to(loaded.device)
        enc["pixel_values"] = enc["pixel_values"].to(loaded.dtype)
        with torch.inference_mode():
            model.generate(
                **enc,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=proc.tokenizer.pad_token_id,
            )

    if loaded.device.type == "cuda":  # CUDA's and cuBLAS's first-call costs, outside the timing
        generate(Image.open(paths[0]).convert("RGB"), "alt_text", None, 2)
        _sync(loaded)
    start = time.perf_counter()
    for i, path in enumerate(paths, 1):
        image = Image.open(path).convert("RGB")
        for name, emotion in fields:
            generate(image, name, emotion, tokens)
        if i % 8 == 0 or i == len(paths):  # a long run shows it is moving
            print(
                f"naive: {i}/{len(paths)} images, {time.perf_counter() - start:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    _sync(loaded)
    return time.perf_counter() - start


def run_artnote(
    loaded,
    folder: Path,
    tokens: int,
    batch_size: int,
    work: Path,
    precision: str,
    annotator=None,
    decode_loop: str = "auto",
):
    from artnote.catalog import open_catalog
    from artnote.config import Settings
    from artnote.model.annotate import Annotator
    from artnote.pipeline import AnnotatorFactory, scan

    settings = Settings()
    g = settings.generation
    g.alt_text_tokens = g.description_tokens = g.explanation_tokens = g.min_new_tokens = tokens
    settings.scan.batch_size = batch_size
    settings.scan.decode_workers = max(2, min(8, os.cpu_count() or 2))
    settings.model.encoder_precision = precision
    g.decode_loop = decode_loop
    # The one-time export (and int8 copy) happen here, outside the timing.
    if annotator is None:
        annotator = Annotator(loaded, g, encoder="onnx", encoder_precision=precision)
    else:
        annotator.gen = g
    catalog = open_catalog(work / f"bench-{decode_loop}.db")  # each loop scans afresh
    summary = scan(
        folder, settings, catalog, AnnotatorFactory(lambda: annotator), model_name=loaded.name
    )
    _sync(loaded)
    return summary, annotator


def roofline_seconds(
    *,
    lm_params: int,
    vision_params: int,
    vision_tokens: float,
    prefill_tokens: float,
    gen_tokens: int,
    branches: int,
    batch: int,
    weight_bytes: float,
    kv_bytes_per_token: float,
    flops_per_s: float,
    bytes_per_s: float,
) -> float:
    """Lower bound on the seconds per image of artnote's work on a GPU.

    Compute-bound phases at peak FLOP/s: the vision tower (2 x params x patches) and
    the prefill (2 x params x tokens). Decoding at memory bandwidth: each of the
    gen_tokens steps reads the weights once for the whole batch and each image's
    one KV cache: the prefix plus its `branches` fields' tokens (on average
    prefill + branches x gen/2 tokens), as artnote packs the fields in one row.
    """
    compute = 2 * vision_params * vision_tokens + 2 * lm_params * prefill_tokens
    cached = prefill_tokens + branches * gen_tokens / 2
    step_bytes = weight_bytes + batch * kv_bytes_per_token * cached
    return compute / flops_per_s + gen_tokens * step_bytes / bytes_per_s / batch


def roofline(loaded, annotator, summary, tokens: int, batch_size: int) -> dict[str, Any] | None:
    """artnote's measured images/s as a fraction of the roofline bound (CUDA only)."""
    import torch

    from artnote.model.families import language_model, vision_tower

    if loaded.device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in GPU_PEAKS.items() if k in name), None)
    if peak is None:
        return {"gpu": name, "note": "no published peak for this GPU"}
    text = language_model(loaded.model)
    cfg = text.config
    lm_params = sum(p.numel() for p in text.parameters()) + loaded.model.lm_head.weight.numel()
    n = summary.annotated or 1
    # Each LM image token stands for scale_factor^2 vision patches (Idefics3's pixel shuffle).
    shuffle = getattr(loaded.model.config, "scale_factor", 1) ** 2
    suffixes = sum(len(annotator.suffixes[f]) for f in ("alt_text", "description", "emotion"))
    width = loaded.dtype.itemsize
    seconds = roofline_seconds(
        lm_params=lm_params,
        vision_params=sum(
            p.numel() for p in vision_tower(loaded.model, loaded.family).parameters()
        ),
        vision_tokens=annotator.counts["image_tokens"] * shuffle / n,
        prefill_tokens=annotator.counts["prefix_tokens"] / n + suffixes,
        gen_tokens=tokens,
        branches=3,
        batch=min(batch_size, n),
        weight_bytes=lm_params * width,
        kv_bytes_per_token=2
        * cfg.num_hidden_layers
        * cfg.num_key_value_heads
        * (cfg.hidden_size // cfg.num_attention_heads)
        * width,
        flops_per_s=peak[0],
        bytes_per_s=peak[1],
    )
    return {
        "gpu": name,
        "bound_images_per_s": 1 / seconds,
        "fraction_of_roofline": summary.images_per_s * seconds,
    }


def _sync(loaded) -> None:
    import torch

    if loaded.device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--shape", choices=["tiny", *SHAPES], default="smolvlm-256m")
    ap.add_argument("--tokens", type=int, default=16, help="generated tokens per field")
    ap.add_argument("--batch-size", type=int, default=0, help="artnote batch (0: 8 CPU, 32 CUDA)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument(
        "--encoder-precision",
        choices=["auto", "full", "int8"],
        default="auto",
        help="artnote's [model] encoder_precision (default: artnote's default, auto)",
    )
    ap.add_argument(
        "--naive-sample",
        type=int,
        default=0,
        help="time the naive loop on only this many of the images (0: all); its rate is "
        "per image, so the ratio stands (the full naive loop over 256 images on a GPU "
        "takes over 30 minutes)",
    )
    ap.add_argument(
        "--decode-loop",
        nargs="+",
        default=["auto"],
        choices=["auto", "growing", "static", "cuda-graphs"],
        help="artnote's [generation] decode_loop; several: artnote runs once with each, "
        "side by side (the first gives the headline figures)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--memory",
        action="store_true",
        help="only artnote, with its peak RSS explained stage by stage (no naive run)",
    )
    args = ap.parse_args(argv)
    if args.memory:
        return memory_main(args)

    from artnote.model.load import resolve_device

    device = resolve_device(args.device)
    batch = args.batch_size or (32 if device == "cuda" else 8)
    with tempfile.TemporaryDirectory(prefix="artnote-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ARTNOTE_CACHE_DIR", str(work / "cache"))
        paths = make_collection(work / "collection", args.images)
        loaded = build(args.shape, device, work)
        sample = paths[: args.naive_sample] if args.naive_sample > 0 else paths
        naive_s = run_naive(loaded, sample, args.tokens)
        runs = {}
        for loop in dict.fromkeys(args.decode_loop):
            runs[loop] = run_artnote(
                loaded,
                work / "collection",
                args.tokens,
                batch,
                work,
                args.encoder_precision,
                decode_loop=loop,
            )
            if runs[loop][0].annotated != args.images:
                raise SystemExit(
                    f"artnote ({loop}) annotated {runs[loop][0].annotated} of {args.images} images"
                )
        summary, annotator = next(iter(runs.values()))
    result: dict[str, Any] = {
        "shape": args.shape,
        "images": args.images,
        "tokens_per_field": args.tokens,
        "batch_size": batch,
        "device": device if device == "cpu" else f"cuda ({_gpu_name()})",
        "naive_images": len(sample),
        "naive_seconds": round(naive_s, 3),
        "artnote_seconds": round(summary.seconds, 3),
        "naive_images_per_s": len(sample) / naive_s,
        "artnote_images_per_s": summary.images_per_s,
        "ratio": summary.images_per_s / (len(sample) / naive_s),
        "stages": {k: round(v, 3) for k, v in sorted(summary.stages.items())},
        "encoder": annotator.encoder.name,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    bound = roofline(loaded, annotator, summary, args.tokens, batch)
    if bound is not None:
        result["roofline"] = bound
    result["decode_loops"] = {}
    for loop, (run, run_annotator) in runs.items():
        entry = {
            "resolved": run_annotator.decode_loop(),
            "images_per_s": run.images_per_s,
            "ratio": run.images_per_s / (len(sample) / naive_s),
            "generate_seconds": round(run.stages.get("model.generate", 0.0), 3),
        }
        loop_bound = roofline(loaded, run_annotator, run, args.tokens, batch)
        if loop_bound and "fraction_of_roofline" in loop_bound:
            entry["fraction_of_roofline"] = loop_bound["fraction_of_roofline"]
        result["decode_loops"][loop] = entry
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def memory_main(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of a scan, stage by stage: the runtime, the weights, the encoder's session,
    what is resident when the scan starts, and the scan's peak with the annotator stage it
    was reached in; against the weights plus one batch's tensors (pixels, image features,
    the prefix's KV cache), measured on the first batch."""
    import torch

    from artnote.model.annotate import Annotator
    from artnote.model.load import resolve_device

    device = resolve_device(args.device)
    batch = args.batch_size or (32 if device == "cuda" else 8)
    result: dict[str, Any] = {"shape": args.shape, "images": args.images, "batch_size": batch}
    with tempfile.TemporaryDirectory(prefix="artnote-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ARTNOTE_CACHE_DIR", str(work / "cache"))
        paths = make_collection(work / "collection", args.images)
        result["start_rss_mb"] = _rss_mb()
        loaded = build(args.shape, device, work)
        model = loaded.model
        weights = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
        result["weights_mb"] = weights / 2**20
        result["after_weights_rss_mb"] = _rss_mb()
        # The encoder's session (after the one-time export and int8 copy, when the cache
        # is cold); the scan below uses this very annotator.
        annotator = Annotator(loaded, encoder="onnx", encoder_precision=args.encoder_precision)
        result["encoder"] = annotator.encoder.name
        result["after_encoder_rss_mb"] = _rss_mb()
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in paths[:batch]]
        with torch.inference_mode():
            enc = annotator.format.encode_prefix(annotator.prefix, images)
            features = annotator.encoder.encode(enc.pixels)
            kv, _ = annotator._prefill(images)
        parts = {
            "pixels": sum(t.nbytes for t in enc.pixels.values() if isinstance(t, torch.Tensor)),
            "features": sum(f.nbytes for f in features),
            "kv_cache": sum(k.nbytes + v.nbytes for k, v in kv),
        }
        result["batch_tensors_mb"] = sum(parts.values()) / 2**20
        result["batch_parts_mb"] = {k: v / 2**20 for k, v in parts.items()}
        del enc, features, kv, images
        result["before_scan_rss_mb"] = _rss_mb()
        sampler = _StageRss(annotator)
        _reset_peak()
        try:
            summary, annotator = run_artnote(
                loaded,
                work / "collection",
                args.tokens,
                batch,
                work,
                args.encoder_precision,
                annotator,
            )
        finally:
            sampler.close()
        result["scan_peak_rss_mb"] = _peak_mb()
        result["stage_peak_rss_mb"] = sampler.peaks
        result["peak_stage"] = max(sampler.peaks, key=sampler.peaks.get, default="")
        result["images_per_s"] = summary.images_per_s
    result["ratio"] = result["scan_peak_rss_mb"] / (
        result["weights_mb"] + result["batch_tensors_mb"]
    )
    result["target"] = 2.0
    _print_memory(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


class _StageRss:
    """VmRSS sampled every 10 ms in a thread during the scan, each sample under the
    annotator's stage (those of Annotator.stats; `pipeline` outside them: decoding ahead,
    the catalog). Sampling can miss a peak of a few ms: VmHWM is the scan's true peak."""

    STAGES = (  # (object, method, stage); preprocess and encode run inside prefill
        ("format", "encode_prefix", "preprocess"),
        ("encoder", "encode", "encode"),
        (None, "_prefill", "prefill"),
        (None, "_score_emotions", "scoring"),
        (None, "_generate", "generate"),
    )

    def __init__(self, annotator: Any) -> None:
        import threading

        self.stack = ["pipeline"]
        self.peaks: dict[str, float] = {}
        self.wrapped: list[tuple[Any, str]] = []
        for owner, method, stage in self.STAGES:
            obj = annotator if owner is None else getattr(annotator, owner)
            fn = getattr(obj, method, None)
            if fn is not None and method not in vars(obj):  # a method: restored by delattr
                setattr(obj, method, self._staged(stage, fn))
                self.wrapped.append((obj, method))
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _staged(self, stage: str, fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            self.stack.append(stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()

        return run

    def _sample(self) -> None:
        while not self.done.wait(0.01):
            stage, rss = self.stack[-1], _rss_mb()
            self.peaks[stage] = max(self.peaks.get(stage, 0.0), rss)

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        for obj, method in self.wrapped:
            delattr(obj, method)


def _print_memory(r: dict[str, Any]) -> None:
    gb = 1024
    parts = ", ".join(f"{k} {v / gb:.2f}" for k, v in r["batch_parts_mb"].items())
    stages = ", ".join(f"{k} {v / gb:.2f}" for k, v in r["stage_peak_rss_mb"].items())
    lines = [
        f"shape {r['shape']}, {r['images']} images, batch {r['batch_size']}, "
        f"encoder {r['encoder']}",
        f"runtime (Python, torch, transformers): {r['start_rss_mb'] / gb:.2f} GiB",
        f"weights: {r['weights_mb'] / gb:.2f} GiB of parameters and buffers; RSS "
        f"+{(r['after_weights_rss_mb'] - r['start_rss_mb']) / gb:.2f} GiB",
        "encoder session (with the export and int8 copy on a cold cache): RSS "
        f"+{(r['after_encoder_rss_mb'] - r['after_weights_rss_mb']) / gb:.2f} GiB",
        f"one batch's tensors: {r['batch_tensors_mb'] / gb:.2f} GiB ({parts})",
        f"resident when the scan starts (one batch run before it): "
        f"{r['before_scan_rss_mb'] / gb:.2f} GiB",
        f"scan peak: {r['scan_peak_rss_mb'] / gb:.2f} GiB, in stage {r['peak_stage']} "
        f"(sampled peak per stage, GiB: {stages})",
        f"peak RSS of the scan is {r['ratio']:.2f}x the weights plus one batch's tensors "
        f"(target <= {r['target']:g})",
    ]
    print("\n".join(lines))


def _rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def _peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "none"


def _print(r: dict[str, Any]) -> None:
    print(
        f"shape {r['shape']}, {r['images']} images, {r['tokens_per_field']} tokens per field, "
        f"device {r['device']}, artnote batch {r['batch_size']}, encoder {r['encoder']}"
    )
    print(f"naive:   {r['naive_images_per_s']:.3f} images/s ({r['naive_seconds']:.1f} s)")
    print(f"artnote: {r['artnote_images_per_s']:.3f} images/s ({r['artnote_seconds']:.1f} s)")
    print(f"ratio artnote/naive: {r['ratio']:.2f}x")
    print("artnote stages (s): " + ", ".join(f"{k} {v}" for k, v in r["stages"].items()))
    print(f"peak RSS: {r['peak_rss_mb']:.0f} MB")
    if len(r.get("decode_loops", {})) > 1:
        for loop, e in r["decode_loops"].items():
            share = e.get("fraction_of_roofline")
            print(
                f"decode_loop {loop} ({e['resolved']}): {e['images_per_s']:.3f} images/s, "
                f"{e['ratio']:.2f}x naive, generating {e['generate_seconds']} s"
                + (f", {100 * share:.0f}% of the roofline" if share is not None else "")
            )
    if "roofline" in r and "fraction_of_roofline" in r["roofline"]:
        rf = r["roofline"]
        print(
            f"roofline on {rf['gpu']}: {rf['bound_images_per_s']:.2f} images/s; artnote reaches "
            f"{100 * rf['fraction_of_roofline']:.0f}% of it"
        )


if __name__ == "__main__":
    main()
