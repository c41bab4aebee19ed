"""Serving the console: uvicorn, started from code, stopped cleanly by Ctrl+C, SIGTERM or (Windows)
Ctrl+Break.

The listening socket is bound here, before uvicorn starts, so that a port taken is one clear sentence,
``HOST:0`` picks a free port, and ``--ready-file`` can name the URL once the console answers.
uvicorn handles the stop signals itself (SIGBREAK too on Windows) and, after its graceful shutdown,
raises the signal again for whoever handled it before; the handlers installed here only take note,
so a requested stop ends the process with exit code 0 instead of an interrupt or a kill.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["ConsoleServer", "bind_socket"]

log = logging.getLogger("nt8bridge.console")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sys.platform != "win32":
        # a restarted console may take the port while the old connections linger in TIME_WAIT; on Windows
        # SO_REUSEADDR would let two processes share the port, so it is left off there
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _stop_signals() -> list[int]:
    signals = [signal.SIGINT, signal.SIGTERM]
    if sys.platform == "win32":
        signals.append(signal.SIGBREAK)
    return signals


class ConsoleServer:
    """uvicorn serving ``app`` on an already bound socket."""

    def __init__(self, app: Any, sock: socket.socket, *, ssl_certfile: str | None = None,
                 ssl_keyfile: str | None = None, ready_file: Path | None = None, log_level: str = "warning",
                 open_browser: bool = False) -> None:
        import uvicorn

        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.scheme = "https" if ssl_certfile else "http"
        self.url = f"{self.scheme}://{'[' + host + ']' if ':' in host else host}:{port}/"
        self.ready_file = ready_file
        self.open_browser = open_browser
        config = uvicorn.Config(app, ssl_certfile=ssl_certfile or None, ssl_keyfile=ssl_keyfile or None,
                                log_level=log_level, lifespan="on", timeout_graceful_shutdown=5,
                                ws_ping_interval=20.0, ws_ping_timeout=20.0, server_header=False)
        ready = self._ready

        class _Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                if self.started:
                    ready()

        self.server = _Server(config)
        self.stop_signal: int | None = None

    def _ready(self) -> None:
        log.info("console on %s", self.url)
        if self.ready_file is not None:
            tmp = Path(str(self.ready_file) + ".tmp")
            tmp.write_text(self.url, encoding="utf-8")
            tmp.replace(self.ready_file)  # atomic: a reader never sees half a URL
        if self.open_browser:
            open_in_browser(self.url)

    def run(self) -> int:
        """Serve until a stop signal (or :meth:`request_stop`); returns 0 after a clean stop, 1 if the
        application could not start."""
        def noted(signum: int, _frame: object) -> None:
            self.stop_signal = signum  # uvicorn raises the signal it shut down for again: nothing more to do

        main = threading.current_thread() is threading.main_thread()  # only it may handle signals
        previous = {s: signal.signal(s, noted) for s in _stop_signals()} if main else {}
        try:
            self.server.run(sockets=[self.sock])
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.sock.close()
        if not self.server.started:
            return 1
        log.info("console stopped%s", f" (signal {self.stop_signal})" if self.stop_signal else "")
        return 0

    def request_stop(self) -> None:
        self.server.should_exit = True


def open_in_browser(url: str, *, wait: bool = False) -> None:
    """The desk's default browser on ``url`` (the Start-menu entry's ``--open``); off the caller's thread
    unless ``wait`` (a process about to end): a browser's launcher may take seconds to return."""
    import webbrowser

    local = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    if wait:
        webbrowser.open(local)
    else:
        threading.Thread(target=webbrowser.open, args=(local,), name="open-browser", daemon=True).start()


def yield_cpu() -> str:
    """Lower this process's scheduling priority (console.below_normal_priority): the console shares the
    sidecar's machine on most desks, and a page being served can wait where a tick cannot. Returns what was
    done, for the log; never raises (a platform that refuses leaves the priority as it was)."""
    try:
        if sys.platform == "win32":
            import ctypes

            below_normal = 0x00004000  # BELOW_NORMAL_PRIORITY_CLASS
            kernel32 = ctypes.windll.kernel32
            if kernel32.SetPriorityClass(kernel32.GetCurrentProcess(), below_normal):
                return "below normal priority class"
            return "priority unchanged (SetPriorityClass refused)"
        return f"nice {os.nice(10)}"
    except (OSError, AttributeError) as exc:
        return f"priority unchanged ({exc})"
