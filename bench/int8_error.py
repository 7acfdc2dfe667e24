"""How far the int8 encoder copy is from torch, per quantization variant, on this CPU.

    python bench/int8_error.py [--seeds 10] [--tiles 4] [--families llava smolvlm]
                               [--speed] [--json FILE]

For each family and seed it builds a tiny RANDOM-weight model
(artnote.model.tiny.build_tiny_model(seed=...)), exports its encoder path to float32
ONNX as artnote does, and quantizes it in each variant:

- s8: 8-bit weights (reduce_range=False), the copy made for CPUs with VNNI;
- s7: 7-bit weights (reduce_range=True), the copy made for CPUs without VNNI;
- s8+u8u8: the s8 file with ORT's session.x64quantprecision=1, which runs the slower
  U8U8 kernel on CPUs without VNNI: the exact 8-bit result, as a VNNI CPU computes it.

It then prints the relative Frobenius error |int8 - torch| / |torch| of each variant
(min / median / max over models, and over tiles), on: the self-check tile (the one
OnnxEncoder._self_check holds to INT8_TOLERANCE), --tiles more random tiles, each
tile of the eight sample paintings (../shared/art or $ARTNOTE_ART_DIR, if there), and
all paintings together (the figure tests/test_encoder.py checks). --speed also times
the variants on the random-weight SmolVLM-256M encoder (SigLIP-B/16 at 512 px).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (reduce_range, ORT session config entries)
VARIANTS: dict[str, tuple[bool, dict[str, str]]] = {
    "s8": (False, {}),
    "s7": (True, {}),
    "s8+u8u8": (False, {"session.x64quantprecision": "1"}),
}


def _session(path: Path, config: dict[str, str]) -> Any:
    """A CPU session with the options artnote.model.encoder._session sets, plus `config`."""
    import onnxruntime as ort

    from artnote.model.encoder import _cores

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = _cores()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _run(session: Any, tiles: Any, loaded: Any) -> Any:
    """The session's frozen features, through the live projector (as OnnxEncoder.encode)."""
    import torch

    from artnote.model.encoder_paths import project

    name = session.get_inputs()[0].name
    with torch.inference_mode():
        return project(loaded, torch.from_numpy(session.run(None, {name: tiles.numpy()})[0]))


def _torch(loaded: Any, tiles: Any) -> Any:
    """The reference: the model's own get_image_features, one tile at a time."""
    import torch

    from artnote.model.encoder import TorchEncoder

    encoder, out = TorchEncoder(loaded), []
    for tile in tiles:
        if loaded.family.name == "llava":
            pixels = {"pixel_values": tile[None]}
        else:  # as _self_check: one whole tile, all pixels real
            mask = torch.ones((1, 1, *tile.shape[-2:]), dtype=torch.long)
            pixels = {"pixel_values": tile[None, None], "pixel_attention_mask": mask}
        out.append(encoder.encode(pixels)[0].float())
    return torch.stack(out)


def _error(got: Any, want: Any) -> float:
    return float((got - want).norm() / want.norm().clamp(min=1e-12))


def _tiles(loaded: Any, size: tuple[int, ...], count: int, paintings: list[Any]) -> dict:
    """{'check': (1, 3, H, W), 'random': (count, ...), 'paintings': (n, ...)} float32 tiles."""
    import torch

    from artnote.model import inputs

    # Exactly OnnxEncoder._self_check's tile.
    check = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    gen = torch.Generator().manual_seed(1)
    tiles = {"check": check, "random": torch.rand((count, 3, *size), generator=gen) * 2 - 1}
    if paintings:
        prefix = inputs.field_parts(loaded.processor, "alt_text").prefix
        encoded = inputs.encode_prefix(loaded.processor, prefix, paintings)
        pixels = inputs.pixel_inputs(encoded)["pixel_values"].float()
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        tiles["paintings"] = flat[flat.reshape(flat.shape[0], -1).ne(0).any(dim=1)]  # no padding
    return tiles


def measure_model(family: str, seed: int, work: Path, count: int, paintings: list[Any]) -> dict:
    """{variant: {'check': [e], 'random': [e...], 'paintings': [e...], 'all paintings': [e]}}."""
    import torch

    from artnote.config import ModelSettings
    from artnote.model.encoder import _opset, export_onnx
    from artnote.model.int8 import ensure_int8
    from artnote.model.load import load_model
    from artnote.model.tiny import build_tiny_model

    folder = build_tiny_model(work / f"{family}-{seed}", family, seed=seed)
    loaded = load_model(ModelSettings(name=str(folder), device="cpu"))
    size = loaded.model.config.vision_config.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    path = work / f"onnx-{family}-{seed}" / "encoder.onnx"
    path.parent.mkdir()
    export_onnx(loaded, path, torch.float32, size, _opset(loaded.device))
    tiles = _tiles(loaded, size, count, paintings)
    want = {kind: _torch(loaded, t) for kind, t in tiles.items()}
    result: dict[str, dict[str, list[float]]] = {}
    for variant, (reduced, config) in VARIANTS.items():
        session = _session(ensure_int8(path, reduced), config)
        errors: dict[str, list[float]] = {}
        for kind, t in tiles.items():
            got = _run(session, t, loaded).reshape(want[kind].shape)
            errors[kind] = [_error(g, w) for g, w in zip(got, want[kind], strict=True)]
            if kind == "paintings":
                errors["all paintings"] = [_error(got, want[kind])]
        result[variant] = errors
    return result


def speed(work: Path, rounds: int = 5) -> dict:
    """Seconds per 512 px tile and error of each variant on the SmolVLM-256M-shaped encoder.

    The variants take turns, round after round, and each reports its median round: on a
    shared (virtual) machine one variant timed after another mostly measures the neighbours.
    """
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from scan_bench import build

    from artnote.model.encoder import _opset, export_onnx
    from artnote.model.int8 import ensure_int8

    loaded = build("smolvlm-256m", "cpu", work)
    size = (512, 512)
    path = work / "onnx-smolvlm-256m" / "encoder.onnx"
    path.parent.mkdir()
    export_onnx(loaded, path, torch.float32, size, _opset(loaded.device))
    tiles = torch.rand((2, 3, *size), generator=torch.Generator().manual_seed(1)) * 2 - 1
    want = _torch(loaded, tiles)
    files = {"float32": (path, {})}
    files.update({v: (ensure_int8(path, r), c) for v, (r, c) in VARIANTS.items()})
    sessions = {variant: _session(file, config) for variant, (file, config) in files.items()}
    out: dict[str, dict[str, Any]] = {}
    for variant, session in sessions.items():  # also warms up (prepacking, thread pool)
        got = _run(session, tiles, loaded).reshape(want.shape)
        errors = [_error(g, w) for g, w in zip(got, want, strict=True)]
        out[variant] = {"error_max": max(errors), "seconds": []}
    for _ in range(rounds):
        for variant, session in sessions.items():
            start = time.perf_counter()
            _run(session, tiles, loaded)
            out[variant]["seconds"].append((time.perf_counter() - start) / len(tiles))
    for r in out.values():
        r["s_per_tile"] = statistics.median(r["seconds"])
    return out


def _paintings() -> list[Any]:
    folder = Path(os.environ.get("ARTNOTE_ART_DIR") or ROOT.parent / "shared" / "art")
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        return []
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in paths]


def _vnni() -> str:
    from artnote.model.int8 import VNNI_FLAGS, cpu_flags, reduce_range

    flags = cpu_flags()
    have = sorted(VNNI_FLAGS & flags) if flags else []
    kind = ", ".join(have) if have else "no VNNI"
    return f"{kind} (artnote makes the {'s7' if reduce_range() else 's8'} copy here)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _stats(values: list[float]) -> str:
    return f"{min(values):.4f} {statistics.median(values):.4f} {max(values):.4f}  n={len(values)}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="tiny models per family (seeds 0..N-1)")
    ap.add_argument(
        "--tiles", type=int, default=4, help="random tiles per model, besides the check"
    )
    ap.add_argument("--families", nargs="+", default=["llava", "smolvlm"])
    ap.add_argument("--speed", action="store_true", help="also time the SmolVLM-256M encoder")
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    args = ap.parse_args(argv)

    import onnxruntime
    import torch

    from artnote.model.load import quiet_transformers

    quiet_transformers()
    paintings = _paintings()
    print(f"CPU: {_cpu_name()}; {_vnni()}")
    print(f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")
    print(f"{args.seeds} seeds x {args.families}; tiles: check, {args.tiles} random, "
          f"{'paintings' if paintings else 'no paintings (not found)'}")  # fmt: skip
    report: dict[str, Any] = {"cpu": _cpu_name(), "vnni": _vnni(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="artnote-int8-") as tmp:
        for family in args.families:
            per_model = [
                measure_model(family, seed, Path(tmp), args.tiles, paintings)
                for seed in range(args.seeds)
            ]
            report["models"][family] = per_model
            print(f"\n{family}: relative error, min median max")
            for variant in VARIANTS:
                for kind in per_model[0][variant]:
                    values = [e for m in per_model for e in m[variant][kind]]
                    print(f"  {variant:8} {kind:14} {_stats(values)}")
        if args.speed:
            report["speed"] = speed(Path(tmp))
            print("\nSmolVLM-256M encoder (random weights), 512 px tiles, median of 5 rounds:")
            for variant, r in report["speed"].items():
                print(
                    f"  {variant:8} {r['s_per_tile']:.3f} s per tile, "
                    f"max relative error {r['error_max']:.4f}"
                )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
