"""Failover time of a hot-standby pair, against restarting a lone sidecar, with the real NinjaScript.

    .venv/bin/python bench/bench_failover.py --pg postgresql+psycopg://USER@HOST:PORT/postgres
                                             [--runs 5] [--kill-at 28000] [--events-after 20000] [--smoke]

Each run plays ``ES 06-18.Last.txt.gz`` (../shared/data) through the compiled strategy in the NT8
simulator (Mono), lockstep, with the default heartbeat settings, and kills the sidecar with SIGKILL at
event ``--kill-at`` (just after the plumbing strategy's first entry, so a position is open):

* failover: a pair on a fresh PostgreSQL database (``--pg`` names a server where databases may be
  created; NT8BRIDGE_TEST_PG_URL is the default), both endpoints in 'Sidecar endpoint'; the leader is
  killed and the standby takes over.
* baseline, what a desk without a standby gets: a lone sidecar killed and started again at once on the
  same endpoint (as a service manager would), NT8 reconnecting to it.

Measured: from the SIGKILL to the start of NT8's next session (its ``sessions.started_ns``, the moment
the sidecar said WELCOME and NT8 could trade again); p50, p99 and max over ``--runs``, and the ratio.
Fails when a run does not get a session after the kill, or loses a fill (every fill of the simulator
must be stored exactly once).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import smoke  # noqa: E402 - bench/smoke.py, beside this file

from sqlalchemy import select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bridge.core.config import load_config  # noqa: E402
from bridge.storage.database import create_engine_for  # noqa: E402
from bridge.storage.schema import metadata  # noqa: E402
from bridge.transport.control import send_command  # noqa: E402
from bridge.transport.sidecar import SidecarProcess, master_for  # noqa: E402

PLUMBING = ROOT / "tests" / "plumbing.toml"
ES_FILE = ROOT.parent / "shared" / "data" / "nt8" / "ES 06-18.Last.txt.gz"
SMOKE = {"runs": 1, "events_after": 3_000}


def pair_config(folder: Path, name: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(PLUMBING.read_text() + f'\n[ha]\nenabled = true\ncluster = "bench"\n\n[audit]\n'
                    f'dir = "{folder / (name + "-audit")}"\nkey_path = "{folder / (name + "-key.pem")}"\n')
    return path


def new_database(server_url: str) -> str:
    import psycopg

    name = f"nt8bridge_failover_{uuid.uuid4().hex[:10]}"
    admin = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, db_url: str) -> None:
    import psycopg

    admin = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = make_url(db_url).database
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def first_session_after(db_url: str, instance: str, after_ns: int) -> int | None:
    engine = create_engine_for(db_url)
    s = metadata.tables["sessions"]
    try:
        with engine.connect() as conn:
            return conn.execute(select(s.c.started_ns).where(s.c.instance_id == instance, s.c.started_ns > after_ns)
                                .order_by(s.c.started_ns).limit(1)).scalar()
    finally:
        engine.dispose()


def stored_fill_ids(db_url: str) -> list[str]:
    engine = create_engine_for(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(metadata.tables["executions"].c.execution_id)).scalars())
    finally:
        engine.dispose()


def play(endpoints: str, kill, args: argparse.Namespace, instance: str):
    from bridge.nt8.simulator import run_nt8sim

    config = load_config(PLUMBING)
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if done >= args.kill_at and not killed:
            killed.append(kill())

    result = run_nt8sim([ES_FILE], endpoints, config, master_for(config), max_events=args.kill_at + args.events_after,
                        instance_id=instance, progress=progress, progress_every=1)
    if not killed:
        raise RuntimeError(f"the playback ended before event {args.kill_at}")
    return result, killed[0]


def check(result, db_url: str, instance: str, killed_ns: int, failures: list[str], what: str) -> float | None:
    started = first_session_after(db_url, instance, killed_ns)
    if started is None:
        failures.append(f"{what}: no session after the kill")
        return None
    ids = stored_fill_ids(db_url)
    if sorted(ids) != sorted(f["execution_id"] for f in result.fills) or len(set(ids)) != len(ids):
        failures.append(f"{what}: the stored fills are not the simulator's, once each")
    return (started - killed_ns) / 1e6


def failover_run(args: argparse.Namespace, folder: Path, k: int, failures: list[str]) -> float | None:
    db = new_database(args.pg)
    procs: list[SidecarProcess] = []
    try:
        for name in ("primary", "standby"):
            proc = SidecarProcess(db, pair_config(folder, f"{name}{k}"), log_path=folder / f"{name}{k}.log")
            proc.start()
            procs.append(proc)
            if name == "primary":
                wait_for(lambda: send_command(proc.control_endpoint, "status")["role"] == "leader", "a leader")
        wait_for(lambda: send_command(procs[1].control_endpoint, "status")["leader"] is not None, "the standby")

        def kill() -> int:
            os.kill(procs[0].proc.pid, signal.SIGKILL)
            return time.time_ns()

        result, killed = play(f"{procs[0].endpoint},{procs[1].endpoint}", kill, args, f"failover-{k}")
        procs[1].stop()
        return check(result, db, f"failover-{k}", killed, failures, f"failover run {k}")
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()
        drop_database(args.pg, db)


def restart_run(args: argparse.Namespace, folder: Path, k: int, failures: list[str]) -> float | None:
    db = f"sqlite:///{folder / f'restart{k}.sqlite'}"
    procs = [SidecarProcess(db, PLUMBING, log_path=folder / f"restart{k}.log")]
    endpoint = procs[0].start()

    def kill() -> int:
        os.kill(procs[0].proc.pid, signal.SIGKILL)
        at = time.time_ns()
        procs[0].proc.wait()
        again = SidecarProcess(db, PLUMBING, log_path=folder / f"restart{k}.log", extra_args=("--bind", endpoint))
        again.start()
        procs.append(again)
        return at

    try:
        result, killed = play(endpoint, kill, args, f"restart-{k}")
        procs[-1].stop()
        return check(result, db, f"restart-{k}", killed, failures, f"restart run {k}")
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()


def figures(label: str, values: list[float]) -> str:
    if not values:
        return f"{label:<58} no run completed"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return (f"{label:<58} n={len(values):>3}  p50 {statistics.median(values):8.0f} ms  p99 {p99:8.0f} ms  "
            f"max {max(values):8.0f} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pg", default=os.environ.get("NT8BRIDGE_TEST_PG_URL"),
                   help="a PostgreSQL server where databases may be created (default: $NT8BRIDGE_TEST_PG_URL)")
    p.add_argument("--runs", type=int, default=5, help="failovers and restarts measured (default 5 each)")
    p.add_argument("--kill-at", type=int, default=28_000,
                   help="event of the playback at which the sidecar is killed (default 28,000: a position is open)")
    p.add_argument("--events-after", type=int, default=20_000, help="events played after the kill (default 20,000)")
    args = smoke.parse_args(p, argv, SMOKE, "a run gets no session after the kill or loses a fill")
    if not args.pg:
        p.error("give --pg URL (a PostgreSQL server where databases may be created) or set NT8BRIDGE_TEST_PG_URL")
    if not ES_FILE.exists():
        p.error(f"{ES_FILE} is missing: the bench plays the team's real ES data (../shared/data)")
    failures: list[str] = []
    failover: list[float] = []
    restart: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nt8bridge-failover-") as tmp:
        folder = Path(tmp)
        for k in range(args.runs):
            if (ms := failover_run(args, folder, k, failures)) is not None:
                failover.append(ms)
            if (ms := restart_run(args, folder, k, failures)) is not None:
                restart.append(ms)
    print(f"SIGKILL at event {args.kill_at:,} of ES 06-18 (a position open), lockstep nt8sim with the real NinjaScript, "
          f"default heartbeats; until NT8's next session (WELCOME)")
    print(figures("failover: leader killed -> session with the standby", failover))
    print(figures("baseline: lone sidecar killed, restarted at once -> session", restart))
    if failover and restart:
        print(f"failover / restart (p50)                                    "
              f"{statistics.median(failover) / statistics.median(restart):8.2f}x")
    print(f"goal: under 2,000 ms; {'met' if failover and max(failover) < 2000 else 'NOT met'} "
          f"{'(not judged in a smoke run)' if args.smoke else ''}")
    if failures:
        print("bench_failover: FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
