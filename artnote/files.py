"""Writing files so that no one ever reads half of one: a crash, a full disk, a signal
or another process writing the same name leaves either the old file or the new one.

Every writer of a file that someone else reads later (exports, sidecars, reports, the
ONNX cache, adapters, checkpoints, backups, thumbnails) goes through here:

    with atomic_write(path, "w", encoding="utf-8") as fh:   # one file
        fh.write(...)
    with atomic_path(path) as tmp:                         # one file, for a writer by path
        tool.write(tmp)
    with atomic_folder(path) as tmp:                       # a folder of files
        (tmp / "a.bin").write_bytes(...)
    with entry_lock(path):                                 # one writer per cache entry
        ...

The new content goes to a hidden temporary name beside the target (same folder, so
the same filesystem), is flushed to disk, and takes the real name by one rename. A
failure removes the temporary, and a full disk or quota becomes a one-line
DiskFullError naming the path and the space left on its volume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from artnote.errors import ArtnoteError


class WriteError(ArtnoteError):
    """A file or folder cannot be written (permission, read-only volume, no space)."""


class DiskFullError(WriteError):
    """The volume (or the user's quota) has no room for what is being written."""


# What a write can meet that is about the target's volume, not about the data.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
WRITE_SIDE = NO_SPACE | {errno.EROFS, errno.EACCES, errno.EPERM}
PARTIAL = ".partial"  # every temporary name ends so; a crash can leave one, never a target


def write_error(path: str | os.PathLike[str], exc: OSError) -> WriteError:
    """One line for an OSError met while writing `path`: a DiskFullError (with the free
    space of the volume) for no space or quota, else a WriteError with the system's words."""
    if exc.errno in NO_SPACE:
        return DiskFullError(
            f"no space left to write {path} ({free_space(path)} free on its volume); "
            "free some space and run the command again"
        )
    return WriteError(f"cannot write {path}: {exc.strerror or exc}")


def free_space(path: str | os.PathLike[str]) -> str:
    """The space left on the volume holding `path` (or its nearest existing folder), for
    people: '12.3 MB'; 'unknown' where the system cannot say."""
    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free = shutil.disk_usage(here).free
    except OSError:
        return "unknown"
    return human_bytes(free)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def temporary_name(dest: Path) -> Path:
    """A hidden name beside `dest` that no other writer (process or thread) can pick."""
    return dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL}")


@contextmanager
def atomic_path(
    dest: str | os.PathLike[str],
    *,
    durable: bool = True,
    like: str | os.PathLike[str] | None = None,
) -> Iterator[Path]:
    """A new empty file beside `dest`, by its path, for writers that need one (exiv2, a
    SQLite backup); when the block ends without an exception it is fsync'd (`durable`)
    and renamed to `dest`, replacing what was there; otherwise it is removed and `dest`
    is as it was.

    The file gets the usual permissions (umask), or those of the file `like`. OSErrors
    of the write side (no space, quota, read-only, permission) become a one-line
    WriteError/DiskFullError naming `dest`; others pass through unchanged.
    """
    dest = Path(dest)
    tmp = temporary_name(dest)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise write_error(dest, exc) from None
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        if like is not None:
            shutil.copymode(like, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        _remove(tmp)
        if exc.errno in WRITE_SIDE:
            raise write_error(dest, exc) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_write(
    dest: str | os.PathLike[str],
    mode: str = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    durable: bool = True,
    like: str | os.PathLike[str] | None = None,
) -> Iterator[IO[Any]]:
    """atomic_path, opened for writing ("w" or "wb"): the file object is yielded, and
    flushed (`durable`: fsync'd) before the rename."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes new files: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(dest, durable=False, like=like) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())


def write_bytes(dest: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """atomic_write of one bytes object."""
    with atomic_write(dest, "wb", durable=durable) as fh:
        fh.write(data)


def write_text(dest: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """atomic_write of one text, UTF-8."""
    with atomic_write(dest, "w", encoding="utf-8", durable=durable) as fh:
        fh.write(text)


@contextmanager
def atomic_folder(dest: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """A new empty folder beside `dest` to fill; when the block ends without an exception
    its files are flushed to disk and it is renamed to `dest` in one step. With `replace`
    an existing `dest` is swapped out first (moved aside, then deleted), so a reader sees
    the old folder or the new one; without it, an existing `dest` is a WriteError.
    On any failure the temporary folder is removed and `dest` is as it was.
    """
    dest = Path(dest)
    try:
        # Not mkdtemp: its 0700 would make the folder private once renamed (a cache shared
        # by several users); os.mkdir gives the usual permissions (umask).
        tmp = temporary_name(dest)
        os.mkdir(tmp)
    except OSError as exc:
        raise write_error(dest, exc) from None
    try:
        yield tmp
        _sync_tree(tmp)
        if dest.exists() and replace:
            aside = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old")
            os.rename(dest, aside)
            os.rename(tmp, dest)
            shutil.rmtree(aside, ignore_errors=True)
        elif dest.exists():
            raise WriteError(f"cannot write {dest}: it exists already")
        else:
            os.rename(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in WRITE_SIDE:
            raise write_error(dest, exc) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sync_tree(folder: Path) -> None:
    """fsync every file under `folder`, so that its rename publishes data, not holes."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fsync_path(path)


def fsync_path(path: Path) -> None:
    """Flush a written file's data to disk (before a rename publishes it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@contextmanager
def entry_lock(
    path: str | os.PathLike[str], on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive lock on `path` (say, a cache entry) for the block, across processes:
    the lock file `path` + '.lock' beside it, locked with flock, released by the block's
    end or by the process's death (the kernel drops it; no stale lock survives a crash).
    `on_wait` is called once if another process holds it, before waiting for it.
    Where flock is missing (not POSIX) the block runs unlocked: writes stay atomic."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = Path(path)
    lock = lock.with_name(lock.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            yield  # a read-only shared cache: nothing will be written there either
            return
        raise write_error(lock, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
