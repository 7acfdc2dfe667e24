"""artnote.files on its own: a write publishes the whole new file or leaves the old one,
permissions come from the umask (or `like`), folders are swapped whole, entry_lock keeps
two processes apart, and a full disk is one line naming the path and the space left."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from artnote.errors import ArtnoteError
from artnote.files import (
    DiskFullError,
    WriteError,
    atomic_folder,
    atomic_write,
    entry_lock,
    write_bytes,
    write_error,
    write_text,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def full_disk() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_replaces_the_file_whole(tmp_path):
    dest = tmp_path / "out.txt"
    write_text(dest, "old\n")
    with atomic_write(dest, "w", encoding="utf-8") as fh:
        fh.write("new ")
        assert dest.read_text() == "old\n"  # nothing under the real name until the end
        fh.write("text\n")
    assert dest.read_text() == "new text\n"
    write_bytes(dest, b"\x00\x01")
    assert dest.read_bytes() == b"\x00\x01"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("existed", [True, False], ids=["replacing", "new"])
def test_a_failed_write_leaves_the_file_as_it_was(tmp_path, existed):
    dest = tmp_path / "out.csv"
    if existed:
        dest.write_text("previous\n")
    with pytest.raises(DiskFullError) as info, atomic_write(dest, "w") as fh:
        fh.write("half a fi")
        raise full_disk()  # as the write of the rest would
    message = str(info.value)
    assert str(dest) in message and " free on its volume" in message and "\n" not in message
    assert (dest.read_text() if existed else dest.exists()) == ("previous\n" if existed else False)
    assert leftovers(tmp_path) == []
    with pytest.raises(KeyError), atomic_write(dest, "wb") as fh:  # any other failure too
        fh.write(b"x")
        raise KeyError("boom")
    assert leftovers(tmp_path) == [] and dest.exists() == existed


def test_other_os_errors_pass_through_unchanged(tmp_path):
    dest = tmp_path / "out.txt"
    with pytest.raises(OSError) as info, atomic_write(dest) as fh:
        fh.write("x")
        raise OSError(errno.EIO, "I/O error")
    assert not isinstance(info.value, ArtnoteError) and info.value.errno == errno.EIO
    assert not dest.exists() and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        atomic_write(dest, "a").__enter__()


def test_permissions_follow_the_umask_or_like(tmp_path):
    previous = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "a")
        model = tmp_path / "model.bin"
        model.write_bytes(b"m")
        model.chmod(0o604)
        with atomic_write(tmp_path / "b.bin", "wb", like=model) as fh:
            fh.write(b"b")
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o604
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700


def test_atomic_folder_publishes_whole_and_replaces_only_when_asked(tmp_path):
    dest = tmp_path / "step-3"
    with atomic_folder(dest) as tmp:
        (tmp / "a.bin").write_bytes(b"first")
        assert not dest.exists() and tmp.parent == tmp_path and tmp.name.startswith(".")
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]
    with pytest.raises(WriteError, match="exists already"), atomic_folder(dest) as tmp:
        (tmp / "b.bin").write_bytes(b"second")
    with pytest.raises(DiskFullError, match="step-3"), atomic_folder(dest, replace=True) as tmp:
        (tmp / "b.bin").write_bytes(b"half")
        raise full_disk()
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]  # as it was
    with atomic_folder(dest, replace=True) as tmp:
        (tmp / "b.bin").write_bytes(b"second")
    assert sorted(p.name for p in dest.iterdir()) == ["b.bin"]
    assert leftovers(tmp_path) == []  # neither the temporary nor the old folder stays


HOLDER = """
import sys
from artnote.files import entry_lock
with entry_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_entry_lock_keeps_a_second_process_out_until_the_first_is_done(tmp_path):
    entry = tmp_path / "entry"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(entry)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        waited, entered, events = threading.Event(), threading.Event(), []

        def second() -> None:
            with entry_lock(entry, on_wait=lambda: (events.append("wait"), waited.set())):
                events.append("in")
                entered.set()

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        assert waited.wait(60), "entry_lock did not see the other process's lock"
        assert events == ["wait"]  # told to wait, and waiting: not inside
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(60) == 0
        assert entered.wait(60) and events == ["wait", "in"]
        thread.join(60)
    finally:
        holder.kill()
        holder.wait()
    with entry_lock(entry, on_wait=lambda: pytest.fail("nobody holds it now")):
        pass


def test_write_error_says_what_and_where_in_one_line(tmp_path):
    missing = tmp_path / "not" / "yet" / "there.csv"
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        error = write_error(missing, OSError(code, os.strerror(code)))
        assert isinstance(error, DiskFullError) and isinstance(error, ArtnoteError)
        message = str(error)
        assert message.startswith(f"no space left to write {missing} (")
        assert " free on its volume)" in message and "unknown" not in message  # walked up
        assert "\n" not in message
    denied = write_error(missing, PermissionError(errno.EACCES, "Permission denied"))
    assert type(denied) is WriteError
    assert str(denied) == f"cannot write {missing}: Permission denied"
