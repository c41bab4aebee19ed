"""The failover and point-in-time recovery drill (``nt8bridge db drill``, ``deploy/postgres/standby-drill``):
throwaway clusters on this machine go through what docs/storage.md's runbook asks of an operator, and the
drill reports what it measured. It proves the configuration and the steps, not the network between two
real hosts: run it where the server will run, with the same PostgreSQL version."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.storage import replication as rep
from bridge.storage.database import StorageError

STANDBY = "standby1"


@dataclass
class DrillReport:
    ok: bool
    rows_written: int
    rows_on_promoted_standby: int
    rows_after_pitr: int
    rows_expected_after_pitr: int
    seconds_to_stream: float
    max_lag_bytes: int
    max_replay_lag_ms: float | None
    seconds_to_catch_up: float
    seconds_to_promote: float
    seconds_to_recover_pitr: float
    synchronous: bool
    folder: str


class LagSampler:
    """Samples the standby's lag on the primary every ``every_s`` in a thread, keeping the largest seen."""

    def __init__(self, primary: rep.Cluster, name: str = STANDBY, every_s: float = 0.02) -> None:
        self.primary, self.name, self.every_s = primary, name, every_s
        self.max_bytes, self.samples = 0, 0
        self.max_replay_ms: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            lag = rep.replication_lag(self.primary, self.name)
            if lag is None:
                continue
            self.samples += 1
            self.max_bytes = max(self.max_bytes, lag.bytes)
            if lag.replay_ms is not None:
                self.max_replay_ms = max(self.max_replay_ms or 0.0, lag.replay_ms)


def _write_batch(primary: rep.Cluster, batch: int, rows: int) -> None:
    primary.query("insert into drill_rows (batch, payload) select %s, md5(g::text) from generate_series(1, %s) g",
                  (batch, rows))


def run_drill(tools: rep.PgTools, folder: Path | None = None, rows: int = 50_000, synchronous: bool = False,
              keep: bool = False) -> DrillReport:
    """Primary + hot standby + WAL archive; two batches of writes, a point in time between them; the primary
    lost (stopped immediately), the standby promoted and counted; the base backup and the archive restored
    to that point in time and counted. Every cluster is stopped at the end and, unless ``keep``, its files
    removed (``folder`` itself stays)."""
    base = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="nt8bridge-drill-"))
    base.mkdir(parents=True, exist_ok=True)
    if any(base.iterdir()):
        raise StorageError(f"{base} is not empty: give --dir an empty or new folder")
    clusters: list[rep.Cluster] = []
    try:
        primary = rep.init_primary(tools, base / "primary", rep.free_port(), base / "archive")
        clusters.append(primary)
        standby = rep.make_standby(primary, base / "standby", rep.free_port(), STANDBY)
        clusters.append(standby)
        stream_s = rep.wait_streaming(primary, STANDBY)
        if synchronous:
            rep.set_synchronous(primary, STANDBY)
        rep.base_backup(primary, base / "base")
        primary.query("create table drill_rows (id bigserial primary key, batch int not null, payload text)")
        with LagSampler(primary) as lag:
            _write_batch(primary, 1, rows)
            point = primary.scalar("select clock_timestamp()::text")
            time.sleep(0.2)  # commit times are microseconds: keep the second batch clearly after the point
            _write_batch(primary, 2, rows)
        rep.switch_and_archive(primary)  # after sampling: a switch jumps the LSN to the next segment's start
        written = primary.scalar("select count(*) from drill_rows")
        catch_up_s = rep.wait_caught_up(primary, standby)
        primary.stop("immediate")
        promote_s = rep.promote(standby)
        on_standby = standby.scalar("select count(*) from drill_rows")
        started = time.monotonic()
        restored = rep.restore_to(base / "base", base / "pitr", rep.free_port(), tools, base / "archive",
                                  target_time=point)
        clusters.append(restored)
        pitr_s = time.monotonic() - started
        after_pitr = restored.scalar("select count(*) from drill_rows")
        return DrillReport(ok=on_standby == written and after_pitr == rows, rows_written=written,
                           rows_on_promoted_standby=on_standby, rows_after_pitr=after_pitr,
                           rows_expected_after_pitr=rows, seconds_to_stream=stream_s, max_lag_bytes=lag.max_bytes,
                           max_replay_lag_ms=lag.max_replay_ms, seconds_to_catch_up=catch_up_s,
                           seconds_to_promote=promote_s, seconds_to_recover_pitr=pitr_s, synchronous=synchronous,
                           folder=str(base))
    finally:
        for cluster in clusters:
            if cluster.running:
                try:
                    cluster.stop("immediate")
                except StorageError:
                    pass  # already gone: nothing left to stop
        if not keep:
            for made in ([base] if folder is None else list(base.iterdir())):  # a given folder stays, emptied
                if made.is_dir():
                    shutil.rmtree(made, ignore_errors=True)
                else:
                    made.unlink(missing_ok=True)
