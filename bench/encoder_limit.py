"""How close artnote's CPU vision encoder runs to this CPU's GEMM limit.

    python bench/encoder_limit.py [--shape smolvlm-256m|tiny] [--tiles 8] [--repeats 3]
                                  [--precisions int8 full] [--max-image-side 2048 1536 1024]
                                  [--images 8] [--scan-tokens T] [--json FILE]

1. GEMM rate: the encoder's linear shapes per tile (tokens x hidden @ hidden x hidden, MLP
   up and down) as one-MatMul ONNX graphs in ONNX Runtime, float32 and the int8 copy artnote
   makes of them (artnote.model.int8.ensure_int8: 7-bit weights on CPUs without VNNI), plus
   torch's float32 matmul as a cross-check. The rate is FLOP-weighted over the shapes.
2. FLOPs per tile of the vision tower, from its config (patch embedding, QKV and output
   projections, attention scores and values, MLP).
3. artnote's real OnnxEncoder (make_encoder) on the RANDOM-weight model of --shape, built
   as bench/scan_bench.py builds it: seconds per tile, --tiles tiles per call, best of
   --repeats, per precision.
4. Fraction of the limit: the limit's seconds per tile (linear FLOPs at the precision's
   GEMM rate, attention and patch embedding at the float32 rate: the int8 copy quantizes
   weight MatMuls only) over the measured seconds.

--max-image-side (SmolVLM only) also runs the paintings (../shared/art or
$ARTNOTE_ART_DIR) through the processor and encoder at each `[model] max_image_side`:
tiles per image, encoder images/s, and how far each image's mean embedding moves from
the first value's (random weights: a measure of how much the input changes, not of
caption quality). The ONNX export is cached in $ARTNOTE_CACHE_DIR (else a temp folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


# ---- FLOPs --------------------------------------------------------------------


def tile_flops(vision: Any) -> dict[str, float]:
    """FLOPs of one tile (image) through a ViT tower of config `vision` (multiply-add = 2)."""
    size, patch = vision.image_size, vision.patch_size
    size = size if isinstance(size, int) else size[0]
    patches = (size // patch) ** 2
    tokens = patches + (1 if vision.model_type == "clip_vision_model" else 0)  # CLS
    d, m, layers = vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers
    return {
        "tokens": tokens,
        "patch_embed": 2.0 * patches * 3 * patch * patch * d,
        "qkv_out": layers * 2.0 * tokens * 4 * d * d,
        "mlp": layers * 2.0 * tokens * 2 * d * m,
        "attention": layers * 4.0 * tokens * tokens * d,  # Q K^T and weights x V
    }


def gemm_shapes(vision: Any, tokens: int) -> list[tuple[int, int, int, int]]:
    """(M, K, N, how many per layer) of the tower's weight MatMuls."""
    d, m = vision.hidden_size, vision.intermediate_size
    return [(tokens, d, d, 4), (tokens, d, m, 1), (tokens, m, d, 1)]


# ---- timing -------------------------------------------------------------------


def timed(fn: Any, calls: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds per call; CPU time sums every thread of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def rounds(jobs: dict[str, tuple[Any, int, int]], repeats: int) -> dict[str, dict]:
    """Each job (fn, calls, units per call) once per round, interleaved, after a warm-up
    call: CPU time lent to others (a shared machine) hits every job alike. Seconds per
    unit, {'wall': [...], 'cpu': [...]} per job."""
    for fn, _, _ in jobs.values():
        fn()
    out: dict[str, dict] = {name: {"wall": [], "cpu": []} for name in jobs}
    for _ in range(repeats):
        for name, (fn, calls, units) in jobs.items():
            wall, cpu = timed(fn, calls)
            out[name]["wall"].append(wall / units)
            out[name]["cpu"].append(cpu / units)
    return out


def _matmul_model(path: Path, m: int, k: int, n: int) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32) / k**0.5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", m, n])],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _gemm_session(path: Path) -> Any:
    """The CPU provider with a thread per core, fully optimized; threads do not spin, so
    CPU time is work (the same for every config artnote's sessions may try)."""
    import onnxruntime as ort

    from artnote.model.encoder import _cores

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = _cores()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


ENGINES = ("torch_float32", "ort_float32", "ort_int8")


def gemm_jobs(shapes: list[tuple[int, int, int, int]], work: Path) -> dict[str, tuple]:
    """One job per engine and shape: torch float32 matmul (a cross-check), ORT float32
    MatMul and the int8 copy artnote makes of it (artnote.model.int8.ensure_int8)."""
    import numpy as np
    import torch

    from artnote.model.int8 import ensure_int8

    jobs: dict[str, tuple] = {}
    for m, k, n, _ in shapes:
        path = work / f"gemm-{m}x{k}x{n}" / "encoder.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        _matmul_model(path, m, k, n)
        x = np.random.default_rng(1).standard_normal((1, m, k), dtype=np.float32)
        a, b = torch.from_numpy(x[0]), torch.randn(k, n)
        jobs[f"torch_float32 {m}x{k}x{n}"] = (lambda a=a, b=b: torch.matmul(a, b), 3, 1)
        for name, file in (("ort_float32", path), ("ort_int8", ensure_int8(path))):
            session = _gemm_session(file)
            jobs[f"{name} {m}x{k}x{n}"] = (lambda s=session, x=x: s.run(None, {"x": x}), 3, 1)
    return jobs


def gemm_rates(shapes: list[tuple[int, int, int, int]], timings: dict[str, dict]) -> dict:
    """FLOP per second (wall) and per CPU-second of each engine, FLOP-weighted over the
    tower's shapes (best round of each), and per shape."""
    total = sum(2.0 * m * k * n * count for m, k, n, count in shapes)
    rates: dict[str, float] = {}
    cpu_rates: dict[str, float] = {}
    per_shape = []
    for engine in ENGINES:
        wall = sum(
            count * min(timings[f"{engine} {m}x{k}x{n}"]["wall"]) for m, k, n, count in shapes
        )
        cpu = sum(count * min(timings[f"{engine} {m}x{k}x{n}"]["cpu"]) for m, k, n, count in shapes)
        rates[engine], cpu_rates[engine] = total / wall, total / cpu
    for m, k, n, _ in shapes:
        row: dict[str, Any] = {"shape": f"({m}x{k})@({k}x{n})"}
        for engine in ENGINES:
            row[engine] = 2.0 * m * k * n / min(timings[f"{engine} {m}x{k}x{n}"]["wall"])
        per_shape.append(row)
    return {"rates": rates, "cpu_rates": cpu_rates, "shapes": per_shape}


# ---- the encoder ----------------------------------------------------------------


def _tiles_input(loaded: Any, count: int) -> dict[str, Any]:
    import torch

    size = loaded.model.config.vision_config.image_size
    gen = torch.Generator().manual_seed(2)
    tiles = torch.rand((count, 3, size, size), generator=gen) * 2 - 1
    if not loaded.family.tiled:
        return {"pixel_values": tiles}
    mask = torch.ones((1, count, size, size), dtype=torch.long)
    return {"pixel_values": tiles[None], "pixel_attention_mask": mask}


def encoder_job(loaded: Any, precision: str, tiles: int) -> tuple[str, tuple]:
    """artnote's OnnxEncoder (make_encoder) in `precision` on `tiles` random tiles per call:
    (its name, job)."""
    from artnote.model.encoder import make_encoder

    encoder = make_encoder(loaded, "onnx", precision)
    pixels = _tiles_input(loaded, tiles)
    return encoder.name, (lambda: encoder.encode_frozen(pixels), 1, tiles)


def limit_seconds(flops: dict[str, float], rates: dict[str, float], int8: bool) -> float:
    """Seconds per tile at the GEMM rates: weight MatMuls at the precision's rate, the rest
    (attention, the patch-embedding convolution) at the float32 rate."""
    linear = flops["qkv_out"] + flops["mlp"]
    other = flops["attention"] + flops["patch_embed"]
    fp32 = rates["ort_float32"]
    return linear / (rates["ort_int8"] if int8 else fp32) + other / fp32


# ---- max_image_side -------------------------------------------------------------


def image_sides(
    loaded: Any, sides: list[int], count: int, repeats: int, scan_tokens: int, work: Path
) -> list[dict]:
    """Per `[model] max_image_side`: tiles per painting, encoder images/s (processor and
    int8 encoder, one image at a time), each image's mean embedding against the first
    side's (cosine similarity, relative L2 change), and with `scan_tokens` the images/s of
    a real scan (scan_bench.run_artnote, that many tokens per field)."""
    import copy
    import dataclasses

    import torch
    from PIL import Image

    from artnote.model import inputs
    from artnote.model.encoder import make_encoder
    from artnote.model.load import apply_max_image_side

    art = Path(os.environ.get("ARTNOTE_ART_DIR", ROOT.parent / "shared" / "art"))
    images = [Image.open(p).convert("RGB") for p in sorted(art.glob("*.jpg"))[:count]]
    if not images:
        raise SystemExit(f"no paintings in {art} (set ARTNOTE_ART_DIR)")
    encoder = make_encoder(loaded, "onnx", "auto")
    base_processor = loaded.processor
    with torch.inference_mode():  # the session's first call, outside the timings
        encoder.encode_frozen(_tiles_input(loaded, 1))
    rows, reference = [], None
    for side in sides:
        processor = copy.deepcopy(base_processor)
        apply_max_image_side(processor, side, loaded.family)
        fmt = inputs.prompt_format(loaded.model, processor, loaded.family)
        prefix = fmt.parts("alt_text").prefix

        def run(fmt=fmt, prefix=prefix) -> list[Any]:
            out = []
            for image in images:
                pixels = fmt.encode_prefix(prefix, [image]).pixels
                with torch.inference_mode():
                    out.append(encoder.encode(pixels)[0].float())
            return out

        times, embeddings = [], []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            embeddings = run()
            times.append(time.perf_counter() - start)
        tiles = [
            int(fmt.encode_prefix(prefix, [im]).pixels["pixel_values"].shape[1]) for im in images
        ]
        means = torch.stack([e.mean(dim=0) for e in embeddings])
        row: dict[str, Any] = {
            "max_image_side": side,
            "tiles_per_image": statistics.mean(tiles),
            "tiles": tiles,
            "images_per_s": [len(images) / t for t in times],
        }
        if reference is None:
            reference = means
        cos = torch.nn.functional.cosine_similarity(means, reference, dim=1)
        rel = (means - reference).norm(dim=1) / reference.norm(dim=1)
        row["cosine_vs_first"] = [round(float(c), 4) for c in cos]
        row["relative_change_vs_first"] = [round(float(r), 4) for r in rel]
        if scan_tokens:
            from scan_bench import make_collection, run_artnote

            folder = work / f"scan-{side}"
            make_collection(folder / "collection", count)
            summary, _ = run_artnote(
                dataclasses.replace(loaded, processor=processor),
                folder / "collection", scan_tokens, 8, folder, "auto",
            )  # fmt: skip
            row["scan_images_per_s"] = summary.images_per_s
            row["scan_stages"] = {k: round(v, 3) for k, v in sorted(summary.stages.items())}
        rows.append(row)
    return rows


# ---- main -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="smolvlm-256m", help="a scan_bench shape, or tiny")
    ap.add_argument("--tiles", type=int, default=8, help="tiles per encoder call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", nargs="*", choices=["int8", "full"], default=["int8", "full"])
    ap.add_argument("--max-image-side", type=int, nargs="*", default=[])
    ap.add_argument("--images", type=int, default=8, help="paintings for --max-image-side")
    ap.add_argument(
        "--scan-tokens",
        type=int,
        default=0,
        help="with --max-image-side: also time a real scan of the paintings, T tokens per field",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    import torch
    from scan_bench import build

    from artnote.model.encoder import _cores
    from artnote.model.int8 import int8_file, reduce_range

    torch.set_num_threads(_cores())
    with tempfile.TemporaryDirectory(prefix="artnote-limit-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ARTNOTE_CACHE_DIR", str(work / "cache"))
        loaded = build(args.shape, "cpu", work)
        vision = loaded.model.config.vision_config
        flops = tile_flops(vision)
        shapes = gemm_shapes(vision, flops["tokens"])
        jobs = gemm_jobs(shapes, work)
        names = {}
        for precision in args.precisions:
            names[precision], jobs[f"encoder {precision}"] = encoder_job(
                loaded, precision, args.tiles
            )
        timings = rounds(jobs, args.repeats)
        gemm = gemm_rates(shapes, timings)
        total = sum(v for k, v in flops.items() if k != "tokens")
        result: dict[str, Any] = {
            "shape": args.shape,
            "cores": _cores(),
            "int8_file": int8_file(reduce_range()),
            "gemm": gemm,
            "gflop_per_tile": total / 1e9,
            "flops": flops,
            "encoder": {},
        }
        for precision in args.precisions:
            t = timings[f"encoder {precision}"]
            int8 = names[precision] == "onnx-int8"
            limit = limit_seconds(flops, gemm["rates"], int8)
            limit_cpu = limit_seconds(flops, gemm["cpu_rates"], int8)
            result["encoder"][precision] = {
                "encoder": names[precision],
                "seconds_per_tile": t["wall"],
                "cpu_seconds_per_tile": t["cpu"],
                "gflop_per_s": total / min(t["wall"]) / 1e9,
                "limit_seconds_per_tile": limit,
                "fraction_of_limit": limit / min(t["wall"]),
                "cpu_fraction_of_limit": limit_cpu / min(t["cpu"]),
            }
        if args.max_image_side:
            result["max_image_side"] = image_sides(
                loaded, args.max_image_side, args.images, args.repeats, args.scan_tokens, work
            )
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def _span(values: list[float], scale: float = 1.0, fmt: str = ".3f") -> str:
    best, worst = min(values) * scale, max(values) * scale
    return f"{best:{fmt}}" if len(values) == 1 else f"{best:{fmt}} ({best:{fmt}}-{worst:{fmt}})"


def _print(r: dict[str, Any]) -> None:
    g = r["gemm"]
    print(f"shape {r['shape']}, {r['cores']} cores, int8 copy {r['int8_file']}")
    for row in g["shapes"]:
        rates = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in row.items() if k != "shape")
        print(f"GEMM {row['shape']}: {rates} GFLOP/s")
    print(
        "GEMM rate over the tower's shapes: "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in g["rates"].items())
        + " (per CPU-second: "
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in g["cpu_rates"].items() if "ort" in k)
        + ")"
    )
    f = r["flops"]
    parts = ", ".join(f"{k} {f[k] / 1e9:.2f}" for k in ("qkv_out", "mlp", "attention"))
    print(f"FLOPs per tile: {r['gflop_per_tile']:.1f} GFLOP ({f['tokens']} tokens; {parts})")
    for precision, e in r["encoder"].items():
        print(
            f"encoder {precision} ({e['encoder']}): {_span(e['seconds_per_tile'])} s per tile "
            f"(best, range), {e['gflop_per_s']:.1f} GFLOP/s; limit "
            f"{e['limit_seconds_per_tile']:.3f} s per tile: {100 * e['fraction_of_limit']:.0f}% "
            f"of the limit (in CPU time: {_span(e['cpu_seconds_per_tile'])} s per tile, "
            f"{100 * e['cpu_fraction_of_limit']:.0f}%)"
        )
    for s in r.get("max_image_side", []):
        print(
            f"max_image_side {s['max_image_side']}: {s['tiles_per_image']:.1f} tiles per image, "
            f"encoder {_span(s['images_per_s'], fmt='.3f')} images/s; mean embedding vs the "
            f"first: cosine min {min(s['cosine_vs_first']):.3f}, relative change max "
            f"{max(s['relative_change_vs_first']):.3f}"
            + (f"; scan {s['scan_images_per_s']:.3f} images/s" if "scan_images_per_s" in s else "")
        )


if __name__ == "__main__":
    main()
