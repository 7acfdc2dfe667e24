"""The ONNX cache shared by several processes, and on a full disk: each entry is exported
once (the other process waits, then reuses it), a reader never loads half an entry, and
ENOSPC at the cache write is a one-line error that leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_reliability_crash import KILLED, artnote_env, count, finish, make_images, start

from artnote.files import PARTIAL, entry_lock
from artnote.model import encoder as enc_mod
from artnote.model import onnx_cache
from artnote.model.int8 import int8_file, reduce_range

ROUNDS = 10

# Loads a tiny model once, then for each cache folder read from stdin makes the int8 ONNX
# encoder there and prints what it got: two of these started on one line at once are two
# scans started together on a new model.
WORKER = r"""
import json, os, sys
import torch
from artnote.config import ModelSettings
from artnote.model.encoder import make_encoder
from artnote.model.load import load_model

loaded = load_model(ModelSettings(name=sys.argv[1], device="cpu"))
size = loaded.model.config.vision_config.image_size
tiles = torch.rand((2, 3, size, size), generator=torch.Generator().manual_seed(0)) * 2 - 1
print("ready", flush=True)
for line in sys.stdin:
    os.environ["ARTNOTE_CACHE_DIR"] = line.strip()
    encoder = make_encoder(loaded, "onnx", "int8")
    out = torch.cat(encoder.encode({"pixel_values": tiles})).float()
    print(json.dumps({"name": encoder.name, "exported": getattr(encoder, "exported", None),
                      "path": str(getattr(encoder, "session_path", "")),
                      "out": out.flatten().tolist()}), flush=True)
"""


def _entries(onnx_dir: Path) -> tuple[list[Path], list[Path]]:
    """(entry folders, temporaries) under cache/onnx; lock files are neither."""
    names = sorted(onnx_dir.iterdir()) if onnx_dir.exists() else []
    entries = [p for p in names if not p.name.startswith(".")]
    partial = [p for p in names if p.is_dir() and p.name.startswith(".")]
    return entries, partial


def _read_line(proc: subprocess.Popen, timeout: float = 180) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "worker gave no answer in time"
    line = proc.stdout.readline()
    assert line, f"worker ended (code {proc.poll()})"
    return line


def test_a_waiting_process_reuses_the_entry_the_lock_holder_made(tmp_path, capsys):
    """Deterministic, in one process (flock locks of two opens exclude each other): while
    another exporter holds the entry's lock, ensure_entry waits and says so on one line,
    then uses the entry that exporter made, without making it again."""
    folder = tmp_path / "onnx" / "museum_m-llava-float32-0123"
    folder.parent.mkdir()
    made, result = [], []
    probe = threading.Thread(
        target=lambda: result.append(
            onnx_cache.ensure_entry(folder, "g.onnx", {}, made.append, "exporting X", "museum")
        )
    )
    with entry_lock(folder.with_name("." + folder.name)):  # the entry's lock, as ensure_entry's
        probe.start()
        deadline = time.time() + 30
        while "waiting for another process exporting X..." not in capsys.readouterr().err:
            assert time.time() < deadline and probe.is_alive(), "no waiting line"
            time.sleep(0.05)
        folder.mkdir()  # what the other exporter renames into place when it is done
        (folder / "g.onnx").write_bytes(b"graph")
    probe.join(30)
    assert result == [(folder / "g.onnx", False)] and made == []


@pytest.mark.slow
def test_two_processes_export_one_entry_together_ten_times(tiny_models, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    umask = os.umask(0o022)
    os.umask(umask)
    logs = [tmp_path / "a.err", tmp_path / "b.err"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tiny_models["llava"])],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        for log in logs
    ]
    try:
        for w in workers:
            assert _read_line(w).strip() == "ready"
        started = time.perf_counter()
        for turn in range(ROUNDS):
            cache = tmp_path / f"cache{turn}"  # empty: both find no entry
            for w in workers:
                w.stdin.write(f"{cache}\n")
                w.stdin.flush()
            a, b = (json.loads(_read_line(w)) for w in workers)
            assert a["name"] == b["name"] and a["name"].startswith("onnx"), (a["name"], b["name"])
            assert sorted([a["exported"], b["exported"]]) == [False, True], turn  # once
            assert a["path"] == b["path"]
            assert torch.allclose(torch.tensor(a["out"]), torch.tensor(b["out"]), atol=1e-6)
            entries, partial = _entries(cache / "onnx")
            assert len(entries) == 1 and partial == [], (entries, partial)
            # Readable by the other users of a shared cache, as a plain mkdir would make it.
            assert stat.S_IMODE(entries[0].stat().st_mode) == 0o777 & ~umask
            files = {p.name for p in entries[0].iterdir() if p.suffix != ".lock"}
            assert files == {enc_mod.ONNX_FILE, "key.json", int8_file(reduce_range())}, files
        elapsed = time.perf_counter() - started
    finally:
        for w in workers:
            w.stdin.close()
        for w in workers:
            w.wait(60)
    err = "".join(log.read_text() for log in logs)
    print(f"{ROUNDS} rounds of two processes exporting together: {elapsed:.1f} s")
    lines = err.splitlines()
    assert sum(x.startswith("exporting the vision encoder of") for x in lines) == ROUNDS, err
    assert sum(x.startswith("quantizing the vision encoder to int8") for x in lines) == ROUNDS
    # One of the two came to a held lock at least once: the rounds really overlapped.
    assert "waiting for another process" in err, err


@pytest.mark.slow
def test_a_scan_killed_mid_export_leaves_no_entry_and_the_next_run_exports(tiny_models, tmp_path):
    cache = tmp_path / "cache"
    env = artnote_env(tmp_path / "artnote.db", tiny_models["llava"], cache)
    make_images(tmp_path / "art", 2)
    hooks = {"kill": ["artnote.model.encoder.export_onnx", "after", 1]}  # graph written
    code, err = finish(start(["scan", tmp_path / "art"], env, hooks))
    assert code == KILLED, err
    entries, partial = _entries(cache / "onnx")
    assert entries == [], "a half-made entry must never carry the entry's name"
    (left,) = partial  # the killed export's temporary folder, with its whole graph
    assert (left / enc_mod.ONNX_FILE).is_file() and not (left / "key.json").exists()

    # The next run: no stale lock (the kernel dropped it), a fresh export, and the prune
    # after it removes a day-old leftover but not a young one (another process's export).
    old = time.time() - 2 * onnx_cache.STALE_AFTER_S
    os.utime(left, (old, old))
    young = cache / "onnx" / f".other-entry.1234-abcd{PARTIAL}"
    young.mkdir()
    code, err = finish(start(["scan", tmp_path / "art"], env))
    assert code == 0, err
    assert "exporting the vision encoder of" in err and "waiting" not in err, err
    entries, partial = _entries(cache / "onnx")
    assert len(entries) == 1 and partial == [young], (entries, partial)
    assert count(tmp_path / "artnote.db", "annotations") == 2


@pytest.mark.slow
def test_a_full_disk_at_the_onnx_cache_is_one_line_and_the_rerun_succeeds(tiny_models, tmp_path):
    # The graph file is written by onnx.save (Python's open + write), key.json by pathlib:
    # the hook fails the first write to any file under this cache folder.
    cache = tmp_path / "onnx-cache-on-a-full-disk"
    env = artnote_env(tmp_path / "artnote.db", tiny_models["llava"], cache)
    make_images(tmp_path / "art", 3)
    hooks = {"enospc": [cache.name, 0]}
    code, err = finish(start(["scan", tmp_path / "art"], env, hooks))
    assert code == 1, err
    lines = [line for line in err.splitlines() if "no space left" in line]
    assert len(lines) == 1, err
    assert str(cache / "onnx") in lines[0] and " free" in lines[0], lines[0]
    assert "Traceback" not in err, err
    assert _entries(cache / "onnx") == ([], []), "nothing half-written may stay"

    code, err = finish(start(["catalog", "check"], env))
    assert code == 0, err

    code, err = finish(start(["scan", tmp_path / "art"], env))  # space freed
    assert code == 0, err
    entries, partial = _entries(cache / "onnx")
    assert len(entries) == 1 and partial == []
    assert count(tmp_path / "artnote.db", "annotations") == 3


def test_a_full_disk_while_quantizing_is_a_disk_full_error_and_leaves_no_copy(
    tmp_path, monkeypatch
):
    import errno

    from onnxruntime import quantization

    from artnote.files import DiskFullError
    from artnote.model.int8 import ensure_int8

    graph = tmp_path / "entry" / enc_mod.ONNX_FILE
    graph.parent.mkdir()
    graph.write_bytes(b"graph")

    def quantize_dynamic(source, dest, **options):
        Path(dest).write_bytes(b"half a cop")
        try:
            raise OSError(errno.ENOSPC, "No space left on device", dest)
        except OSError as exc:  # the quantizer may wrap what it meets
            raise RuntimeError("save failed") from exc

    monkeypatch.setattr(quantization, "quantize_dynamic", quantize_dynamic)
    with pytest.raises(DiskFullError, match="no space left to write .*encoder.int8") as caught:
        ensure_int8(graph, reduced=True)
    assert str(graph.parent) in str(caught.value) and "free" in str(caught.value)
    left = sorted(p.name for p in graph.parent.iterdir() if p.suffix != ".lock")
    assert left == [enc_mod.ONNX_FILE], left  # no copy, no temporary
