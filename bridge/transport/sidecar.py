"""Running the sidecar: in this process (``nt8bridge serve``), or as a child process for playback.

A playback starts its sidecar the way a user does, ``nt8bridge serve`` in its own process, and
learns the bound endpoint from ``--ready-file`` (the sidecar writes it once it listens; the control
channel's and the event stream's endpoints go beside it, in FILE.control and FILE.events). It stops it
the way an operator does on any platform, with ``shutdown`` on the control channel; a console
signal (CTRL_BREAK_EVENT on Windows, SIGINT elsewhere) is the fallback.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from bridge.core.config import Config, ConfigError
from bridge.core.instruments import InstrumentMaster
from bridge.transport.control import ControlError, send_command
from bridge.transport.server import SidecarServer
from bridge.transport.storage_health import spool_path_for
from bridge.transport.operators import key_from_env
from bridge.transport.security import Security, exposure_problem, is_local_endpoint
from bridge.storage.writer import StorageWriter
from strategies.base import Strategy

log = logging.getLogger("nt8bridge.sidecar")


def make_strategy_factory(config: Config):
    """Each session gets fresh strategy instances (they keep per-session state)."""
    def factory() -> list[Strategy]:
        from strategies.registry import build_strategies
        return build_strategies(config.strategy)
    return factory


def master_for(config: Config) -> InstrumentMaster:
    return InstrumentMaster.default().with_declared(list(config.instruments))


def run_sidecar(config: Config, db_url: str, bind: str | None = None, ready_file: Path | None = None,
                metrics: bool | None = None, control_bind: str | None = None,
                events_bind: str | None = None) -> SidecarServer:
    """Serve until a ``shutdown`` command or a stop signal (``stop_signals``); flushes every row to
    storage before returning. A port already taken is a RuntimeError that says which and what to do; so is
    an endpoint beyond loopback without remote mode's secret (or operator keys), or an event stream beyond
    loopback at all, checked before anything starts."""
    events_bind = config.server.events_bind if events_bind is None else events_bind
    refusal = exposure_problem(bind or config.server.bind,
                               config.server.control_bind if control_bind is None else control_bind,
                               Security.from_config(config.security))
    if refusal is None and events_bind and not is_local_endpoint(events_bind):
        # the stream carries positions, orders and fills to anyone who connects, unauthenticated: the console
        # reads it on this machine and serves other machines itself, with logins and TLS
        refusal = (f"server.events_bind {events_bind} is reachable from other machines, and the event stream has no "
                   "authentication: bind it to tcp://127.0.0.1:PORT (the console serves other machines), or set it "
                   "to \"\" to turn it off")
    if refusal is not None:
        raise RuntimeError(refusal)
    feed = analytics_feed(config, db_url)
    writer = StorageWriter(db_url, batch_rows=config.storage.batch_rows, queue_batches=config.storage.queue_batches,
                           flush_interval_s=config.storage.flush_interval_ms / 1000.0,
                           spool_path=spool_path_for(config, db_url),  # the backlog while the database is away
                           on_committed=feed.on_committed if feed is not None else None)
    try:
        writer.start()
    except BaseException:
        if feed is not None:
            feed.close()
        raise
    chain = None
    on_lead = None
    if config.audit.enabled and not config.ha.enabled:
        from bridge.audit.trail import open_chain
        chain = open_chain(config, db_url, writer)
    elif config.audit.enabled:
        from bridge.audit.trail import open_chain_on_database_head

        def chain_on_database_head(_info: object) -> object:
            return open_chain_on_database_head(config, db_url, writer)
        on_lead = chain_on_database_head
    server = SidecarServer(config, writer, master_for(config), make_strategy_factory(config), chain=chain,
                           on_lead=on_lead, history=instance_history_reader(writer, db_url))
    server.analytics = feed

    def give_up(message: str) -> RuntimeError:
        server.close_events()
        server.close_control()
        if server.chain is not None:
            server.chain.close()
        writer.close()
        if feed is not None:
            feed.close()
        return RuntimeError(message)

    if not config.ha.enabled:  # a standby records its configuration when it becomes the leader
        server.record_config()
    try:
        endpoint = server.bind(bind)
    except zmq.ZMQError as exc:
        raise give_up(f"cannot bind {bind or config.server.bind}: {exc.strerror}; another sidecar or program "
                      "holds it: set server.bind or give --bind (`nt8bridge doctor` checks the ports)") from None
    leadership = None
    if config.ha.enabled:
        from bridge.transport.leadership import Leadership
        try:
            leadership = Leadership(db_url, config.ha.cluster, config.ha.advertise or endpoint,
                                    poll_ms=config.ha.poll_ms, lease_ms=config.ha.lease_ms)
        except ValueError as exc:
            raise give_up(str(exc)) from None
        server.leadership = leadership
        leadership.start()
    try:
        control = server.bind_control(control_bind)
    except zmq.ZMQError as exc:
        raise give_up(f"cannot bind the control channel {control_bind or config.server.control_bind}: "
                      f"{exc.strerror}; another sidecar may hold it: give this one --control-bind "
                      "tcp://127.0.0.1:PORT (or set server.control_bind)") from None
    try:
        events = server.bind_events(events_bind)
    except zmq.ZMQError as exc:
        raise give_up(f"cannot bind the event stream {events_bind}: {exc.strerror}; another sidecar may hold it: give "
                      "this one --events-bind tcp://127.0.0.1:PORT (or set server.events_bind; \"\" turns it "
                      "off)") from None
    if metrics if metrics is not None else config.metrics.enabled:
        from bridge.transport.metrics import serve_metrics
        try:
            server.metrics_port = serve_metrics(server, writer, config.metrics.host, config.metrics.port)
        except OSError as exc:
            raise give_up(f"cannot serve metrics on {config.metrics.host}:{config.metrics.port}: {exc.strerror}; "
                          "another program holds the port: set metrics.port, or --no-metrics (`nt8bridge "
                          "doctor` checks the ports)") from None
        log.info("metrics on http://%s:%d/metrics", config.metrics.host, server.metrics_port)

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current message", signum)
        server.request_stop()

    for signum in stop_signals():
        signal.signal(signum, stop)
    if server.feeds is not None:  # on their own threads; a feed that cannot start is reported, not fatal
        server.feeds.start()
    if ready_file is not None:
        if control:
            Path(str(ready_file) + ".control").write_text(control, encoding="utf-8")  # before the endpoint
        if events:
            Path(str(ready_file) + ".events").write_text(events, encoding="utf-8")
        tmp = Path(str(ready_file) + ".tmp")
        tmp.write_text(endpoint, encoding="utf-8")
        tmp.replace(ready_file)  # atomic: the reader never sees half an endpoint
    try:
        server.run()
    finally:
        if server.feeds is not None:
            server.feeds.stop()
        try:
            try:
                if server.chain is not None:
                    server.chain.close()  # fsync and a last signed checkpoint
            finally:
                writer.close()  # even when the chain could not close (its disk full): the rows still go
                if feed is not None:
                    feed.close()  # after the writer: every committed row has been handed to it
            stats = writer.stats
            log.info("storage closed: %d rows committed, %d rejected, %d backpressure waits%s",
                     sum(stats.rows_written.values()), stats.rows_rejected, stats.backpressure_waits,
                     f"; {stats.rows_spooled} rows left in the spool {stats.spool_path}" if stats.rows_spooled else "")
        finally:
            if leadership is not None:  # after the last row is committed: the standby resumes from all of it
                leadership.stop()
            server.close_control()  # last: a released control endpoint means everything is on disk
    return server


def analytics_feed(config: Config, db_url: str):
    """The live analytics feed (bridge/analytics/feed.py) when analytics.url is set, started; None otherwise.
    It opens the store on its own thread: a store that is away costs the sidecar nothing but a log line."""
    if not config.analytics.url:
        return None
    from bridge.analytics.feed import AnalyticsFeed
    from bridge.analytics.load_db import source_for
    from bridge.analytics.store import open_store
    a = config.analytics
    feed = AnalyticsFeed(lambda: open_store(a.url, batch_rows=a.batch_rows), source_for(db_url),
                         batch_rows=a.batch_rows, flush_s=a.flush_s)
    feed.start()
    return feed


def instance_history_reader(writer: StorageWriter, db_url: str):
    """What a HELLO resumes from: the stored brackets of the connecting strategy instance. Rows still with
    the writer are committed first (a reconnect to the same sidecar), waiting a second at most; with the
    database away (the writer not ``ok``) nothing is waited for: the session starts from what NT8 replays."""
    from bridge.storage.queries import instance_history

    def read(instance_id: str, account: str, since_ns: int):
        if writer.state != "ok":  # the database away or catching up: no second lost waiting on it
            raise RuntimeError(f"storage is {writer.state}")
        writer.sync(timeout=1.0)
        return instance_history(db_url, instance_id, account, since_ns)

    return read


def stop_signals() -> list[int]:
    """The signals that ask for a clean stop: Ctrl+C and SIGTERM everywhere, and on Windows Ctrl+Break,
    which is what a parent can send to a child started in its own process group."""
    signals = [signal.SIGINT, signal.SIGTERM]
    if sys.platform == "win32":
        signals.append(signal.SIGBREAK)
    return signals


def interrupt_signal() -> int:
    """What a parent sends a child sidecar when the control channel cannot stop it: CTRL_BREAK_EVENT on
    Windows (the only console signal that reaches a child process group there), SIGINT elsewhere."""
    if sys.platform == "win32":
        return signal.CTRL_BREAK_EVENT
    return signal.SIGINT


def child_creationflags() -> int:
    """Windows delivers CTRL_BREAK_EVENT to a whole process group: the child gets a group of its own so
    that stopping it never interrupts its parent."""
    if sys.platform == "win32":
        return subprocess.CREATE_NEW_PROCESS_GROUP
    return 0


class SidecarProcess:
    """``nt8bridge serve`` in a child process on a free loopback port."""

    def __init__(self, db_url: str, config_path: Path | None = None, log_path: Path | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.db_url = db_url
        self.config_path = config_path
        self.log_path = log_path
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.endpoint: str | None = None
        self.control_endpoint: str | None = None  # nt8bridge kill / enable go here
        self.events_endpoint: str | None = None  # its event stream (bridge/transport/events.py); None: turned off
        self._tmp = tempfile.TemporaryDirectory(prefix="nt8bridge-")
        self._log = None

    def start(self, timeout_s: float = 60.0) -> str:
        ready = Path(self._tmp.name) / "endpoint"
        cmd = [sys.executable, "-m", "bridge.cli"]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        cmd += ["serve", "--bind", "tcp://127.0.0.1:*", "--control-bind", "tcp://127.0.0.1:*",
                "--events-bind", "tcp://127.0.0.1:*", "--db", self.db_url, "--ready-file", str(ready), "--no-metrics",
                *self.extra_args]
        log_path = self.log_path or Path(self._tmp.name) / "sidecar.log"
        self._log = open(log_path, "ab")
        self.log_path = log_path
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=os.environ.copy(),
                                     creationflags=child_creationflags())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready.exists():
                self.endpoint = ready.read_text(encoding="utf-8")
                control = Path(str(ready) + ".control")
                self.control_endpoint = control.read_text(encoding="utf-8") if control.exists() else None
                events = Path(str(ready) + ".events")
                self.events_endpoint = events.read_text(encoding="utf-8") if events.exists() else None
                return self.endpoint
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited with code {self.proc.returncode} before listening; "
                                   f"its log: {log_path}\n{self.tail()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the sidecar did not listen within {timeout_s:.0f} s; its log: {log_path}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 120.0) -> int:
        """A clean shutdown that flushes storage, then wait; returns the exit code.

        ``shutdown`` on the control channel first, on every platform; when it cannot be delivered (no
        control channel, or none answering yet) a console signal (``interrupt_signal``); a sidecar
        still running after ``timeout_s`` is killed. A signal after an accepted ``shutdown`` would add
        nothing: both only ask the same loop to end."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            if not self._ask_to_shut_down():
                self.proc.send_signal(interrupt_signal())
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"the sidecar did not stop within {timeout_s:.0f} s and was killed; "
                                   f"its log: {self.log_path}") from None
        if self._log is not None:
            self._log.close()
        return self.proc.returncode

    def _ask_to_shut_down(self) -> bool:
        if not self.control_endpoint:
            return False
        try:
            key = key_from_env()  # a sidecar with operator keys takes a shutdown signed by an operator only
            send_command(self.control_endpoint, "shutdown", operator=key.name if key else "nt8bridge", key=key,
                         reason=f"stopped by the process that started it (pid {os.getpid()})")
        except (ControlError, ConfigError) as exc:
            log.warning("the sidecar's control channel did not take the shutdown (%s); interrupting it", exc)
            return False
        return True

    def __enter__(self) -> SidecarProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
