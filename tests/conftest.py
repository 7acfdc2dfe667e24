"""Shared fixtures: tiny random models built once per session, the sample paintings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def art_dir() -> Path:
    """The eight sample paintings the tests carry (tests/fixtures/art), or $ARTNOTE_ART_DIR."""
    env = os.environ.get("ARTNOTE_ART_DIR")
    return Path(env) if env else ROOT / "tests" / "fixtures" / "art"


@pytest.fixture(scope="session")
def art_paths() -> list[Path]:
    paths = sorted(art_dir().glob("*.jpg"))
    if len(paths) < 8:
        pytest.fail(f"the sample paintings are missing from {art_dir()} (set ARTNOTE_ART_DIR)")
    return paths


@pytest.fixture(scope="session")
def art_images(art_paths):
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in art_paths]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{'llava': folder, 'smolvlm': folder, 'artgpt4': folder}: tiny random models, built
    offline once."""
    from artnote.model.tiny import build_tiny_model

    base = tmp_path_factory.mktemp("tiny")
    return {f: build_tiny_model(base / f, f) for f in ("llava", "smolvlm", "artgpt4")}


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """One ONNX export cache for the CLI tests: each tiny model is exported once per session."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def art_copy(tmp_path, art_paths) -> Path:
    """A writable copy of the eight paintings."""
    folder = tmp_path / "collection"
    folder.mkdir()
    for p in art_paths:
        shutil.copy2(p, folder / p.name)
    return folder


TINY_PROVENANCE = ("tiny-model", "abc123", "idefics3", None, None, "1", "ph", {}, "onnx", "cpu", 1)


def annotate_files(db, folder: Path, files: dict[str, dict[str, float]]) -> dict[str, int]:
    """Record and annotate files without a model (relpath under folder -> emotion
    distribution): alt text "A painting by WHO.", where WHO is the file name up to its
    first "_". Returns relpath -> image id."""
    import hashlib

    from artnote.catalog import FileState, open_catalog
    from artnote.emotions import EMOTIONS
    from artnote.records import Annotation, Provenance

    with open_catalog(db) as cat:
        cid = cat.ensure_collection(folder)
        run = cat.start_run({}, "tiny-model", None)
        states = []
        for r in files:
            stat = (folder / r).stat()
            sha = hashlib.sha256((folder / r).read_bytes()).hexdigest()
            states.append(FileState(r, stat.st_size, stat.st_mtime_ns, sha))
        ids = cat.record_files(cid, run, states)
        items = []
        for relpath, dist in files.items():
            who = Path(relpath).stem.split("_")[0]
            top = max(EMOTIONS, key=lambda e: dist[e])
            texts = (f"A painting by {who}.", f"Description of the {who} painting.")
            why = f"{top} because of {who}."
            annotation = Annotation(*texts, dist, top, why, Provenance(*TINY_PROVENANCE))
            items.append((ids[relpath], annotation))
        cat.add_annotations(run, items)
        cat.finish_run(run, "completed", {})
    return ids


def peaked(k: int, peak: float) -> dict[str, float]:
    """An emotion distribution with `peak` on label k (mod 9), the rest shared evenly."""
    from artnote.emotions import EMOTIONS

    return {e: peak if j == k % 9 else (1 - peak) / 8 for j, e in enumerate(EMOTIONS)}


@pytest.fixture
def annotated_art(tmp_path, art_paths) -> tuple[Path, Path, dict[str, int]]:
    """The eight paintings in tmp_path/collection (the last two in later/), annotated
    without a model in tmp_path/catalog.db: (catalog, folder, {painter: image id}), the
    painter being the file name up to its first "_" (hokusai, matisse, ...)."""
    folder = tmp_path / "collection"
    (folder / "later").mkdir(parents=True)
    files = {}
    for k, path in enumerate(art_paths):
        relpath = f"later/{path.name}" if k >= 6 else path.name
        shutil.copy2(path, folder / relpath)
        files[relpath] = peaked(k, 0.2 + 0.09 * k)
    db = tmp_path / "catalog.db"
    ids = annotate_files(db, folder, files)
    return db, folder, {Path(r).stem.split("_")[0]: i for r, i in ids.items()}


def whole_prompt_logliks(annotator, image, prompt: str) -> list[float]:
    """The nine labels' log-likelihoods after `prompt` (the emotion question's whole text,
    image placeholder included), each computed plainly: processor, model, label tokens."""
    import torch

    from artnote.emotions import EMOTIONS

    loaded = annotator.loaded
    out = []
    for k, emotion in enumerate(EMOTIONS):
        nested = [[image]] if loaded.family.name == "idefics3" else [image]
        enc = loaded.processor(text=[prompt + " " + emotion], images=nested, return_tensors="pt")
        enc = enc.to(loaded.device, dtype=loaded.dtype)
        ids = enc["input_ids"][0]
        n = len(annotator.label_ids[k])
        assert ids[-n:].tolist() == annotator.label_ids[k]  # the labels' tokens as scored
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(**enc).logits[0].float(), dim=-1)
        out.append(float(sum(logp[len(ids) - n - 1 + j, ids[len(ids) - n + j]] for j in range(n))))
    return out


@pytest.fixture
def tiny_cli(tiny_models, onnx_cache, monkeypatch, tmp_path):
    """run(*args, code=0): `artnote ARGS` in this process on the tiny SmolVLM, with the
    catalog tmp_path/catalog.db and the session's ONNX cache; returns the result."""
    from typer.testing import CliRunner

    from artnote.cli import app

    monkeypatch.setenv("ARTNOTE_CATALOG", str(tmp_path / "catalog.db"))
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(onnx_cache))
    monkeypatch.setenv("ARTNOTE_MODEL", str(tiny_models["smolvlm"]))
    runner = CliRunner()

    def run(*args, code: int = 0):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test reads the user's config or catalog, or reaches the hub."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(tmp_path / "cache"))
    for var in list(os.environ):
        if var.startswith("ARTNOTE_") and var not in ("ARTNOTE_ART_DIR", "ARTNOTE_CACHE_DIR"):
            monkeypatch.delenv(var, raising=False)


def unavailable(reason: str) -> None:
    """A test's binary or service is missing: skip, with the reason, on a developer's
    machine; fail under CI=true, where .ci/run installs everything the tests need, so
    that a gap in CI can never hide behind a skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run must provide it)", pytrace=False)
    pytest.skip(reason)


def _postgres_bin() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))  # Debian's layout
    found = versions[-1] if versions else shutil.which("pg_ctl")
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_socket_dir():
    """A throwaway PostgreSQL server from the machine's own binaries, listening only on a
    socket in a temporary folder (no TCP); skipped where there is no server or driver."""
    import subprocess
    import tempfile

    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[test]')")
    bindir = _postgres_bin()
    if bindir is None:
        unavailable("no PostgreSQL server binaries (pg_ctl) on this machine")
    base = Path(tempfile.mkdtemp(prefix="artnote-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as postgres
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root and there is no postgres account for the server")
        os.chown(base, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"

    def run(*args: object) -> None:
        subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True)

    options = f"-k {base} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
    try:
        run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "artnote", "--no-sync")
        run(bindir / "pg_ctl", "-D", data, "-o", options, "-l", base / "log", "-w", "start")
    except subprocess.CalledProcessError as exc:  # the machine's, not artnote's, problem
        log = base / "log"
        tail = log.read_text(errors="replace")[-300:] if log.is_file() else exc.stderr
        shutil.rmtree(base, ignore_errors=True)
        unavailable(f"could not start a PostgreSQL server: {tail!r}")
    try:
        yield base
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_socket_dir) -> str:
    """A new, empty PostgreSQL database on the throwaway server, as a catalog URL."""
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:16]
    with psycopg.connect(host=str(postgres_socket_dir), user="artnote", dbname="postgres") as conn:
        conn.autocommit = True
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://artnote@/{name}?host={postgres_socket_dir}"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path) -> str:
    """A new, empty catalog: a SQLite file, then a PostgreSQL database of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def browser():
    """A real headless Chromium (Debian's `chromium`, driven by Playwright: its own browser
    download is not reachable here). Skips without it, except under CI=true."""
    import shutil

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = os.environ.get("ARTNOTE_CHROMIUM") or shutil.which("chromium")
    if executable is None:
        unavailable("no chromium on this machine (Debian: apt-get install chromium)")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield instance
        instance.close()


# ---- `artnote review`'s tests (tests/test_review*.py; helpers in review_support.py) ----


@pytest.fixture
def paintings(annotated_art):
    """A catalog of the eight sample paintings (two in a subfolder), each annotated with a
    different certainty: (catalog path, {painter: image id})."""
    db, _, ids = annotated_art
    return db, ids


@pytest.fixture
def client(paintings, tmp_path):
    from review_support import review_app
    from starlette.testclient import TestClient

    with TestClient(
        review_app(paintings[0], "ana", ["testserver"], tmp_path), follow_redirects=False
    ) as c:
        yield c


@pytest.fixture
def served(paintings, tmp_path):
    from review_support import serving

    with serving(paintings[0], "ana", tmp_path) as url:
        yield url
