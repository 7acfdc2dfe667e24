"""Stop requests from outside: SIGTERM and SIGHUP handled like Ctrl-C.

Batch schedulers and containers stop a job with SIGTERM (Slurm at its time limit,
Kubernetes on eviction, systemd at shutdown) and send SIGKILL after a grace
period; closing the terminal of a run started without nohup sends SIGHUP. Python
would die at once on either, mid-batch, leaving the run marked 'running'. With
`handle_stop_signals()` (called by the CLI's main) they raise `Stopped`, a
KeyboardInterrupt, so every path that already survives Ctrl-C (the scan marks
its run interrupted and keeps what was committed; the review server closes)
survives them the same way.

Code that can stop more gently polls instead: the trainer, inside `deferred()`,
asks `received()` at each step boundary, writes a checkpoint and raises Stopped
itself; a second signal there raises at once (the grace period may be short).

Later signals while a stop is being handled are recorded, not raised: the
cleanup (closing the run, removing a temporary file) is not cut short by the
scheduler's repeated TERM; its SIGKILL still ends everything.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s
)


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal; `signum` says which (exit status 128 + signum)."""

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.note = note  # what was kept and how to go on, for the one line the CLI prints

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_received: int | None = None  # the first stop signal received, if any
_count = 0  # how many stop signals were received
_defer = 0  # > 0 while inside deferred(): record the first signal instead of raising


def received() -> int | None:
    """The stop signal this process received (SIGTERM, SIGHUP), or None."""
    return _received


def exit_status(exc: BaseException) -> int:
    """The shell's status for a run ended by `exc` (a Stopped, or Ctrl-C's 130)."""
    return 128 + exc.signum if isinstance(exc, Stopped) else 130


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _received, _count
    _count += 1
    _received = _received or signum
    # Raise once: on the first signal, or (deferred) on the second; the others are
    # recorded only, so that the cleanup of a stop is not itself cut short.
    if _count == (2 if _defer else 1):
        raise Stopped(signum)


def handle_stop_signals() -> None:
    """Make SIGTERM and SIGHUP raise Stopped in the main thread. A signal the process
    was started ignoring stays ignored (`nohup` ignores SIGHUP: that choice holds).
    A stop is then told once, by the CLI, in one line (see `_no_stop_tracebacks`)."""
    if logging.lastResort is not None and _no_stop_tracebacks not in logging.lastResort.filters:
        logging.lastResort.addFilter(_no_stop_tracebacks)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)


def _no_stop_tracebacks(record: logging.LogRecord) -> bool:
    """Drop a log record that carries a stop (Ctrl-C, SIGTERM, SIGHUP) as its exception.

    A library may log the interrupt before re-raising it: SQLAlchemy's pool logs
    "Exception during reset or similar" with a traceback when the stop lands while a
    connection is being returned. The stop goes on to the CLI, which reports it in one
    line; the traceback would only alarm. (A filter on Python's last-resort handler: the
    one that prints warnings when nothing configured logging, as in artnote's CLI.)"""
    exc = record.exc_info[0] if record.exc_info else None
    return not (exc is not None and issubclass(exc, KeyboardInterrupt))


@contextmanager
def deferred() -> Iterator[None]:
    """Inside: the first stop signal is only recorded (see `received()`); a second one
    raises Stopped. For loops with a natural boundary to stop at (a training step)."""
    global _defer
    _defer += 1
    try:
        yield
    finally:
        _defer -= 1


def reset() -> None:
    """Forget a received signal (tests, and programs that run several jobs in one process)."""
    global _received, _count
    _received, _count = None, 0
