"""The fine-tuning benchmark keeps working: a smoke run at tiny size (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_bench_smoke_reports_every_figure(tmp_path, art_paths):
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "train_bench.py"),
            *("--shape", "tiny", "--steps", "3", "--sizes", "8,16", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "ARTNOTE_ART_DIR": str(art_paths[0].parent)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "peak RSS 16 / 8 images:" in proc.stdout
    assert "cached-step speed-up at 16 images:" in proc.stdout
    result = json.loads(out.read_text())
    assert result["shape"] == "tiny" and result["steps_per_run"] == 3
    assert result["peak_rss_ratio"] > 0 and result["cached_step_speedup"] > 0
    assert {"peak_rss_ratio_met", "cached_step_speedup_met"} <= set(result["goals"])
    assert "step_costs" in result
    for key in ("cpu", "cores", "torch"):
        assert result["machine"][key]
    assert set(result["sizes"]) == {"8", "16"}
    for n, size in result["sizes"].items():
        assert size["images"] == int(n) and size["same_batches"]
        assert size["paired_steps"] > 0 and size["cached_step_speedup"] > 0
        assert size["cached_step_speedup_cpu"] > 0
        assert size["peak_rss_mb"] > 0
        cold, warm = size["cold"], size["warm"]
        for run in (cold, warm):
            assert run["steps"] == 3 and run["timed_steps"] == 2
            for key in (
                "seconds_per_step",
                "cpu_seconds_per_step",
                "samples_per_s",
                "peak_rss_mb",
                "setup_seconds",
            ):
                assert run[key] > 0
        # cold: the vision tower ran; warm: every image's features came from the cache
        assert cold["encoded_images"] > 0 and cold["tower_steps"] > 0
        assert warm["encoded_images"] == 0 and warm["tower_steps"] == 0
        assert cold["feature_cache_mb"] > 0
