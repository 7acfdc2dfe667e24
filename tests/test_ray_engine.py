"""`scan --engine ray` on a local Ray (loopback only): the same catalog as the local
engine, work done in Ray's actor processes, a killed worker costs nothing, a rescan
sends nothing. Each runs against SQLite and the throwaway PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import unavailable
from sqlalchemy import text

from artnote.catalog import open_catalog
from artnote.config import Settings
from artnote.emotions import EMOTION_COLUMNS
from artnote.errors import ConfigError
from artnote.pipeline import AnnotatorFactory, scan

try:
    import ray
    import ray.data  # noqa: F401
except ImportError:  # pragma: no cover - the ray extra is missing
    ray = None

from artnote.ray_engine import RayEngine, RayOptions, check_ray

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    if ray is None:
        unavailable('Ray is not installed (pip install -e ".[ray]")')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def collection(tmp_path, art_paths):
    folder = tmp_path / "collection"
    folder.mkdir()
    for p in art_paths:
        shutil.copy2(p, folder / p.name)
    shutil.copy2(art_paths[0], folder / "twin.jpg")  # byte-identical: annotated once
    (folder / "broken.jpg").write_bytes(art_paths[1].read_bytes()[:300])  # truncated
    (folder / "not-an-image.png").write_text("hello")
    return folder


def _settings(model, url) -> Settings:
    s = Settings()
    s.model.name, s.model.device, s.model.encoder = str(model), "cpu", "torch"
    s.catalog.url = url
    s.scan.batch_size = 3
    s.generation.alt_text_tokens = 6
    s.generation.description_tokens = 10
    s.generation.explanation_tokens = 6
    return s


def _never_in_the_driver():
    pytest.fail("the driver loaded the model: the Ray engine must load it in its actors")


def _scan(folder, settings, url, engine=None, factory=None):
    from artnote.model.annotate import load_annotator

    with open_catalog(url) as cat:
        return scan(
            folder,
            settings,
            cat,
            factory or AnnotatorFactory(lambda: load_annotator(settings)),
            model_name=settings.model.name,
            engine=engine,
        )


def _rows(url) -> dict[str, dict]:
    with open_catalog(url, create=False) as cat:
        return {r["relpath"]: r for r in cat.export_rows(provenance=False)}


def _failures(url) -> dict[str, str]:
    with open_catalog(url, create=False) as cat:
        return {Path(path).name: reason for path, reason in cat.failures()}


def test_ray_gives_the_local_engines_catalog_from_actor_processes(
    local_ray, tiny_models, collection, catalog_url, tmp_path
):
    local_url = str(tmp_path / "local.db")
    local = _scan(collection, _settings(tiny_models["smolvlm"], local_url), local_url)
    engine = RayEngine(RayOptions(workers=1))
    settings = _settings(tiny_models["smolvlm"], catalog_url)
    summary = _scan(
        collection, settings, catalog_url, engine, AnnotatorFactory(_never_in_the_driver)
    )
    counted = ("annotated", "unchanged", "duplicates", "failed", "pending", "seen", "missing")
    assert [getattr(summary, k) for k in counted] == [getattr(local, k) for k in counted]
    assert sorted(summary.failures) == sorted(local.failures)
    assert summary.some_failed and summary.annotated == local.annotated == 8
    # Annotated in Ray's actor processes, not here.
    assert engine.pids and os.getpid() not in engine.pids
    want, got = _rows(local_url), _rows(catalog_url)
    assert got.keys() == want.keys()
    for relpath, w in want.items():
        g = got[relpath]
        for key in ("sha256", "alt_text", "description", "explanation", "dominant_emotion"):
            assert g[key] == w[key], (relpath, key)
        for emotion in EMOTION_COLUMNS:
            assert abs(float(g[emotion]) - float(w[emotion])) <= 1e-5, (relpath, emotion)
    assert _failures(catalog_url) == _failures(local_url)
    assert set(_failures(catalog_url)) == {"broken.jpg", "not-an-image.png"}


def test_a_worker_killed_mid_run_costs_nothing(local_ray, tiny_models, collection, catalog_url):
    killed: list[int] = []

    def kill_the_worker(batch):
        if not killed:  # the actor that made the first batch, while it works on the next
            pid = int(batch["pid"][0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    engine = RayEngine(RayOptions(workers=1, batch_size=2), on_batch=kill_the_worker)
    settings = _settings(tiny_models["smolvlm"], catalog_url)
    summary = _scan(collection, settings, catalog_url, engine)
    assert killed and summary.outcome == "completed"
    assert len(engine.pids) >= 2 and killed[0] in engine.pids  # a new actor took over
    with open_catalog(catalog_url, create=False) as cat, cat.engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT i.sha256, count(*) FROM annotations a JOIN images i "
                "ON i.id = a.image_id GROUP BY i.sha256"
            )
        ).all()
    assert len(counts) == 8 and all(n == 1 for _, n in counts), counts


def test_sigterm_stops_the_driver_its_actors_and_marks_the_run_interrupted(
    local_ray, tiny_models, collection, catalog_url
):
    from artnote import signals

    def stop_after_the_first_batch(batch):
        if not stopped:
            stopped.append(len(batch["image_id"]))
            os.kill(os.getpid(), signal.SIGTERM)  # as Slurm or Kubernetes would

    stopped: list[int] = []
    previous = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    signals.handle_stop_signals()  # what `artnote scan` does first
    try:
        engine = RayEngine(RayOptions(workers=1, batch_size=2), on_batch=stop_after_the_first_batch)
        settings = _settings(tiny_models["smolvlm"], catalog_url)
        summary = _scan(collection, settings, catalog_url, engine)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        signals.reset()
    assert stopped and summary.outcome == "interrupted"
    assert summary.annotated <= stopped[0]  # the batch in hand when the signal came, at most
    with open_catalog(catalog_url, create=False) as cat, cat.engine.connect() as conn:
        outcomes = conn.execute(text("SELECT outcome FROM runs")).scalars().all()
    assert outcomes == ["interrupted"]
    for pid in engine.pids:  # the annotator actors are stopped, not left computing
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            import time

            time.sleep(0.1)
        else:
            pytest.fail(f"actor process {pid} still runs after the driver stopped")
    again = _scan(collection, settings, catalog_url, RayEngine(RayOptions(workers=1)))
    assert again.outcome == "completed" and again.annotated + summary.annotated == 8


def test_a_second_ray_run_sends_nothing(
    local_ray, tiny_models, collection, catalog_url, monkeypatch
):
    settings = _settings(tiny_models["smolvlm"], catalog_url)
    _scan(collection, settings, catalog_url, RayEngine(RayOptions()))
    sent: list[int] = []

    class Spy(RayEngine):
        def __call__(self, *args, **kwargs):
            sent.append(1)
            return super().__call__(*args, **kwargs)

    def no_dataset(*args, **kwargs):
        pytest.fail("a dataset was built: images were sent to Ray")

    monkeypatch.setattr(ray.data, "from_items", no_dataset)
    again = _scan(
        collection, settings, catalog_url, Spy(RayOptions()), AnnotatorFactory(_never_in_the_driver)
    )
    # Nothing sent, no annotator actor started (the engine, which starts them, never ran).
    assert sent == [] and again.annotated == 0 and again.unchanged == 9


def test_sqlite_with_a_remote_cluster_is_refused(tmp_path):
    if ray is None:
        unavailable('Ray is not installed (pip install -e ".[ray]")')
    with pytest.raises(ConfigError, match="SQLite catalog cannot be shared"):
        check_ray(RayOptions(address="ray://head:10001"), str(tmp_path / "c.db"))
    check_ray(RayOptions(), str(tmp_path / "c.db"))  # a local Ray may use SQLite


def test_scan_engine_ray_from_the_command_line(local_ray, tiny_models, collection, tmp_path):
    from typer.testing import CliRunner

    from artnote.cli import app

    db = tmp_path / "cli.db"
    result = CliRunner().invoke(
        app,
        [
            "scan",
            str(collection),
            "--engine",
            "ray",
            "--model",
            str(tiny_models["smolvlm"]),
            "--catalog",
            str(db),
            "--batch-size",
            "4",
            "--quiet",
        ],  # fmt: skip
    )
    assert result.exit_code == 3, result.output  # two unreadable files, as locally
    assert _failures(str(db)).keys() == {"broken.jpg", "not-an-image.png"}
    assert len(_rows(str(db))) == 9  # 8 paintings and the twin, annotated


def test_engine_ray_without_ray_says_how_to_install_it(monkeypatch, tmp_path):
    import sys

    from typer.testing import CliRunner

    from artnote.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    folder = tmp_path / "empty"
    folder.mkdir()
    result = CliRunner().invoke(app, ["scan", str(folder), "--engine", "ray"])
    assert result.exit_code == 1
    assert 'pip install -e ".[ray]"' in result.output and "Traceback" not in result.output
    assert not (tmp_path / "artnote.db").exists()  # refused before the catalog was made
