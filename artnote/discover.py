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

What a scan may be given (`check_target`): a folder, walked as above, or one image
file, looked at by the same rules (`scan_file`) and nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Literal, NamedTuple

from artnote.catalog.rows import FileState, KnownFile
from artnote.config import DEFAULT_EXTENSIONS
from artnote.errors import ArtnoteError, ImageError, NotFoundError, NotScannableError

CHUNK_SIZE = 1 << 20  # 1 MiB


@dataclass(frozen=True, slots=True)
class ScanTarget:
    """What a scan was given, checked: a folder, or one image file in `folder`."""

    path: Path  # as given (with ~ expanded), for messages
    folder: Path  # resolved: the folder to walk, or the one that holds the file
    file: str | None = None  # for a scan of one file: its path in `folder`, '/'-separated

    @property
    def kind(self) -> Literal["folder", "file"]:
        return "folder" if self.file is None else "file"


def check_target(path: str | Path, extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> ScanTarget:
    """Check what a scan was given before anything is written (NotFoundError,
    NotScannableError): an existing folder, or a file the walk would take."""
    given = Path(path).expanduser()
    try:
        info = os.stat(given)
    except OSError as exc:
        raise _target_error(given, exc) from None
    if S_ISDIR(info.st_mode):
        return ScanTarget(given, given.resolve())
    name = given.name
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    wanted = _suffixes(extensions)
    if not S_ISREG(info.st_mode) or suffix not in wanted:
        known = ", ".join(sorted(wanted))
        raise NotScannableError(f"not a folder or an image file ({known}): {given}")
    if name.startswith("."):  # the walk skips it: a folder scan would mark it missing
        raise NotScannableError(f"a hidden file (its name starts with '.'), never scanned: {given}")
    # The link's own name, in the folder that holds the link: as a walk of that folder sees it.
    return ScanTarget(given, given.parent.resolve(), name)


def in_collection(target: ScanTarget, roots: Iterable[str]) -> ScanTarget:
    """A file under the root of a catalogued collection, as a file of that collection (the
    deepest, if they nest): as one of a collection of its own folder, it would be
    catalogued twice, and exported twice, once the larger collection is scanned again."""
    if target.file is None:
        return target
    best: tuple[Path, tuple[str, ...]] | None = None
    for root in map(Path, roots):
        try:
            parts = target.folder.relative_to(root).parts
        except ValueError:
            continue
        if any(p.startswith(".") for p in parts):
            continue  # that collection's walk skips this folder: it would mark the file missing
        if best is None or len(root.parts) > len(best[0].parts):
            best = (root, parts)
    if best is None:
        return target
    return ScanTarget(target.path, best[0], "/".join((*best[1], target.file)))


def _target_error(path: Path, exc: OSError) -> ArtnoteError:
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        if os.path.islink(path):
            return NotFoundError(f"does not exist (a broken symbolic link): {path}")
        return NotFoundError(f"does not exist: {path}")
    if isinstance(exc, PermissionError):
        return NotScannableError(f"cannot be read (permission denied): {path}")
    if exc.errno == errno.ELOOP:
        return NotScannableError(f"cannot be read (symbolic link loop): {path}")
    return NotScannableError(f"cannot be read ({exc.strerror or exc}): {path}")


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


class Walked:
    """The files a scan's walk saw, by image id (it fills `known`, `unchanged`, `others`
    and `seen`), and what became of each (`tally`)."""

    def __init__(self) -> None:
        self.known: Mapping[str, KnownFile] = {}  # the catalog before the scan
        self.unchanged: set[int] = set()  # unchanged on disk
        self.others: set[int] = set()  # new, changed or unreadable (new ones once recorded)
        self.seen: int | None = None  # how many files; None until the walk is done
        # How many of the files seen had each status, where the catalog counted them instead
        # of listing them (a rescan that changed nothing: `known` is then left empty).
        self.before: Mapping[str, int] | None = None

    def saw(self, image_id: int) -> bool:
        return image_id in self.unchanged or image_id in self.others

    def tally(self, now: Mapping[str, KnownFile], fed: set[str], annotated: int) -> dict[str, int]:
        """Each file seen in exactly one count, by its status `now` (after the scan): the
        ScanSummary's seen, annotated + duplicates + unchanged + pending + failed. `fed`:
        the contents the model annotated in the scan; `annotated`: how many files it fed."""
        seen = self.seen or 0
        if now is self.known and not self.others and not fed:
            # Nothing recorded or annotated since the walk (a rescan of unchanged files): each
            # file seen is counted by the status it had before, which is its status now.
            by_status = self.before
            if by_status is None:
                by_status = Counter(k.status for k in now.values() if k.image_id in self.unchanged)
            counted, failed = sum(by_status.values()), by_status.get("failed", 0)
            unchanged, done = by_status.get("annotated", 0), 0
            pending = counted - failed - unchanged
        else:
            counted = failed = pending = unchanged = done = 0
            for rel, k in now.items():
                if k.image_id in self.unchanged:
                    before: str | None = self.known[rel].status
                elif k.image_id in self.others:
                    before = None
                else:
                    continue
                counted += 1
                if k.status == "failed":
                    failed += 1
                elif k.status != "annotated":
                    pending += 1
                elif before in ("annotated", "missing") and k.sha256 not in fed:
                    unchanged += 1  # annotated before, and its content not again now
                else:
                    done += 1  # fed to the model, or a twin of a content annotated before or now
        return {
            "seen": seen,
            "failed": failed,
            "unchanged": unchanged,
            "pending": pending + seen - counted,  # not recorded yet when the scan stopped
            "duplicates": max(0, done - annotated),
        }


def discover_images(
    root: str | Path, extensions: Iterable[str] = DEFAULT_EXTENSIONS
) -> Iterator[ImageFile | ScanProblem]:
    """Walk `root` recursively, yielding image files and problems (see the module doc)."""
    for item in _walk(_check_root(root), _suffixes(extensions)):
        if isinstance(item, ScanProblem):
            yield item
            continue
        prefix, base, files = item
        for rel, size, mtime_ns in files:
            yield ImageFile(rel, base + rel[len(prefix) :], size, mtime_ns)


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
    return plan_folder(root, _hashed_files(known), extensions)


def plan_folder(
    root: str | Path,
    hashed: Mapping[tuple[str, int, int], int],
    extensions: Iterable[str] = DEFAULT_EXTENSIONS,
) -> ScanPlan:
    """scan_folder, given the known files as `hashed`: (relpath, size, mtime_ns) -> image id
    of each file that was hashed (Catalog.hashed_files, or those of `known`).

    A folder's files are looked up all at once, by those three: no Python loop runs
    per file unless one of them is new or changed.
    """
    plan = ScanPlan()
    unchanged, to_hash = plan.unchanged, plan.to_hash
    for item in _walk(_check_root(root), _suffixes(extensions)):
        if isinstance(item, ScanProblem):
            plan.problems.append(item)
            continue
        prefix, base, files = item
        ids = list(map(hashed.get, files))
        if None not in ids:
            unchanged.extend(ids)
            continue
        for (rel, size, mtime_ns), image_id in zip(files, ids, strict=True):
            if image_id is not None:
                unchanged.append(image_id)
            else:
                to_hash.append(ImageFile(rel, base + rel[len(prefix) :], size, mtime_ns))
    return plan


def replan(plan: ScanPlan, known: Mapping[str, KnownFile]) -> ScanPlan:
    """A plan made from fewer known files (Catalog.hashed_files leaves out the missing
    ones), checked against all of them: a file to hash that `known` has, unchanged (a
    missing file come back), is unchanged after all."""
    to_hash = []
    for file in plan.to_hash:
        old = known.get(file.relpath)
        if old is not None and _same(old, file.size, file.mtime_ns):
            plan.unchanged.append(old.image_id)
        else:
            to_hash.append(file)
    plan.to_hash = to_hash
    return plan


def _same(old: KnownFile, size: int, mtime_ns: int) -> bool:
    """Whether a file found with this size and mtime is the known file `old`, unchanged."""
    return old.size == size and old.mtime_ns == mtime_ns and bool(old.sha256)


def _hashed_files(known: Mapping[str, KnownFile]) -> dict[tuple[str, int, int], int]:
    """(relpath, size, mtime_ns) -> image id of the known files that were hashed: a file the
    walk finds with the same three is unchanged."""
    return {(rel, k.size, k.mtime_ns): k.image_id for rel, k in known.items() if k.sha256}


def scan_file(root: str | Path, relpath: str, known: Mapping[str, KnownFile]) -> ScanPlan:
    """The plan for one file of the collection at `root` (`check_target` chose it), by the
    walk's rules; no other file is looked at, so none is seen, changed or missing."""
    plan = ScanPlan()
    abspath = os.path.join(root, *relpath.split("/"))
    if not _is_utf8(relpath):
        plan.problems.append(_odd_name(relpath, abspath, "file"))
        return plan
    try:
        info = os.stat(abspath)
    except OSError as exc:
        plan.problems.append(ScanProblem(relpath, abspath, _file_reason(exc, abspath)))
        return plan
    if not S_ISREG(info.st_mode):
        return plan  # replaced by a folder since it was checked: nothing to scan
    old = known.get(relpath)
    size, mtime_ns = info.st_size, info.st_mtime_ns
    if old is not None and _same(old, size, mtime_ns):
        plan.unchanged.append(old.image_id)
    else:
        plan.to_hash.append(ImageFile(relpath, abspath, size, mtime_ns))
    return plan


# One folder's image files: (relpath prefix, absolute path prefix, [(relpath, size, mtime_ns)]).
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
            problems.append(ScanProblem(prefix + name, base + name, _file_reason(exc, entry)))
            continue
        if S_ISREG(info.st_mode):
            files.append((prefix + name, info.st_size, info.st_mtime_ns))
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


def _file_reason(exc: OSError, entry: os.DirEntry | str) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if entry.is_symlink() if isinstance(entry, os.DirEntry) else os.path.islink(entry):
        return "broken symbolic link"
    return _reason(exc, "file")


def _reason(exc: OSError, what: str) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{what} disappeared"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return exc.strerror or str(exc)
