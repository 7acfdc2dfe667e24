"""Performance checks of the catalog side, each against a plain baseline on the same data.

    python bench/perf_checks.py rescan [--files 10000]    rescan vs `find DIR -type f` made to stat
                                    each file (-printf '%s %T@'), and vs plain `find DIR -type f`
    python bench/perf_checks.py export [--rows 100000]    export csv vs `sqlite3 -csv`, same columns
    python bench/perf_checks.py memory [--small 200 --large 2000]    peak RSS of two scans
    python bench/perf_checks.py export-memory [--small 10000 --large 100000]
                                                        peak RSS of every export format

Each prints measured times (best of --repeat runs; artnote and its baselines take turns,
so a busy machine slows them alike) and their ratios, each with its target.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _best(fns, repeat: int) -> list[float]:
    """The best time of each of `fns` over `repeat` rounds, in which they take turns."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, seen in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            seen.append(time.perf_counter() - start)
    return [min(seen) for seen in times]


def _fake_annotation(seed: int):
    from artnote.emotions import EMOTIONS
    from artnote.records import Annotation, Provenance

    rng = random.Random(seed)
    weights = [rng.random() for _ in EMOTIONS]
    total = sum(weights)
    emotions = {e: w / total for e, w in zip(EMOTIONS, weights, strict=True)}
    # Like real descriptions: commas in most sentences, now and then a quoted title, so the
    # CSV writers must quote as they would on a real catalog.
    words = "oil canvas light sea sky figure colour brushwork calm storm gold blue".split()
    words += ["sea,", "light,", "sky,", 'the "Wave"', "storm;", "gold."]
    text = " ".join(rng.choice(words) for _ in range(60))
    prov = Provenance(
        model="bench",
        revision=None,
        family="idefics3",
        adapter=None,
        adapter_name=None,
        prompt_version="bench",
        prompt_hash="0" * 16,
        generation={},
        encoder="torch",
        device="cpu",
        ms=1.0,
    )
    return Annotation(
        alt_text=text[:100],
        description=text,
        emotions=emotions,
        dominant_emotion=max(emotions, key=emotions.get),
        explanation=f"It makes me feel awe because {text[:80]}",
        provenance=prov,
    )


def _catalog_with(root: Path, db: Path, count: int) -> None:
    """A catalog that knows every file under root and has an annotation for each (no model)."""
    from artnote.catalog import open_catalog
    from artnote.config import Settings
    from artnote.discover import hash_files, scan_folder

    catalog = open_catalog(db)
    cid = catalog.ensure_collection(root)
    run = catalog.start_run({}, "bench", None)
    plan = scan_folder(root, {}, Settings().scan.extensions)
    states = list(hash_files(plan.to_hash))
    ids = catalog.record_files(cid, run, states)
    items = [(ids[s.relpath], _fake_annotation(i)) for i, s in enumerate(states)]
    for start in range(0, len(items), 5000):
        catalog.add_annotations(run, items[start : start + 5000])
    catalog.finish_run(run, "completed", {})
    catalog.close()


def check_rescan(files: int, repeat: int) -> dict[str, Any]:
    from artnote.catalog import open_catalog
    from artnote.config import Settings
    from artnote.pipeline import AnnotatorFactory, scan

    with tempfile.TemporaryDirectory(prefix="artnote-rescan-") as tmp:
        root = Path(tmp) / "collection"
        for i in range(files):
            folder = root / f"box{i // 500:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"scan{i:06d}.jpg").write_bytes(hashlib.sha256(b"%d" % i).digest())
        db = Path(tmp) / "catalog.db"
        _catalog_with(root, db, files)
        catalog = open_catalog(db)
        settings = Settings()

        def no_model():
            raise AssertionError("a rescan of unchanged files must not load the model")

        def rescan():
            summary = scan(root, settings, catalog, AnnotatorFactory(no_model), model_name="bench")
            assert summary.unchanged == files and summary.annotated == 0, summary

        def find(printf: str = "") -> None:
            out = subprocess.run(
                f"find '{root}' -type f {printf} | wc -l",
                shell=True,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            assert int(out) == files

        def find_stat():
            # find made to stat every file, as a rescan must (size and mtime): `find -type f`
            # alone reads only directory entries.
            find("-printf '%s %T@\\n'")

        rescan()  # warm the page cache and SQLite's
        t_find, t_stat, t_scan = _best([find, find_stat, rescan], repeat)
    return {
        "check": "rescan",
        "files": files,
        "find_s": t_find,
        "find_stat_s": t_stat,
        "artnote_s": t_scan,
        "ratio_find_stat_to_find": t_stat / t_find,
        "ratio_to_find_stat": t_scan / t_stat,  # the same stat calls
        "target_to_find_stat": 1.5,
        "ratio": t_scan / t_find,  # plain find: directory entries only
        "target": 3.0,
    }


def check_export(rows: int, repeat: int) -> dict[str, Any]:
    from artnote.catalog import open_catalog
    from artnote.export import CSV_COLUMNS, write_csv_cells

    with tempfile.TemporaryDirectory(prefix="artnote-export-") as tmp:
        root = Path(tmp) / "collection"
        root.mkdir()
        for i in range(rows):  # tiny distinct files: only their hashes matter here
            (root / f"{i:07d}.jpg").write_bytes(b"%d" % i)
        db = Path(tmp) / "catalog.db"
        _catalog_with(root, db, rows)
        catalog = open_catalog(db)
        out = Path(tmp) / "out.csv"

        def export():
            with open(out, "w", encoding="utf-8", newline="") as f:
                assert write_csv_cells(catalog.export_table(), f) == rows

        from artnote.emotions import EMOTION_COLUMNS

        text = (
            "alt_text",
            "description",
            "dominant_emotion",
            *EMOTION_COLUMNS,
            "explanation",
            "model",
            "adapter",
            "created_at",
        )
        cols = ", ".join(f"a.{c}" for c in text)
        sql = (
            f"SELECT c.root || '/' || i.relpath, i.sha256, i.width, i.height, {cols} "
            "FROM images i JOIN collections c ON c.id = i.collection_id "
            "JOIN annotations a ON a.id = (SELECT max(id) FROM annotations "
            "WHERE sha256 = i.sha256) WHERE i.status != 'missing' "
            "ORDER BY i.collection_id, i.relpath"
        )

        def sqlite_csv():
            with open(Path(tmp) / "baseline.csv", "w") as f:
                subprocess.run(["sqlite3", "-csv", str(db), sql], stdout=f, check=True)

        t_sqlite, t_export = _best([sqlite_csv, export], repeat)
        lines = sum(1 for _ in open(out, encoding="utf-8")) if rows < 1000 else None
    return {
        "check": "export",
        "rows": rows,
        "columns": len(CSV_COLUMNS),
        "sqlite3_s": t_sqlite,
        "artnote_s": t_export,
        "ratio": t_export / t_sqlite,
        "target": 2.0,
        "lines": lines,
    }


def check_memory(small: int, large: int) -> dict[str, Any]:
    """Peak RSS of `artnote scan` (a child process each, tiny model) on small and large folders."""
    from PIL import Image

    from artnote.model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="artnote-memory-") as tmp:
        model = build_tiny_model(Path(tmp) / "tiny", "smolvlm")
        rng = random.Random(0)
        result: dict[str, Any] = {"check": "memory", "small": small, "large": large}
        # The warm-up run pays the one-time ONNX export, so neither measured run includes it.
        for name, count in (("warmup", 4), ("small", small), ("large", large)):
            folder = Path(tmp) / name
            folder.mkdir()
            for i in range(count):
                colour = tuple(rng.randrange(256) for _ in range(3))
                Image.new("RGB", (320, 240), colour).save(folder / f"{i:05d}.jpg", quality=90)
            env = {
                **os.environ,
                "ARTNOTE_GENERATION_ALT_TEXT_TOKENS": "4",
                "ARTNOTE_GENERATION_DESCRIPTION_TOKENS": "4",
                "ARTNOTE_GENERATION_EXPLANATION_TOKENS": "4",
                "ARTNOTE_CACHE_DIR": str(Path(tmp) / "cache"),
            }
            start = time.perf_counter()
            argv = ["scan", str(folder), "--quiet", "--model", str(model)]
            argv += ["--catalog", str(Path(tmp) / f"{name}.db")]
            result[f"{name}_peak_rss_mb"] = _peak_rss_mb(argv, env)
            result[f"{name}_seconds"] = time.perf_counter() - start
        del result["warmup_peak_rss_mb"], result["warmup_seconds"]
        result["ratio"] = result["large_peak_rss_mb"] / result["small_peak_rss_mb"]
        result["target"] = 1.2
    return result


EXPORT_FORMATS = {  # format -> its arguments after `artnote export` (OUT: a folder or file)
    "csv": ["csv", "--out", "OUT.csv"],
    "jsonl": ["jsonl", "--out", "OUT.jsonl"],
    "iiif": ["iiif", "--base-url", "https://museum.example/", "--out", "OUT"],
    "label-studio": ["label-studio", "--out", "OUT.json"],
    "xmp": ["xmp", "--sidecars", "--out", "OUT"],
}


def check_export_memory(small: int, large: int) -> dict[str, Any]:
    """Peak RSS of each `artnote export` format (a child process each) on a small and a
    large catalog (folders of 1,000 images): flat memory means a ratio near 1."""
    import sqlite3

    result: dict[str, Any] = {"check": "export-memory", "small": small, "large": large}
    with tempfile.TemporaryDirectory(prefix="artnote-export-memory-") as tmp:
        for name, count in (("small", small), ("large", large)):
            root = Path(tmp) / name
            for i in range(count):
                path = root / f"{i // 1000:03d}" / f"{i:07d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"%d" % i)  # only the hash matters; sizes are set below
            db = Path(tmp) / f"{name}.db"
            _catalog_with(root, db, count)
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE images SET width = 640, height = 480")
            for fmt, args in EXPORT_FORMATS.items():
                out = str(Path(tmp) / f"{name}-{fmt}")
                argv = ["export", *(a.replace("OUT", out) for a in args), "--catalog", str(db)]
                result[f"{fmt}_{name}_peak_rss_mb"] = _peak_rss_mb(argv)
    ratios = [
        result[f"{f}_large_peak_rss_mb"] / result[f"{f}_small_peak_rss_mb"] for f in EXPORT_FORMATS
    ]
    for fmt, ratio in zip(EXPORT_FORMATS, ratios, strict=True):
        result[f"{fmt}_ratio"] = ratio
    result["ratio"] = max(ratios)
    result["target"] = 1.2
    return result


def _peak_rss_mb(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Run `artnote ARGV` in a child process; its peak resident memory in MiB."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child
    # would report the (larger) parent's peak. VmHWM belongs to the new address space.
    code = (
        "import re, sys; from artnote.cli import main; sys.argv = sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "status = open('/proc/self/status').read()\n"
        "print('PEAK', re.search(r'VmHWM:\\s+(\\d+)', status).group(1))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "artnote", *argv],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return int(proc.stdout.split("PEAK")[-1]) / 1024


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="check", required=True)
    p = sub.add_parser("rescan")
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p = sub.add_parser("export")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p = sub.add_parser("memory")
    p.add_argument("--small", type=int, default=200)
    p.add_argument("--large", type=int, default=2000)
    p = sub.add_parser("export-memory")
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.check == "rescan":
        result = check_rescan(args.files, args.repeat)
    elif args.check == "export":
        result = check_export(args.rows, args.repeat)
    elif args.check == "export-memory":
        result = check_export_memory(args.small, args.large)
    else:
        result = check_memory(args.small, args.large)
    buf = io.StringIO()
    for key, value in result.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}", file=buf)
    print(buf.getvalue(), end="")
    if "ratio_to_find_stat" in result:
        ratio, target = result["ratio_to_find_stat"], result["target_to_find_stat"]
        print(f"ratio {ratio:.2f}x find with stat (target <= {target}x)")
        print(f"ratio {result['ratio']:.2f}x plain find (target <= {result['target']}x)")
    else:
        print(f"ratio {result['ratio']:.2f}x (target <= {result['target']}x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
