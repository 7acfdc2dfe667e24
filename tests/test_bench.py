"""The benchmarks keep working (smoke runs at tiny size) and their arithmetic is right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_scan_bench_smoke_prints_the_ratio(tmp_path, art_paths):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "scan_bench.py"),
            "--shape",
            "tiny",
            "--images",
            "4",
            "--tokens",
            "3",
            "--naive-sample",
            "2",
            "--decode-loop",
            "auto",
            "static",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio artnote/naive:" in proc.stdout
    result = json.loads(out.read_text())
    for key in (
        "naive_images_per_s",
        "artnote_images_per_s",
        "ratio",
        "stages",
        "peak_rss_mb",
        "shape",
        "images",
        "device",
    ):
        assert key in result
    assert result["images"] == 4 and result["ratio"] > 0
    assert result["naive_images"] == 2  # the naive loop timed on a sample, its rate per image
    loops = result["decode_loops"]  # both loops scanned every image, side by side
    assert [loops[k]["resolved"] for k in ("auto", "static")] == ["growing", "static"]
    assert "decode_loop static (static):" in proc.stdout
    assert {
        "decode_wait",
        "model",
        "catalog",
        "model.encode",
        "model.prefill",
        "model.generate",
        "model.scoring",
    } <= set(result["stages"])


def test_perf_checks_smoke(tmp_path):
    import perf_checks

    rescan = perf_checks.main(["rescan", "--files", "300", "--repeat", "1"])
    assert rescan["files"] == 300 and rescan["ratio"] > 0
    export = perf_checks.main(["export", "--rows", "300", "--repeat", "1"])
    assert export["lines"] == 301 and export["ratio"] > 0


def test_roofline_arithmetic():
    from scan_bench import roofline_seconds

    # 1e12 FLOP/s, 1e9 B/s; vision 2*10*5 + prefill 2*100*20 = 4100 FLOP;
    # decode: 4 steps x (1000 + 2 images x 2 B x (20 + 3 fields x 4/2)) / 1e9 / batch 2.
    got = roofline_seconds(
        lm_params=100,
        vision_params=10,
        vision_tokens=5,
        prefill_tokens=20,
        gen_tokens=4,
        branches=3,
        batch=2,
        weight_bytes=1000,
        kv_bytes_per_token=2,
        flops_per_s=1e12,
        bytes_per_s=1e9,
    )
    assert got == pytest.approx(4100 / 1e12 + 4 * (1000 + 2 * 2 * 26) / 1e9 / 2)


@pytest.mark.slow
def test_ray_bench_smoke_reports_both_engines(tmp_path, art_paths):
    out = tmp_path / "ray.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "ray_bench.py"),
            "--shape",
            "tiny",
            "--images",
            "6",
            "--tokens",
            "2",
            "--batch-size",
            "2",
            "--json",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "whole run (start-up and model loads included), ray / local:" in proc.stdout
    result = json.loads(out.read_text())
    for engine in ("local", "ray"):
        assert result[engine]["annotated"] == 6 and result[engine]["seconds"] > 0
    assert result["ray"]["ray_init_s"] > 0 and result["overall_ratio_ray_over_local"] > 0


def test_peer_vllm_plan_asks_artnotes_questions_and_counts_its_tokens(tiny_models):
    """vLLM's side of bench/peer_vllm.py gets artnote's own prompts, and as many generated
    tokens as artnote generates; without vLLM the script prints the accounting."""
    from peer_vllm import accounting, main, plan
    from transformers import AutoProcessor

    from artnote.emotions import EMOTIONS
    from artnote.model import inputs

    processor = AutoProcessor.from_pretrained(str(tiny_models["smolvlm"]))
    first, second = plan(processor, 2, 5, dominant=["awe", "fear"])
    assert len(first) == 2 * (2 + len(EMOTIONS)) and len(second) == 2
    for r in first + second:
        field = "emotion" if r.kind == "label" else r.kind
        emotion = {0: "awe", 1: "fear"}[r.image] if r.kind == "explanation" else None
        parts = inputs.field_parts(processor, field, emotion)
        want = parts.prefix + parts.suffix + (f" {r.label}" if r.kind == "label" else "")
        assert r.prompt == want
    assert sorted(r.label for r in first if r.image == 0 and r.kind == "label") == sorted(EMOTIONS)
    counts = accounting(processor, first + second, image_tokens=64)
    assert counts["generated_tokens"] == 2 * (3 * 5 + len(EMOTIONS))
    assert counts["requests"] == 24
    try:
        import vllm  # noqa: F401
    except ImportError:
        result = main(["--shape", "smolvlm-256m", "--images", "2", "--tokens", "4"])
        assert result["vllm"].startswith("not installed")
        assert result["vllm_plan"]["generated_tokens"] == 2 * (3 * 4 + len(EMOTIONS))


def test_scan_bench_memory_explains_the_peak(tmp_path, art_paths, monkeypatch):
    import scan_bench

    monkeypatch.setenv("ARTNOTE_ART_DIR", str(art_paths[0].parent))
    out = tmp_path / "memory.json"
    result = scan_bench.main(
        ["--memory", "--shape", "tiny", "--images", "2", "--tokens", "2", "--json", str(out)]
    )
    assert json.loads(out.read_text())["ratio"] == result["ratio"] > 0
    assert result["weights_mb"] > 0 and result["batch_tensors_mb"] > 0
    assert result["after_weights_rss_mb"] > result["start_rss_mb"]
    # (Not >= after_weights_rss_mb: the heap trimmed before the scan's encode can leave the
    # scan's peak below what was resident after loading.)
    assert result["scan_peak_rss_mb"] > result["weights_mb"]
    stages = result["stage_peak_rss_mb"]  # the peak placed in a stage of the scan
    assert result["peak_stage"] in stages and all(v > 0 for v in stages.values())
