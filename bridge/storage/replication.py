"""PostgreSQL streaming replication to a hot standby, promotion, and point-in-time recovery, driven with
the server's own tools (initdb, pg_ctl, pg_basebackup), for drills and tests on one machine.

The settings written here are the ones ``deploy/postgres/*.conf`` show for a real primary and standby,
so a drill proves the same configuration an operator deploys. Connections go to 127.0.0.1 by TCP
only (no Unix socket), which works the same on Windows.

initdb and postgres refuse to run as root: there ``run_as`` names a system user (``postgres``) that
owns the folders and runs the tools through ``runuser`` (POSIX only; on Windows pg_ctl drops
administrator rights by itself).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.storage.database import StorageError

WINDOWS = os.name == "nt"
REPLICATION_ROLE = "replicator"

# What a primary needs to feed a standby and a WAL archive (deploy/postgres/primary.conf).
PRIMARY_SETTINGS: dict[str, str] = {
    "wal_level": "replica",          # enough WAL for a standby and for archive recovery
    "max_wal_senders": "4",          # one per standby and per pg_basebackup running
    "wal_keep_size": "256MB",        # a standby that falls behind this much needs a new base backup
    "archive_mode": "on",
    "archive_timeout": "60s",        # a quiet server still archives its WAL at least once a minute (PITR's RPO)
    "hot_standby": "on",             # read-only queries on the standby (ignored on a primary)
}


def conf_value(value: str) -> str:
    """A postgresql.conf string literal (backslashes doubled: Windows paths are read back intact)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def archive_command(archive: Path) -> str:
    """Copy a finished WAL segment into ``archive``, never over an existing file (a promoted standby archives
    into the same folder). Windows has no ``test``/``cp``: cmd.exe's ``copy`` does it."""
    if WINDOWS:
        return f'if not exist "{archive}\\%f" copy "%p" "{archive}\\%f"'
    return f"test ! -f '{archive}/%f' && cp '%p' '{archive}/%f'"


def restore_command(archive: Path) -> str:
    """Fetch a WAL segment from ``archive`` during recovery (a missing file ends recovery: expected)."""
    if WINDOWS:
        return f'copy "{archive}\\%f" "%p"'
    return f"cp '{archive}/%f' '%p'"


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PgTools:
    """Where the server binaries are, and who runs them."""

    bin_dir: Path
    run_as: str | None = None

    @classmethod
    def find(cls, pg_bin: str | None = None, run_as: str | None = None) -> PgTools:
        """``pg_bin``, else the folder of ``initdb`` on PATH, else the newest /usr/lib/postgresql/N/bin (Debian
        keeps the server tools off PATH). As root without ``run_as``, the ``postgres`` user."""
        exe = ".exe" if WINDOWS else ""
        candidates = [Path(pg_bin)] if pg_bin else []
        if not pg_bin:
            on_path = shutil.which("initdb")
            candidates += [Path(os.path.realpath(on_path)).parent] if on_path else []
            candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                                 key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
        for folder in candidates:
            if all((folder / f"{tool}{exe}").exists() for tool in ("initdb", "pg_ctl", "pg_basebackup")):
                if run_as is None and not WINDOWS and os.geteuid() == 0:
                    run_as = "postgres"
                if run_as and WINDOWS:
                    raise StorageError("--run-as is for POSIX systems: on Windows run the drill as an ordinary user")
                return cls(folder, run_as)
        where = pg_bin or "PATH and /usr/lib/postgresql/*/bin"
        raise StorageError(f"the PostgreSQL server tools (initdb, pg_ctl, pg_basebackup) are not in {where}: install "
                           "the server (Debian/Ubuntu: apt install postgresql; Windows: the EDB installer) and give "
                           "--pg-bin its bin folder")

    def run(self, tool: str, *args: str) -> str:
        """Run ``tool`` (as ``run_as`` when set); its output, or StorageError with its message."""
        cmd = [str(self.bin_dir / tool), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StorageError(f"{tool} failed: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def own(self, path: Path) -> None:
        """Give ``path`` (and all below it) to ``run_as``: the server refuses a data folder it does not own."""
        if not self.run_as:
            return
        import pwd  # POSIX only, as run_as is

        user = pwd.getpwnam(self.run_as)
        for folder, _, files in os.walk(path):
            os.chown(folder, user.pw_uid, user.pw_gid)
            for name in files:
                os.chown(os.path.join(folder, name), user.pw_uid, user.pw_gid)


@dataclass
class Cluster:
    """One PostgreSQL server: its data folder, its port on 127.0.0.1, its log beside the folder."""

    tools: PgTools
    data: Path
    port: int
    running: bool = field(default=False, init=False)

    @property
    def log(self) -> Path:
        return self.data.with_name(self.data.name + ".log")

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=5"

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL the sidecar's ``storage.url`` takes."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def configure(self, settings: dict[str, str]) -> None:
        """Append ``settings`` to postgresql.conf (the last line of a name wins, so this overrides a copy's)."""
        lines = [f"{name} = {conf_value(value)}" for name, value in settings.items()]
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# nt8bridge replication drill\n" + "\n".join(lines) + "\n")

    def start(self) -> None:
        self.tools.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash as far as the server's files are concerned: the loss of a primary."""
        self.tools.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def query(self, sql: str, params: tuple[Any, ...] = (), dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.conninfo(dbname), autocommit=True) as conn:
            cur = conn.execute(sql, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, params: tuple[Any, ...] = (), dbname: str = "postgres") -> Any:
        rows = self.query(sql, params, dbname)
        return rows[0][0] if rows else None


def failover_url(clusters: list[Cluster], dbname: str) -> str:
    """One storage.url naming every server: libpq tries them in order and keeps the first that takes writes
    (target_session_attrs=read-write), so after a promotion the same URL finds the new primary, and the
    spool and audit folder, named after the URL, stay the sidecar's."""
    hosts = "&".join(f"host=127.0.0.1:{c.port}" for c in clusters)
    return f"postgresql+psycopg://postgres@/{dbname}?{hosts}&target_session_attrs=read-write"


def _base_settings(port: int) -> dict[str, str]:
    return {"port": str(port), "listen_addresses": "127.0.0.1", "unix_socket_directories": ""}


def init_primary(tools: PgTools, data: Path, port: int, archive: Path, extra: dict[str, str] | None = None) -> Cluster:
    """A new primary in ``data`` archiving its WAL into ``archive``, with a replication role allowed from
    127.0.0.1, started. ``extra``: more settings (fsync=off for tests, synchronous_standby_names)."""
    for folder in (data.parent, archive):
        folder.mkdir(parents=True, exist_ok=True)
        tools.own(folder)
    tools.run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale")
    primary = Cluster(tools, data, port)
    primary.configure({**_base_settings(port), **PRIMARY_SETTINGS, "archive_command": archive_command(archive),
                       **(extra or {})})
    with open(data / "pg_hba.conf", "a", encoding="utf-8") as hba:  # the drill's loopback-only trust
        hba.write(f"host replication {REPLICATION_ROLE} 127.0.0.1/32 trust\n")
    primary.start()
    primary.query(f"CREATE ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN")
    return primary


def base_backup(primary: Cluster, dest: Path, standby: bool = False) -> None:
    """``pg_basebackup`` of ``primary`` into ``dest`` with the WAL it needs; ``standby``: also write
    standby.signal and primary_conninfo (``-R``) so that it starts as the primary's standby."""
    args = ["-D", str(dest), "-h", "127.0.0.1", "-p", str(primary.port), "-U", REPLICATION_ROLE,
            "-X", "stream", "-c", "fast"]
    primary.tools.run("pg_basebackup", *args, *(["-R"] if standby else []))


def make_standby(primary: Cluster, data: Path, port: int, name: str = "standby1") -> Cluster:
    """A hot standby of ``primary`` in ``data`` (``pg_basebackup -R``), started; it streams as ``name``
    (its cluster_name, which the WAL receiver gives the primary as application_name: what
    synchronous_standby_names lists)."""
    base_backup(primary, data, standby=True)
    standby = Cluster(primary.tools, data, port)
    standby.configure({**_base_settings(port), "hot_standby": "on", "cluster_name": name})
    standby.start()
    return standby


def wait_for(condition: Any, what: str, timeout_s: float) -> float:
    """Seconds until ``condition()`` is true; StorageError naming ``what`` after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise StorageError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def wait_streaming(primary: Cluster, name: str = "standby1", timeout_s: float = 60.0) -> float:
    """Seconds until pg_stat_replication on ``primary`` shows ``name`` streaming."""
    sql = "select state from pg_stat_replication where application_name = %s"
    return wait_for(lambda: primary.scalar(sql, (name,)) == "streaming", f"{name} to stream from the primary",
                 timeout_s)


def set_synchronous(primary: Cluster, names: str) -> None:
    """Commits on ``primary`` wait until the standbys ``names`` (synchronous_standby_names: '' for none) have
    flushed them. Set once the standby streams: before that, every commit would wait for it."""
    primary.query("ALTER SYSTEM SET synchronous_standby_names = " + conf_value(names))
    primary.query("select pg_reload_conf()")


@dataclass(frozen=True)
class Lag:
    """How far a standby is behind: WAL bytes written on the primary and not yet replayed there, and the
    primary's own measure of the time its last WAL took to be replayed (None before the first reply)."""

    bytes: int
    replay_ms: float | None


def replication_lag(primary: Cluster, name: str = "standby1") -> Lag | None:
    rows = primary.query("select pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                         "extract(epoch from replay_lag) * 1000 from pg_stat_replication where application_name = %s",
                         (name,))
    if not rows or rows[0][0] is None:
        return None
    return Lag(int(rows[0][0]), float(rows[0][1]) if rows[0][1] is not None else None)


def wait_caught_up(primary: Cluster, standby: Cluster, timeout_s: float = 60.0) -> float:
    """Seconds until ``standby`` has replayed the primary's WAL up to its current LSN as of this call."""
    target = primary.scalar("select pg_current_wal_lsn()::text")
    sql = "select pg_wal_lsn_diff(pg_last_wal_replay_lsn(), %s::pg_lsn) >= 0"
    return wait_for(lambda: bool(standby.scalar(sql, (target,))), f"the standby to replay up to {target}", timeout_s)


def promote(standby: Cluster) -> float:
    """Make ``standby`` a primary (``pg_ctl promote``, waiting); seconds until it accepts writes."""
    start = time.monotonic()
    standby.tools.run("pg_ctl", "-D", str(standby.data), "-w", "-t", "120", "promote")
    wait_for(lambda: standby.scalar("select pg_is_in_recovery()") is False, "the promoted standby to accept writes",
          60.0)
    return time.monotonic() - start


def switch_and_archive(primary: Cluster, timeout_s: float = 60.0) -> str:
    """Close the current WAL segment and wait until it is archived (what archive_timeout does in time);
    the segment's name."""
    segment = primary.scalar("select pg_walfile_name(pg_switch_wal())")
    wait_for(lambda: (primary.scalar("select last_archived_wal from pg_stat_archiver") or "") >= segment,
          f"WAL segment {segment} to be archived", timeout_s)
    return str(segment)


def restore_to(backup: Path, data: Path, port: int, tools: PgTools, archive: Path, *, target_time: str | None = None,
               target_lsn: str | None = None, timeout_s: float = 120.0) -> Cluster:
    """Point-in-time recovery: a copy of base backup ``backup`` in ``data`` replays archived WAL up to
    ``target_time`` (a timestamptz, e.g. '2026-01-05 14:30:00+00') or ``target_lsn``, then is promoted and
    started as a primary of its own. The backup folder itself is left as it was, for the next attempt."""
    if (target_time is None) == (target_lsn is None):
        raise StorageError("give one recovery target: a time or an LSN")
    shutil.copytree(backup, data)
    tools.own(data)
    (data / "standby.signal").unlink(missing_ok=True)
    (data / "recovery.signal").write_text("")  # archive recovery, ending at the target
    target = {"recovery_target_time": target_time} if target_time else {"recovery_target_lsn": str(target_lsn)}
    cluster = Cluster(tools, data, port)
    cluster.configure({**_base_settings(port), "restore_command": restore_command(archive), **target,
                       "recovery_target_action": "promote", "archive_mode": "off"})
    tools.own(data)
    cluster.start()
    try:
        wait_for(lambda: cluster.scalar("select pg_is_in_recovery()") is False, "recovery to reach its target",
              timeout_s)
    except BaseException:
        cluster.stop("immediate")
        raise
    return cluster
