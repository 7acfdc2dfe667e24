"""Find the images under a folder, fast enough to rescan a million files every night.

A rescan only stats files: a file whose (relpath, size, mtime_ns) is what the
catalog remembers is never opened again (`scan_folder`, or `plan_scan` over
`discover_images`). New and changed files are hashed (`hash_files`), and the
hash decides whether the model must see them.

Rules of the walk:
- extensions are matched case-insensitively ("JPG" is "jpg");
- names starting with '.' (files and folders) are skipped: editors, thumbnails, trash;
- symbolic links are followed, and every folder is walked once, whichever
  links lead to it, so link loops end and linked folders are not counted twice;
- what cannot be read is reported as a `ScanProblem` and the walk goes on:
  unreadable folders, broken links, files that vanish mid-scan, and names that
  are not valid UTF-8 (the catalog stores paths as text, so such files are
  reported, shown with their odd bytes escaped, instead of being catalogued).
Paths in results are relative to the root, with '/' separators, in sorted order.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from stat import S_ISREG
from typing import NamedTuple

from artnote.catalog.rows import FileState, KnownFile
from artnote.config import DEFAULT_EXTENSIONS
from artnote.errors import ImageError, NotFoundError

CHUNK_SIZE = 1 << 20  # 1 MiB


class ImageFile(NamedTuple):
    """A file with an image extension, as the walk saw it (stat only, never opened)."""

    relpath: str  # posix style, relative to the root
    abspath: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """Something the walk could not read; `relpath` is printable even for odd names."""

    relpath: str
    abspath: str
    reason: str
    is_dir: bool = False


@dataclass
class ScanPlan:
    """What a rescan must do, by comparing the walk with the catalog."""

    unchanged: list[int] = field(default_factory=list)  # image ids: only mark as seen
    to_hash: list[ImageFile] = field(default_factory=list)  # new or changed: hash, record
    problems: list[ScanProblem] = field(default_factory=list)

    @property
    def unreadable_dirs(self) -> list[str]:
        """Folders whose files must not be marked missing: they may still be there."""
        return [p.relpath for p in self.problems if p.is_dir]


def discover_images(
    root: str | Path, extensions: Iterable[str] = DEFAULT_EXTENSIONS
) -> Iterator[ImageFile | ScanProblem]:
    """Walk `root` recursively, yielding image files and problems (see the module doc)."""
    for item in _walk(_check_root(root), _suffixes(extensions)):
        if isinstance(item, ScanProblem):
            yield item
            continue
        prefix, base, files = item
        for name, size, mtime_ns in files:
            yield ImageFile(prefix + name, base + name, size, mtime_ns)


def plan_scan(
    entries: Iterable[ImageFile | ScanProblem], known: Mapping[str, KnownFile]
) -> ScanPlan:
    """Split a walk into unchanged files (same size and mtime_ns, already hashed) and the rest."""
    plan = ScanPlan()
    for entry in entries:
        if isinstance(entry, ScanProblem):
            plan.problems.append(entry)
            continue
        old = known.get(entry.relpath)
        if (
            old is not None
            and old.sha256 is not None
            and old.size == entry.size
            and old.mtime_ns == entry.mtime_ns
        ):
            plan.unchanged.append(old.image_id)
        else:
            plan.to_hash.append(entry)
    return plan


def scan_folder(
    root: str | Path, known: Mapping[str, KnownFile], extensions: Iterable[str] = DEFAULT_EXTENSIONS
) -> ScanPlan:
    """`plan_scan(discover_images(root, extensions), known)`, without a record per unchanged file.

    The rescan fast path: for a folder of unchanged files, the time goes to the
    one stat per file and little else.
    """
    plan = ScanPlan()
    unchanged, to_hash, get = plan.unchanged, plan.to_hash, known.get
    for item in _walk(_check_root(root), _suffixes(extensions)):
        if isinstance(item, ScanProblem):
            plan.problems.append(item)
            continue
        prefix, base, files = item
        for name, size, mtime_ns in files:
            rel = prefix + name
            old = get(rel)
            if old is not None and old.size == size and old.mtime_ns == mtime_ns and old.sha256:
                unchanged.append(old.image_id)
            else:
                to_hash.append(ImageFile(rel, base + name, size, mtime_ns))
    return plan


# One folder's image files: (relpath prefix, absolute path prefix, [(name, size, mtime_ns)]).
_Batch = tuple[str, str, list[tuple[str, int, int]]]


def _walk(top: str, wanted: frozenset[str]) -> Iterator[_Batch | ScanProblem]:
    info = os.stat(top)
    visited = {(info.st_dev, info.st_ino)}
    stack: list[tuple[str, str]] = [("", top)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        base = abs_dir if abs_dir.endswith(os.sep) else abs_dir + os.sep
        try:
            handle = _open_dir(abs_dir)
        except OSError as exc:
            yield ScanProblem(rel_dir or ".", abs_dir, _reason(exc, "folder"), is_dir=True)
            continue
        try:
            files, subdirs, problems = _read_dir(handle, prefix, base, wanted, visited)
        except OSError as exc:
            yield ScanProblem(rel_dir or ".", abs_dir, _reason(exc, "folder"), is_dir=True)
            continue
        finally:
            if isinstance(handle, int):
                os.close(handle)
        yield from problems
        if files:
            yield prefix, base, files
        stack.extend(reversed(subdirs))  # depth first, in name order


def _open_dir(path: str) -> int | str:
    """A descriptor where the platform allows (stat by name relative to it is cheaper)."""
    if _SCANDIR_FD:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY)
    return path


_SCANDIR_FD = os.scandir in os.supports_fd
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _read_dir(
    handle: int | str,
    prefix: str,
    base: str,
    wanted: frozenset[str],
    visited: set[tuple[int, int]],
) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]], list[ScanProblem]]:
    # The hot loop of a rescan: keep it free of calls that are not needed.
    with os.scandir(handle) as it:
        entries = sorted(it, key=_BY_NAME)
    files: list[tuple[str, int, int]] = []
    subdirs: list[tuple[str, str]] = []
    problems: list[ScanProblem] = []
    for entry in entries:
        name = entry.name
        if name[0] == ".":
            continue
        try:
            is_dir = entry.is_dir()  # follows links; free (from the entry) for plain folders
        except OSError:
            is_dir = False
        if is_dir:
            if not (name.isascii() or _is_utf8(name)):
                problems.append(_odd_name(prefix + name, base + name, "folder"))
                continue
            try:
                info = entry.stat()  # follows links: the folder itself, wherever it lives
            except OSError as exc:
                problems.append(
                    ScanProblem(prefix + name, base + name, _reason(exc, "folder"), True)
                )
                continue
            key = (info.st_dev, info.st_ino)
            if key not in visited:  # else a link loop, or a folder walked under another name
                visited.add(key)
                subdirs.append((prefix + name, base + name))
            continue
        dot = name.rfind(".")
        if dot < 0 or name[dot:].lower() not in wanted:
            continue
        if not (name.isascii() or _is_utf8(name)):
            problems.append(_odd_name(prefix + name, base + name, "file"))
            continue
        try:
            info = entry.stat()  # the one system call per file
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                reason = "symbolic link loop"
            elif entry.is_symlink():
                reason = "broken symbolic link"
            else:
                reason = _reason(exc, "file")
            problems.append(ScanProblem(prefix + name, base + name, reason))
            continue
        if S_ISREG(info.st_mode):
            files.append((name, info.st_size, info.st_mtime_ns))
    return files, subdirs, problems


_BY_NAME = attrgetter("name")


def _suffixes(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset("." + e.lower().lstrip(".") for e in extensions)


def _odd_name(rel: str, path: str, what: str) -> ScanProblem:
    return ScanProblem(
        _printable(rel), _printable(path), f"{what} name is not valid UTF-8", what == "folder"
    )


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks; ImageError with the reason."""
    try:
        with open(path, "rb") as f:
            return _sha256_of(f)
    except OSError as exc:
        raise ImageError(_reason(exc, "file")) from exc


def hash_file(file: ImageFile) -> FileState:
    """Hash one file; the size and mtime recorded are those of the bytes actually read."""
    try:
        with open(file.abspath, "rb") as f:
            before = os.fstat(f.fileno())
            digest = _sha256_of(f)
            after = os.fstat(f.fileno())
    except OSError as exc:
        return FileState(file.relpath, file.size, file.mtime_ns, None, _reason(exc, "file"))
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        # Still being written: record it as changed-but-unhashed so the next scan retries.
        return FileState(
            file.relpath, after.st_size, after.st_mtime_ns, None, "file changed while being read"
        )
    return FileState(file.relpath, after.st_size, after.st_mtime_ns, digest)


def hash_files(files: Iterable[ImageFile], workers: int = 4) -> Iterator[FileState]:
    """Hash files in threads (hashlib releases the GIL), yielding results in input order."""
    if workers <= 1:
        yield from map(hash_file, files)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artnote-hash") as pool:
        yield from pool.map(hash_file, files)


def _sha256_of(f: object) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    readinto = f.readinto  # type: ignore[attr-defined]
    while n := readinto(buffer):
        digest.update(view[:n])
    return digest.hexdigest()


def _check_root(root: str | Path) -> str:
    path = Path(root).expanduser()
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise NotFoundError(f"folder not found: {path}") from None
    if not resolved.is_dir():
        raise NotFoundError(f"not a folder: {path}")
    return str(resolved)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir decoded undecodable bytes as surrogates
        return False
    return True


def _printable(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _reason(exc: OSError, what: str) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{what} disappeared"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return exc.strerror or str(exc)
