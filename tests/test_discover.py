"""Discovery: the walk's rules, problems that do not stop it, incremental planning, hashing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from artnote import discover
from artnote.catalog.rows import KnownFile
from artnote.discover import (
    ImageFile,
    ScanProblem,
    discover_images,
    hash_file,
    hash_files,
    plan_scan,
    scan_folder,
    sha256_file,
)
from artnote.errors import ImageError, NotFoundError


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def files_and_problems(root: Path, **kw: object) -> tuple[list[ImageFile], list[ScanProblem]]:
    found = list(discover_images(root, **kw))  # type: ignore[arg-type]
    return (
        [f for f in found if isinstance(f, ImageFile)],
        [p for p in found if isinstance(p, ScanProblem)],
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "collection"
    touch(root / "b.jpg", b"bbb")
    touch(root / "A.JPG", b"a")
    touch(root / "scan.Tiff")
    touch(root / "notes.txt")
    touch(root / "noext")
    touch(root / ".hidden.jpg")
    touch(root / ".thumbs" / "t.jpg")
    touch(root / "prints" / "1831" / "wave.png")
    touch(root / "prints" / "écru façade.webp")
    (root / "empty").mkdir()
    (root / "folder.jpg").mkdir()  # a folder with an image-like name is walked, not listed
    touch(root / "folder.jpg" / "inside.gif")
    return root


def test_walk_rules(tree: Path) -> None:
    files, problems = files_and_problems(tree)
    assert problems == []
    assert [f.relpath for f in files] == [
        "A.JPG",
        "b.jpg",
        "scan.Tiff",
        "folder.jpg/inside.gif",
        "prints/écru façade.webp",
        "prints/1831/wave.png",
    ]
    b = files[1]
    st = os.stat(tree / "b.jpg")
    assert (b.abspath, b.size, b.mtime_ns) == (str(tree / "b.jpg"), 3, st.st_mtime_ns)


def test_extensions_are_configurable(tree: Path) -> None:
    files, _ = files_and_problems(tree, extensions=[".TIF", "tiff", "PNG"])
    assert [f.relpath for f in files] == ["scan.Tiff", "prints/1831/wave.png"]


def test_symlinks_are_followed_without_loops(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = touch(tmp_path / "elsewhere" / "outside.jpg")
    touch(root / "real" / "a.jpg")
    (root / "real" / "loop").symlink_to(root)  # back to the top
    (root / "real" / "self").symlink_to(root / "real")
    (root / "zlinked").symlink_to(root / "real")  # the same folder under a second name
    (root / "out.jpg").symlink_to(outside)
    (root / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "broken_notimage").symlink_to(tmp_path / "nowhere")
    files, problems = files_and_problems(root)
    assert [f.relpath for f in files] == ["out.jpg", "real/a.jpg"]
    assert files[0].size == 1
    assert [(p.relpath, p.reason) for p in problems] == [("broken.jpg", "broken symbolic link")]


def test_unreadable_folder_is_a_problem_not_an_end(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = discover._open_dir

    def refuse(path: str) -> int | str:
        if path.endswith("1831"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    monkeypatch.setattr(discover, "_open_dir", refuse)
    files, problems = files_and_problems(tree)
    assert "prints/écru façade.webp" in [f.relpath for f in files]
    assert [(p.relpath, p.reason, p.is_dir) for p in problems] == [
        ("prints/1831", "permission denied", True)
    ]
    plan = scan_folder(tree, {})
    assert plan.unreadable_dirs == ["prints/1831"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_folder_for_real(tree: Path) -> None:
    locked = tree / "prints" / "1831"
    locked.chmod(0)
    try:
        _, problems = files_and_problems(tree)
    finally:
        locked.chmod(0o755)
    assert [(p.relpath, p.reason) for p in problems] == [("prints/1831", "permission denied")]


def test_names_that_are_not_utf8(tmp_path: Path) -> None:
    root = tmp_path / "root"
    touch(root / "ok.jpg")
    broot = os.fsencode(root)
    try:
        with open(broot + b"/caf\xe9.jpg", "wb") as f:
            f.write(b"x")
        os.mkdir(broot + b"/dossier \xff")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with open(broot + b"/dossier \xff/in.jpg", "wb") as f:
        f.write(b"x")
    files, problems = files_and_problems(root)
    assert [f.relpath for f in files] == ["ok.jpg"]
    assert sorted((p.relpath, p.reason) for p in problems) == [
        ("caf\\xe9.jpg", "file name is not valid UTF-8"),
        ("dossier \\xff", "folder name is not valid UTF-8"),
    ]
    for p in problems:
        p.relpath.encode("utf-8")  # printable and storable


def test_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="folder not found"):
        list(discover_images(tmp_path / "nope"))
    with pytest.raises(NotFoundError, match="not a folder"):
        list(discover_images(touch(tmp_path / "a.jpg")))


def test_plan_scan_skips_unchanged_files(tree: Path) -> None:
    first = list(discover_images(tree))
    by_path = {f.relpath: f for f in first if isinstance(f, ImageFile)}
    known = {
        rel: KnownFile(i, f.size, f.mtime_ns, "0" * 64, "annotated")
        for i, (rel, f) in enumerate(by_path.items(), start=1)
    }
    known["scan.Tiff"] = KnownFile(99, 1, by_path["scan.Tiff"].mtime_ns, None, "failed")  # unhashed
    del known["A.JPG"]  # new
    os.utime(tree / "b.jpg", ns=(1, by_path["b.jpg"].mtime_ns + 1_000_000))  # touched
    plan = plan_scan(discover_images(tree), known)
    assert sorted(f.relpath for f in plan.to_hash) == ["A.JPG", "b.jpg", "scan.Tiff"]
    still = ("folder.jpg/inside.gif", "prints/écru façade.webp", "prints/1831/wave.png")
    assert sorted(plan.unchanged) == sorted(known[r].image_id for r in still)
    assert plan.problems == []
    fast = scan_folder(tree, known)
    assert (fast.unchanged, fast.to_hash, fast.problems) == (
        plan.unchanged,
        plan.to_hash,
        plan.problems,
    )


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 12345)  # several 1 MiB chunks and a tail
    path = touch(tmp_path / "big.tif", data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(touch(tmp_path / "empty.jpg", b"")) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(ImageError, match="file disappeared"):
        sha256_file(tmp_path / "gone.jpg")


def test_hash_files_keeps_order_and_reports_errors(tmp_path: Path) -> None:
    paths = [touch(tmp_path / f"{i}.jpg", bytes([i]) * (i + 1)) for i in range(12)]
    files = [ImageFile(p.name, str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    paths[5].unlink()
    states = list(hash_files(files, workers=4))
    assert [s.relpath for s in states] == [f.relpath for f in files]
    assert states[0].sha256 == hashlib.sha256(b"\x00").hexdigest()
    assert (states[5].sha256, states[5].error) == (None, "file disappeared")
    assert all(s.error is None for i, s in enumerate(states) if i != 5)
    assert hash_file(files[3]) == states[3]
    assert list(hash_files(files[:2], workers=1)) == states[:2]
