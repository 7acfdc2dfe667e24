"""What a new user meets first (issue 12): a summary whose counts add up, progress on any
terminal and in a log, `scan FILE`, and distinct messages for paths a scan cannot take.

The scans run artnote.pipeline.scan with a stand-in annotator (no model: these tests are
about counting and paths); one test goes through the CLI with the tiny model."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from artnote import progress
from artnote.catalog import open_catalog
from artnote.config import Settings
from artnote.emotions import EMOTIONS
from artnote.errors import ArtnoteError, NotFoundError, NotScannableError
from artnote.pipeline import AnnotatorFactory, ScanSummary, check_scan_target, scan
from artnote.records import Annotation, Provenance

DISJOINT = ("annotated", "duplicates", "unchanged", "pending", "failed")
OLD_KEYS = {"run_id", "annotated", "unchanged", "duplicates", "failed", "missing"}
OLD_KEYS |= {"changed_during_scan", "seconds", "outcome", "stages", "images_per_s"}


class FakeAnnotator:
    """Annotates anything at once; `stop_after` batches, then Ctrl-C."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.loaded = SimpleNamespace(device="cpu")
        self.input_size = None
        self.stats: dict[str, float] = {}
        self.calls: list[int] = []
        self.stop_after = stop_after

    def load(self) -> FakeAnnotator:
        return self

    def annotate(self, images: list) -> list[Annotation]:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(len(images))
        prov = Provenance("fake", None, "idefics3", None, None, "1", "ph", {}, "torch", "cpu", 1)
        probs = {e: 1 / len(EMOTIONS) for e in EMOTIONS}
        return [Annotation("Alt.", "Desc.", probs, "awe", "Awe.", prov) for _ in images]


class NoModel(FakeAnnotator):
    def load(self) -> FakeAnnotator:
        raise AssertionError("nothing needs the model: it must not be loaded")


def _settings() -> Settings:
    settings = Settings()
    settings.scan.batch_size = 2
    settings.scan.decode_workers = 1
    return settings


def _paint(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16 + seed, 12), (seed * 20 % 256, 90, 200)).save(path)
    return path


def _collection(root: Path, n: int = 6) -> list[Path]:
    return [_paint(root / f"{i:02d}.png", i) for i in range(n)]


@pytest.fixture
def catalog(tmp_path):
    with open_catalog(tmp_path / "catalog.db") as cat:
        yield cat


def _scan(cat, path: Path, model: FakeAnnotator | None = None, **kw) -> ScanSummary:
    """scan() with `model` (a FakeAnnotator by default; NO_MODEL: loading it fails)."""
    model = model or FakeAnnotator()
    summary = scan(path, _settings(), cat, AnnotatorFactory(model.load), model_name="m", **kw)
    assert sum(getattr(summary, k) for k in DISJOINT) == summary.seen, summary
    assert OLD_KEYS <= set(summary.counts())
    return summary


def _counts(summary: ScanSummary) -> dict[str, int]:
    return {k: getattr(summary, k) for k in (*DISJOINT, "seen", "missing") if getattr(summary, k)}


def _statuses(cat, root: Path) -> dict[str, str]:
    cid = cat.ensure_collection(root)  # known already: read, not made
    return {rel: k.status for rel, k in cat.known_files(cid).items()}


# --- 1. the summary: disjoint counts that add up to the files seen ----------------------


def test_counts_add_up_on_a_first_scan_and_a_rescan(catalog, tmp_path):
    root = tmp_path / "art"
    paths = _collection(root)
    shutil.copy(paths[0], root / "twin.png")
    (root / "notes.png").write_text("not a picture")
    first = _scan(catalog, root)
    assert _counts(first) == {"annotated": 6, "duplicates": 1, "failed": 1, "seen": 8}
    again = _scan(catalog, root, NoModel())
    assert _counts(again) == {"unchanged": 7, "failed": 1, "seen": 8}
    assert len(again.failures) == 1 and again.some_failed
    paths[1].unlink()
    gone = _scan(catalog, root)
    assert _counts(gone) == {"unchanged": 6, "failed": 1, "seen": 7, "missing": 1}


def test_a_resumed_or_reannotated_file_is_annotated_not_unchanged(catalog, tmp_path):
    root = tmp_path / "art"
    paths = _collection(root)
    shutil.copy(paths[0], root / "twin.png")
    part = _scan(catalog, root, limit=2)
    assert _counts(part) == {"annotated": 2, "duplicates": 1, "pending": 4, "seen": 7}
    resumed = _scan(catalog, root)  # four are unchanged on disk, but only now annotated
    assert _counts(resumed) == {"annotated": 4, "unchanged": 3, "seen": 7}
    other = _scan(catalog, root, reannotate=True, adapter_hash="another adapter")
    assert _counts(other) == {"annotated": 6, "duplicates": 1, "seen": 7}
    forced = _scan(catalog, root, force=True)
    assert _counts(forced) == {"annotated": 6, "duplicates": 1, "seen": 7}


def test_an_interrupted_scan_counts_what_it_left_pending(catalog, tmp_path):
    root = tmp_path / "art"
    _collection(root)
    model = FakeAnnotator(stop_after=1)
    summary = _scan(catalog, root, model)
    assert summary.outcome == "interrupted"
    assert _counts(summary) == {"annotated": 2, "pending": 4, "seen": 6}
    assert "interrupted in " in summary.line() and "4 left pending" in summary.line()


def test_the_summary_line_shows_a_rate_only_for_work_done():
    noop = ScanSummary(run_id=1, unchanged=200, seen=200, seconds=0.34)
    assert noop.line() == "completed in 0.3 s, 200 files: 0 annotated, 200 unchanged, 0 failed"
    work = ScanSummary(run_id=2, annotated=8, unchanged=190, duplicates=1, failed=1)
    work.seen, work.seconds, work.missing = 200, 10.0, 3
    work.problems = [("/art/locked", "permission denied")]
    assert work.line() == (
        "completed in 10.0 s, 200 files: 8 annotated (0.80 images/s), 1 duplicates, "
        "190 unchanged, 1 failed; 3 missing; 1 folder unreadable"
    )
    one = ScanSummary(run_id=3, annotated=1, seen=1, seconds=2.0)
    assert one.line().startswith("completed in 2.0 s, 1 file: 1 annotated (0.50 images/s)")


# --- 3. scan FILE -----------------------------------------------------------------------


def test_a_file_is_annotated_alone_and_nothing_else_goes_missing(catalog, tmp_path):
    root = tmp_path / "art"
    paths = _collection(root, 3)
    (root / "bad.png").write_text("not a picture")
    _scan(catalog, root)
    paths[0].unlink()  # gone, but a scan of another file must not say so
    _paint(root / "unnamed.png", 7)  # new, but not what was asked for
    new = _paint(root / "room 2" / "new.png", 8)
    model = FakeAnnotator()
    summary = _scan(catalog, new, model)
    assert model.calls == [1]
    assert _counts(summary) == {"annotated": 1, "seen": 1}
    assert summary.failures == [] and not summary.some_failed  # bad.png is not this scan's
    assert catalog.collection_roots() == [str(root.resolve())]  # a file of that collection
    statuses = _statuses(catalog, root)
    assert statuses == {
        "00.png": "annotated",
        "01.png": "annotated",
        "02.png": "annotated",
        "bad.png": "failed",
        "room 2/new.png": "annotated",
    }
    assert _counts(_scan(catalog, new, NoModel())) == {"unchanged": 1, "seen": 1}
    forced = _scan(catalog, paths[1], force=True)
    assert _counts(forced) == {"annotated": 1, "seen": 1}


def test_a_file_outside_any_collection_makes_its_folder_one(catalog, tmp_path):
    elsewhere = _paint(tmp_path / "loose" / "found.png", 3)
    _paint(tmp_path / "loose" / "neighbour.png", 4)
    summary = _scan(catalog, elsewhere)
    assert _counts(summary) == {"annotated": 1, "seen": 1}
    assert catalog.collection_roots() == [str(elsewhere.parent.resolve())]
    assert _statuses(catalog, elsewhere.parent) == {"found.png": "annotated"}


def test_a_file_in_a_hidden_folder_is_not_filed_under_the_collection(catalog, tmp_path):
    """The collection's walk skips '.thumbs': under it, the file would be marked missing."""
    root = tmp_path / "art"
    _collection(root, 1)
    _scan(catalog, root)
    thumb = _paint(root / ".thumbs" / "t.png", 5)
    _scan(catalog, thumb)
    assert sorted(catalog.collection_roots()) == sorted(
        [str(root.resolve()), str(thumb.parent.resolve())]
    )
    assert _counts(_scan(catalog, root)) == {"unchanged": 1, "seen": 1}


def test_a_bad_file_fails_alone(catalog, tmp_path):
    bad = tmp_path / "art" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    summary = _scan(catalog, bad)
    assert _counts(summary) == {"failed": 1, "seen": 1}
    assert [Path(p).name for p, _ in summary.failures] == ["broken.png"]


# --- 4 and 5. paths a scan cannot take: distinct messages, nothing written ---------------


def test_paths_a_scan_cannot_take_get_distinct_messages_and_write_nothing(catalog, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a list")
    hidden = _paint(tmp_path / ".hidden.png", 1)
    broken = tmp_path / "link.png"
    broken.symlink_to(tmp_path / "nowhere.png")
    cases = [
        (tmp_path / "nowhere", NotFoundError, f"does not exist: {tmp_path / 'nowhere'}"),
        (broken, NotFoundError, f"does not exist (a broken symbolic link): {broken}"),
        (notes, NotScannableError, "not a folder or an image file"),
        (hidden, NotScannableError, "a hidden file"),
    ]
    for path, error, message in cases:
        with pytest.raises(error) as caught:
            check_scan_target(path)
        assert message in str(caught.value) and str(caught.value).endswith(str(path))
        with pytest.raises(error):
            _scan(catalog, path)
    assert catalog.collection_roots() == [] and catalog.status_counts()["runs"] == 0
    assert issubclass(NotScannableError, ArtnoteError)
    assert check_scan_target(tmp_path).kind == "folder"
    assert check_scan_target(_paint(tmp_path / "a.PNG", 2)).kind == "file"


# --- 2. progress: a bar on any terminal, lines in a log ---------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return 2


def _last_frame(text: str) -> str:
    return [f for f in text.replace("\n", "\r").split("\r") if f.strip()][-1]


@pytest.mark.parametrize(("columns", "width"), [(0, 79), (120, 119)])
def test_a_terminal_gets_a_bar_even_when_it_reports_no_width(monkeypatch, columns, width):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(
        progress.os, "get_terminal_size", lambda fd: os.terminal_size((columns, 24))
    )
    out = FakeTerminal()
    bar = progress.open_progress(8, out)
    assert isinstance(bar, progress.Bar)
    bar.update(4)
    bar.update(4)
    bar.close()
    frame = _last_frame(out.getvalue())
    assert frame.startswith("annotating: 100%|") and "8/8" in frame
    assert len(frame) == width
    drawn = frame.split("|")[1]
    assert len(drawn) > 20 and set(drawn) <= set("█#")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_plain_line_at_each_interval_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    lines = progress.open_progress(2000, out, interval=30, clock=clock)
    assert isinstance(lines, progress.Lines)
    for _ in range(9):  # a batch of 8 every 10 s: a line at 30, 60 and 90 s
        clock.now += 10
        lines.update(8)
    clock.now += 400  # one slow batch: one line after it, not the ten it held up
    lines.update(8)
    clock.now += 10
    lines.update(8)
    lines.close()
    lines.close()
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        "annotating: 2000 images to do",
        "annotating: 24/2000 images (1%), 0.80 images/s, ETA 41 min",
        "annotating: 48/2000 images (2%), 0.80 images/s, ETA 41 min",
        "annotating: 72/2000 images (3%), 0.80 images/s, ETA 40 min",
        "annotating: 80/2000 images (4%), 0.16 images/s, ETA 3 h 16 min",
        "annotating: 88/2000 images (4%), 0.18 images/s, 8 min in all",
    ]


def test_a_log_line_before_the_first_batch_has_no_eta():
    out, clock = io.StringIO(), Clock()
    lines = progress.Lines(10, out, interval=5, clock=clock)
    clock.now += 6
    lines.update(0)
    assert out.getvalue().splitlines()[-1] == "annotating: 0/10 images (0%), 6 s so far, no ETA yet"
    progress.Lines(1, out, clock=clock)
    assert out.getvalue().splitlines()[-1] == "annotating: 1 image to do"


def test_durations_read_as_a_person_would_say_them():
    assert [progress.duration(s) for s in (0, 45, 59.4, 90, 2160, 3600, 7500)] == [
        "0 s",
        "45 s",
        "59 s",
        "2 min",
        "36 min",
        "1 h 00 min",
        "2 h 05 min",
    ]


def test_scan_takes_a_progress_factory(catalog, tmp_path):
    root = tmp_path / "art"
    _collection(root, 5)
    seen: list[tuple[str, int]] = []

    class Recorder:
        def update(self, n: int = 1) -> None:
            seen.append(("update", n))

        def close(self) -> None:
            seen.append(("close", 0))

    def factory(total: int) -> Recorder:
        seen.append(("total", total))
        return Recorder()

    _scan(catalog, root, progress=factory)
    assert seen == [("total", 5), ("update", 2), ("update", 2), ("update", 1), ("close", 0)]
    seen.clear()
    _scan(catalog, root, progress=factory)  # nothing to annotate: no reporter at all
    assert seen == []


# --- through the CLI, with the tiny model -----------------------------------------------


@pytest.fixture
def cli(tiny_models, onnx_cache, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from artnote.cli import app

    monkeypatch.setenv("ARTNOTE_CATALOG", str(tmp_path / "catalog.db"))
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(onnx_cache))
    monkeypatch.setenv("ARTNOTE_MODEL", str(tiny_models["smolvlm"]))
    for field in ("DESCRIPTION", "ALT_TEXT", "EXPLANATION"):
        monkeypatch.setenv(f"ARTNOTE_GENERATION_{field}_TOKENS", "4")

    def run(*args: object, code: int = 0):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


def test_cli_scans_one_file_and_names_a_missing_path(cli, art_copy):
    one = sorted(art_copy.iterdir())[0]
    cli("scan", one, "--quiet")
    rows = cli("export", "csv").stdout.splitlines()
    assert len(rows) == 2 and one.name in rows[1]
    result = cli("scan", art_copy / "nowhere", code=1)
    assert result.stderr.strip() == f"Error: does not exist: {art_copy / 'nowhere'}"
    result = cli("scan", art_copy / "nowhere.txt", code=1)
    assert "does not exist" in result.stderr
    notes = art_copy / "notes.txt"
    notes.write_text("a list")
    result = cli("scan", notes, code=1)
    assert "not a folder or an image file" in result.stderr and str(notes) in result.stderr
