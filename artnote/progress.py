"""Progress of a long run, on a terminal or in a log.

On a terminal: a tqdm bar, redrawn in place. A terminal that reports no size (0
columns: a serial console, some containers and CI runners) still gets a bar, of
FALLBACK_COLUMNS, where tqdm's own sizing would draw none.

Anywhere else (an overnight job's log file, a pipe): one plain line every
`interval` seconds, and one at the end, so the log shows the run is alive and how
long it has left, without the carriage returns of a bar:

    annotating: 120/2000 images (6%), 0.85 images/s, ETA 36 min

Lines are written when the work reports progress (after a batch), so a single
batch slower than the interval delays the next line to its end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

FALLBACK_COLUMNS = 80
LOG_INTERVAL_S = 30.0


class Progress(Protocol):
    """What a run calls as it goes: `update` after each piece of work, `close` once."""

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[int], Progress]  # total -> a reporter of that many items


class Silent:
    """No progress shown (--quiet, or progress off)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def open_progress(
    total: int,
    stream: TextIO | None = None,
    *,
    desc: str = "annotating",
    unit: str = "images",
    interval: float = LOG_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Progress:
    """A bar if `stream` (default: sys.stderr) is a terminal, else plain lines."""
    if stream is None:
        import sys

        stream = sys.stderr
    if _isatty(stream):
        return Bar(total, stream, desc=desc)
    return Lines(total, stream, desc=desc, unit=unit, interval=interval, clock=clock)


class Bar:
    """A tqdm bar whose width follows the terminal, or FALLBACK_COLUMNS where it reports none."""

    def __init__(self, total: int, stream: TextIO, *, desc: str = "annotating") -> None:
        from tqdm import tqdm

        self._stream = stream
        # Not tqdm's dynamic_ncols: it trusts the size the terminal reports, and 0 columns
        # becomes a line trimmed to nothing. The width is measured here, on each update.
        self._bar: Any = tqdm(
            total=total,
            desc=desc,
            unit="img",
            file=stream,
            ncols=terminal_columns(stream) - 1,  # the last column would wrap on some terminals
            smoothing=0.1,
        )

    def update(self, n: int = 1) -> None:
        self._bar.ncols = terminal_columns(self._stream) - 1  # the window may have been resized
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


def terminal_columns(stream: TextIO, fallback: int = FALLBACK_COLUMNS) -> int:
    """The width of the terminal `stream` writes to: $COLUMNS if set, else what the terminal
    reports, else `fallback` (a terminal may report 0 columns; a pseudo-stream has no size)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError
        return fallback
    return columns if columns > 0 else fallback


class Lines:
    """Plain lines at a steady interval, for logs: no carriage returns, no redrawing."""

    def __init__(
        self,
        total: int,
        stream: TextIO,
        *,
        desc: str = "annotating",
        unit: str = "images",
        interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.n = total, 0
        self._stream, self._desc, self._unit = stream, desc, unit
        self._interval, self._clock = interval, clock
        self._start = clock()
        self._next = self._start + interval
        self._closed = False
        one = unit[:-1] if total == 1 and unit.endswith("s") else unit
        self._write(f"{desc}: {total} {one} to do")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now >= self._next:
            self._write(self.line(now))
            # From now, not from the missed deadline: a slow batch is followed by one line,
            # not by a burst of the lines it held up.
            self._next = now + self._interval

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._write(self.line(self._clock(), final=True))

    def line(self, now: float, final: bool = False) -> str:
        elapsed = now - self._start
        percent = f" ({100 * self.n // self.total}%)" if self.total else ""
        text = f"{self._desc}: {self.n}/{self.total} {self._unit}{percent}"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.n:
            text += f", {rate:.2f} {self._unit}/s"
        if final:
            return f"{text}, {duration(elapsed)} in all"
        if not self.n:
            return f"{text}, {duration(elapsed)} so far, no ETA yet"
        return f"{text}, ETA {duration((self.total - self.n) / rate)}"

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed log or a broken pipe must not stop the run
            pass


def duration(seconds: float) -> str:
    """A human reading of a time span: '45 s', '36 min', '2 h 05 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
