"""SIGTERM and SIGHUP (batch schedulers, containers, a closed terminal) stop artnote the
way Ctrl-C does: a scan keeps what it committed, marks its run interrupted and resumes
exactly; finetune stops at a step boundary after a complete checkpoint and --resume
goes on from it. Real `artnote` subprocesses on real SQLite files, as in
test_reliability_crash.py, whose helpers these tests share.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from test_reliability_crash import (
    annotated_catalog,
    artnote_env,
    count,
    finish,
    integrity,
    make_images,
    query,
    start,
)

from artnote import signals
from artnote.catalog import open_catalog
from artnote.corrections import correct

BATCH = 8


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_scan_stops_it_like_ctrl_c_and_the_rerun_completes(
    tiny_models, tmp_path, onnx_cache, signum
):
    folder = tmp_path / "collection"
    files = make_images(folder, 200)
    db = tmp_path / "catalog.db"
    env = artnote_env(db, tiny_models["smolvlm"], onnx_cache)
    scan = ["scan", folder, "--batch-size", str(BATCH), "--quiet"]
    proc = start(scan, env)
    while proc.poll() is None and count(db, "annotations") < 1:
        time.sleep(0.005)
    at_signal = count(db, "annotations")
    proc.send_signal(signum)
    code, err = finish(proc)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err[-2000:]
    assert f"Stopped by {name}: what was annotated is saved" in err
    assert "Traceback" not in err
    integrity(db)
    after = count(db, "annotations")
    assert after < len(files), "the scan finished before the signal: nothing was tested"
    assert after - at_signal <= BATCH  # at most the batch in flight, once the signal came
    assert query(db, "SELECT outcome FROM runs") == [("interrupted",)]

    code, err = finish(start(scan, env))
    assert code == 0, err
    per_content = dict(query(db, "SELECT sha256, count(*) FROM annotations GROUP BY sha256"))
    assert set(per_content) == set(files.values())  # every image annotated ...
    assert set(per_content.values()) == {1}  # ... exactly once
    assert query(db, "SELECT outcome FROM runs ORDER BY id") == [("interrupted",), ("completed",)]


@pytest.mark.slow
def test_finetune_stopped_by_sigterm_checkpoints_at_a_step_boundary_and_resumes(
    tiny_models, tmp_path, onnx_cache
):
    db = tmp_path / "catalog.db"
    files = annotated_catalog(db, tmp_path / "collection", 2)
    with open_catalog(db) as cat:
        for rel in files:
            correct(cat, files[rel][:12], {"description": f"A curated view of {rel}."}, "ana")
    env = artnote_env(db, tiny_models["smolvlm"], onnx_cache)
    out = tmp_path / "adapters" / "stopped"
    args = ["finetune", "--epochs", "3", "--batch-size", "1", "--checkpoint-every", "100"]
    args += ["--name", "stopped", "--out", out, "--quiet"]
    # 2 samples, batch 1: 6 steps; SIGTERM arrives inside step 3 (its gradients clipped,
    # the optimizer not stepped yet), and no periodic checkpoint is due before the end.
    hooks = {"signal": ["torch.nn.utils.clip_grad_norm_", "after", 3, "SIGTERM"]}
    code, err = finish(start(args, env, hooks))
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "Stopped by SIGTERM: checkpoint" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["step-3"]  # whole; nothing torn
    state = json.loads((out / "step-3" / "trainer_state.json").read_text())
    assert state["step"] == 3 and len(state["losses"]) == 3
    with open_catalog(db) as cat:
        assert cat.adapters() == []  # nothing registered for a run that did not finish

    code, err = finish(start([*args, "--resume"], env))
    assert code == 0, err
    final = json.loads((out / "final" / "trainer_state.json").read_text())
    assert final["step"] == 6 and final["losses"][:3] == state["losses"]
    with open_catalog(db) as cat:
        assert [a["name"] for a in cat.adapters()] == ["stopped"]


def test_a_second_signal_during_a_deferred_stop_raises_and_later_ones_wait(monkeypatch):
    raised = []

    def deliver(signum: int) -> None:
        try:
            signals._on_signal(signum, None)
        except signals.Stopped as exc:
            raised.append(exc.signum)

    monkeypatch.setattr(signals, "_received", None)
    monkeypatch.setattr(signals, "_count", 0)
    with signals.deferred():
        deliver(signal.SIGTERM)
        assert raised == [] and signals.received() == signal.SIGTERM  # recorded only
        deliver(signal.SIGTERM)
        assert raised == [signal.SIGTERM]  # the second does not wait for the boundary
    deliver(signal.SIGHUP)  # the cleanup after a stop is not cut short
    assert raised == [signal.SIGTERM] and signals.received() == signal.SIGTERM
    signals.reset()
    deliver(signal.SIGHUP)  # outside deferred(): the first one raises
    assert raised == [signal.SIGTERM, signal.SIGHUP]
    assert signals.exit_status(signals.Stopped(signal.SIGHUP)) == 129
    assert signals.exit_status(KeyboardInterrupt()) == 130
    signals.reset()


def test_a_signal_ignored_at_start_stays_ignored(monkeypatch):
    # nohup starts a run with SIGHUP ignored: that choice holds.
    installed = {}
    monkeypatch.setattr(signal, "getsignal", lambda s: signal.SIG_IGN if s == signal.SIGHUP else 0)
    monkeypatch.setattr(signal, "signal", lambda s, h: installed.setdefault(s, h))
    signals.handle_stop_signals()
    assert set(installed) == {signal.SIGTERM}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_the_review_server_answers_the_request_in_flight_then_stops(tmp_path, signum):
    import socket
    import threading
    import urllib.request

    db = tmp_path / "catalog.db"
    annotated_catalog(db, tmp_path / "collection", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**artnote_env(db, tmp_path / "no-model", tmp_path / "cache"), "USER": "ana"}
    slow = {"sleep": ["web.review_queries.Lister.page", 2.0]}  # the grid page takes 2 s
    proc = start(["review", "--port", port], env, slow)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # up: a cheap route answers
        try:
            urllib.request.urlopen(f"{url}/favicon.ico", timeout=5).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
    answer: dict[str, object] = {}

    def fetch() -> None:
        with urllib.request.urlopen(url + "/", timeout=30) as response:
            answer.update(status=response.status, body=response.read().decode())

    request = threading.Thread(target=fetch)
    request.start()
    time.sleep(0.5)  # the request is in flight (its query sleeps 2 s)
    proc.send_signal(signum)
    request.join(timeout=60)
    code, err = finish(proc)
    assert answer.get("status") == 200 and "</html>" in str(answer.get("body")), answer
    assert code == 128 + signum, err
    assert f"Stopped by {signal.Signals(signum).name}." in err


def test_a_stop_logged_by_a_library_prints_no_traceback():
    """SQLAlchemy's pool logs a KeyboardInterrupt that lands while it returns a connection
    ("Exception during reset or similar", with a traceback) and re-raises it; the CLI
    reports the stop in one line, so that record is dropped. Other errors still print."""
    code = """
import logging, signal
from artnote import signals
signals.handle_stop_signals()
log = logging.getLogger("sqlalchemy.pool.impl.QueuePool")
for exc in (KeyboardInterrupt(), signals.Stopped(signal.SIGTERM)):
    try:
        raise exc
    except BaseException:
        log.error("Exception during reset or similar", exc_info=True)
try:
    raise OSError("disk gone")
except OSError:
    log.error("a real error", exc_info=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Exception during reset" not in proc.stderr
    assert "a real error" in proc.stderr and "OSError: disk gone" in proc.stderr
