"""The on-disk cache of exported encoders, shared by every process of a machine (or of a
network home): cache_dir()/onnx/ENTRY/, one folder per key, holding the graph, key.json
and the int8 copies (artnote.model.int8).

Several processes may want one entry at once (two scans started together on a new
model). One export per entry runs at a time, under the entry's lock (files.entry_lock:
.ENTRY.lock beside it, dropped by the kernel if its holder dies); the others wait, say
so on one line, and then use what it made. An entry is filled in a hidden temporary
folder and renamed into place whole (files.atomic_folder), so the graph file's presence
means the entry is complete: readers take no lock, and a read-only shared cache works
for them as long as it holds their entry. A write that fails (a full disk, a crash)
leaves nothing under the entry's name; a full disk is a one-line DiskFullError naming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from artnote.files import PARTIAL, atomic_folder, entry_lock, temporary_name, write_error

KEEP_EXPORTS = 4  # per model: new frozen weights (or versions) make a new export; keep a few
KEY_FILE = "key.json"
STALE_AFTER_S = 86400  # a temporary folder this old is a crash's leftover, not a live export


def cache_dir() -> Path:
    """$ARTNOTE_CACHE_DIR, else $XDG_CACHE_HOME/artnote, else ~/.cache/artnote."""
    if os.environ.get("ARTNOTE_CACHE_DIR"):
        return Path(os.environ["ARTNOTE_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "artnote"


def say_waiting(doing: str) -> Callable[[], None]:
    """An entry_lock `on_wait` that tells, on one stderr line, what this process waits for."""

    def on_wait() -> None:
        print(f"waiting for another process {doing}...", file=sys.stderr, flush=True)

    return on_wait


def ensure_entry(
    folder: Path,
    file: str,
    key: dict[str, Any],
    make: Callable[[Path], None],
    doing: str,
    prefix: str,
) -> tuple[Path, bool]:
    """`folder/file`, made first if the entry is missing: (path, made by this call).

    `make(path)` writes the file (and any files beside it) into a temporary folder that
    becomes `folder` with `key` in key.json; `doing` ("exporting the vision encoder of
    X to ONNX") is what stderr says meanwhile. Afterwards the entries named `prefix`*
    beyond the KEEP_EXPORTS most recently used are removed.
    """
    path = folder / file
    if path.is_file():
        _touch(folder)
        return path, False
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    # A hidden lock file (.ENTRY.lock): the entries' names and globs stay the entries'.
    with entry_lock(folder.with_name("." + folder.name), on_wait=say_waiting(doing)):
        if path.is_file():  # made by the process we waited for
            _touch(folder)
            return path, False
        if folder.exists():  # without its graph (emptied by hand, an old crash): blocks all
            discard(folder)
        print(f"{doing} (once per model)... ", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            with atomic_folder(folder) as tmp:
                make(tmp / file)
                (tmp / KEY_FILE).write_text(json.dumps(key, indent=2), encoding="utf-8")
        except BaseException:
            print("failed", file=sys.stderr, flush=True)
            raise
        print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    release_freed_memory()
    prune(folder.parent, prefix)
    return path, True


def release_freed_memory() -> None:
    """Give back to the system the heap that a one-time export or quantization freed.

    Both allocate hundreds of MB in small pieces (traced graphs, protobufs) that the
    C allocator keeps after they are freed: measured 0.7 GB after the export and int8
    copy of a SmolVLM-256M encoder, held as RSS for the whole scan that follows. Only
    glibc has malloc_trim; elsewhere this only runs the garbage collector.
    """
    gc.collect()  # the exporter's graphs hold cycles: freed only now
    trim_heap()


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim; elsewhere a no-op).
    Tens of ms at most (47 ms for 0.5 GB of holes on the 2-core CPU); a page handed back
    costs a page fault when it is used again."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6 or no malloc_trim)
        pass


def prune(parent: Path, prefix: str) -> None:
    """Keep the KEEP_EXPORTS most recently used entries named `prefix`*, and remove the
    temporary folders that crashes left (a day old: younger ones may be another process's
    export in progress). Lock files stay: removing one that a process has just opened
    would let a second process lock a new file of the same name."""
    exports = sorted(_mtimes(parent.glob(prefix + "*")), reverse=True)
    old = time.time() - STALE_AFTER_S
    # ".tmp-*": the temporary names of artnote before files.PARTIAL.
    leftovers = itertools.chain(parent.glob(f".*{PARTIAL}"), parent.glob(".tmp-*"))
    for _, path in exports[KEEP_EXPORTS:]:
        discard(path)
    for mtime, path in _mtimes(leftovers):
        if mtime < old and path.is_dir():  # not a lock file (.ENTRY.lock) of a "tmp-" model
            shutil.rmtree(path, ignore_errors=True)


def discard(folder: Path) -> None:
    """Move an entry aside (one atomic step: a reader sees all of it or none), then delete it.
    A crash in between leaves a temporary name, which prune removes a day later."""
    aside = temporary_name(folder)
    try:
        folder.rename(aside)
    except OSError:
        return  # gone already (another process), or a read-only cache
    shutil.rmtree(aside, ignore_errors=True)


def _touch(folder: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only shared cache is fine
        os.utime(folder)  # most recently used: kept by prune


def _mtimes(paths: Iterable[Path]) -> list[tuple[float, Path]]:
    """(mtime, path) of each path still there: another process may remove or rename any."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            found.append((path.stat().st_mtime, path))
    return found
