"""Soak: one long `artnote scan` of many tiny images with a tiny model, watched from outside.

    python bench/soak.py [--images 20000] [--every 1000] [--batch-size 32] [--json out.json]

Leaks show only in long runs: memory, open file descriptors or threads that grow with
the number of images. The scan runs as a real `artnote` subprocess; this script reads
its /proc entries (VmRSS, the fd folder, Threads) and its catalog's annotation count
every fraction of a second, and prints one sample per --every images. Flat means the
last sample is at most 1.1x the one at 2 x --every images (the first ones include
start-up: model, ONNX session, caches warming). Linux only (/proc). Nothing is downloaded:
the tiny model is built locally, like the tests'.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LIMIT = 1.1


def make_images(folder: Path, count: int) -> None:
    """`count` distinct 32x32 images (PNG and JPEG), 500 to a folder."""
    from PIL import Image

    rng = random.Random(0)
    for i in range(count):
        sub = folder / f"box{i // 500:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        colour = tuple(rng.randrange(256) for _ in range(3))
        im = Image.new("RGB", (32, 32), colour)
        im.putpixel((i % 32, i // 32 % 32), (i % 256, i // 256 % 256, 255 - colour[2]))
        im.save(sub / f"img{i:06d}.{'png' if i % 2 else 'jpg'}")


def sample(pid: int) -> dict[str, int] | None:
    """RSS (kB), open fds and threads of a live process; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "fds": fds,
        "threads": int(fields["Threads"]),
    }


def annotated(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM annotations").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # not created yet
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from artnote.model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="artnote-soak-") as tmp:
        base = Path(tmp)
        folder, db = base / "collection", base / "catalog.db"
        print(f"making {args.images} images ...", file=sys.stderr)
        make_images(folder, args.images)
        model = build_tiny_model(base / "model", "smolvlm")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARTNOTE_")}
        env.update(
            ARTNOTE_CACHE_DIR=str(base / "cache"),
            HF_HUB_OFFLINE="1",
            ARTNOTE_GENERATION_ALT_TEXT_TOKENS="4",
            ARTNOTE_GENERATION_DESCRIPTION_TOKENS="4",
            ARTNOTE_GENERATION_EXPLANATION_TOKENS="4",
        )
        cmd = [sys.executable, "-m", "artnote.cli", "scan", str(folder), "--catalog", str(db)]
        cmd += ["--model", str(model), "--batch-size", str(args.batch_size), "--quiet"]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        samples: list[dict[str, float]] = []
        mark = args.every
        while proc.poll() is None:
            done = annotated(db)
            if done >= mark:
                now = sample(proc.pid)
                if now is None:
                    break
                row = {"images": done, "seconds": round(time.perf_counter() - start, 1), **now}
                samples.append(row)
                mb = now["rss_kb"] / 1024
                print(
                    f"{done:>7} images  {row['seconds']:>7.1f} s  RSS {mb:7.1f} MiB"
                    f"  fds {now['fds']:>4}  threads {now['threads']:>3}",
                    flush=True,
                )
                while mark <= done:
                    mark += args.every
            time.sleep(0.2)
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"the scan failed ({proc.returncode}): {err.strip()[-2000:]}")

    reference = next((s for s in samples if s["images"] >= 2 * args.every), None)
    if reference is None or len(samples) < 3:
        sys.exit("too few samples to judge: give more --images")
    last = samples[-1]
    ratios = {k: last[k] / reference[k] for k in ("rss_kb", "fds", "threads")}
    verdict = all(r <= LIMIT for r in ratios.values())
    print(
        f"last ({last['images']} images) / at {reference['images']}: "
        + ", ".join(f"{k} {r:.3f}x" for k, r in ratios.items())
        + f" (target <= {LIMIT}x: {'met' if verdict else 'NOT met'})"
    )
    if args.json:
        result = {"images": args.images, "samples": samples, "ratios": ratios, "flat": verdict}
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
