"""Serving the review page: `artnote review` runs this until Ctrl-C, SIGTERM or SIGHUP.

Each of them stops the server gracefully (requests in flight are answered first),
then the command ends as any stopped artnote command does (artnote.signals).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from artnote import signals
from web.app import LOCAL_HOSTS, WILDCARD_HOSTS, allowed_hosts_for, create_app


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def main(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    by: str | None = None,
    catalog: str | None = None,
    config: Path | None = None,
) -> None:
    """Serve the review page until Ctrl-C."""
    import uvicorn

    from artnote.cli_options import echo_err, settings_for
    from artnote.model.encoder import cache_dir

    settings = settings_for(config, catalog={"url": catalog})
    if port == 0:
        port = _free_port(host)
    by = by or os.environ.get("USER") or None
    app = create_app(
        settings.catalog.url,
        by=by,
        allowed_hosts=allowed_hosts_for(host, port),
        cache_dir=cache_dir(),
        max_pixels=settings.scan.max_pixels,
        any_ip_port=port if host in WILDCARD_HOSTS else None,
    )
    where = app.state.review.catalog.where
    shown = f"[{host}]" if ":" in host else host
    echo_err(f"reviewing {where} at http://{shown}:{port}/ (Ctrl-C to stop)")
    if host not in LOCAL_HOSTS:
        echo_err(
            f"warning: listening on {host}: the review page has no login; anyone who can "
            "reach this address can edit and approve annotations" + (f" as {by}" if by else "")
        )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            proxy_headers=False,  # X-Forwarded-* from a client is not believed
            server_header=False,
            access_log=False,
        )
    )
    # uvicorn stops gracefully on SIGINT and SIGTERM (requests in flight are answered
    # first), then raises the signal again: SIGTERM reaches artnote.signals and the
    # command ends as any stopped command. SIGHUP (a closed terminal) gets the same.
    hangup: list[int] = []

    def on_hangup(signum: int, frame: Any) -> None:
        hangup.append(signum)
        server.should_exit = True

    with _signal_handler(getattr(signal, "SIGHUP", None), on_hangup):
        server.run()
    if hangup:
        raise signals.Stopped(hangup[0])


@contextmanager
def _signal_handler(signum: int | None, handler: Any) -> Iterator[None]:
    """`handler` for `signum` in the block (main thread only; a signal ignored at start,
    as under nohup, stays ignored)."""
    main_thread = threading.current_thread() is threading.main_thread()
    if signum is None or not main_thread or signal.getsignal(signum) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)
