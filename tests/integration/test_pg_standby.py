"""PostgreSQL high availability as docs/storage.md's runbook asks of an operator, with a real sidecar session:
a hot standby streaming from the primary has every row and a verifying audit chain once the primary is lost
and the standby promoted; a sidecar on one URL for both servers lives through the promotion; rows the standby
never got are lost but their audit records come back from the journal; a base backup and the WAL archive
restore the database to a point in time between a session and an operator's mistake. Also the
`nt8bridge db drill` an operator runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.core.config import load_config
from bridge.nt8.playback import load_stream, run_playback
from bridge.storage import replication as rep
from bridge.storage.database import StorageError
from bridge.storage.pg_drill import LagSampler
from bridge.transport.sidecar import SidecarProcess, master_for
from tests.conftest import PLUMBING_CONFIG, _require_psycopg
from tests.integration.test_audit_trail import ES_FILE, record_playback

CLI = [sys.executable, "-m", "bridge.cli"]
DB = "nt8bridge"
pytestmark = [pytest.mark.postgres]


class Clusters:
    """Clusters of one test in a folder the ``postgres`` user can reach (pytest's tmp_path is private to root);
    every one still running is stopped, and the folder removed, at the end."""

    def __init__(self) -> None:
        _require_psycopg()
        try:
            self.tools = rep.PgTools.find()
        except StorageError as exc:
            pytest.skip(str(exc))
        self.base = Path(tempfile.mkdtemp(prefix="nt8bridge-ha-"))
        self.tools.own(self.base)
        self.archive = self.base / "archive"
        self.made: list[rep.Cluster] = []

    def primary(self) -> rep.Cluster:
        primary = rep.init_primary(self.tools, self.base / "primary", rep.free_port(), self.archive, {"fsync": "off"})
        self.made.append(primary)
        primary.query(f"CREATE DATABASE {DB}")
        return primary

    def keep(self, cluster: rep.Cluster) -> rep.Cluster:
        self.made.append(cluster)
        return cluster

    def close(self) -> None:
        for cluster in self.made:
            if cluster.running:
                cluster.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def clusters() -> Iterator[Clusters]:
    made = Clusters()
    try:
        yield made
    finally:
        made.close()


def _config(tmp_path: Path) -> Path:
    """The plumbing config with the audit files in a folder of their own (audit.dir): the same folder whichever
    server storage.url names, as a server deployment sets it so that a failover keeps the journal."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(Path(PLUMBING_CONFIG).read_text() + f'\n[audit]\nkey_path = "{tmp_path / "key.pem"}"\n'
                   f'dir = "{tmp_path / "audit"}"\ncheckpoint_every = 25\n')
    return cfg


def counts(cluster: rep.Cluster) -> dict[str, int]:
    """Rows of every table of the sidecar's database."""
    tables = cluster.query("select tablename from pg_tables where schemaname = 'public'", dbname=DB)
    return {t: cluster.scalar(f'select count(*) from "{t}"', dbname=DB) for (t,) in tables}


def verified(cfg: Path, url: str) -> dict:
    out = subprocess.run([*CLI, "--config", str(cfg), "audit", "verify", "--db", url, "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return json.loads(out.stdout)


@pytest.mark.shared_data
def test_promoted_standby_has_every_row_and_a_verifying_audit_chain(shared_data, clusters, tmp_path):
    cfg = _config(tmp_path)
    primary = clusters.primary()
    standby = clusters.keep(rep.make_standby(primary, clusters.base / "standby", rep.free_port()))
    rep.wait_streaming(primary)

    with LagSampler(primary) as lag:
        record_playback(shared_data, primary.url(DB), events=30_000, cfg=cfg)
    on_primary = counts(primary)
    assert on_primary["ticks"] > 0 and on_primary["audit_chain"] > 0 and on_primary["orders"] > 0
    catch_up_s = rep.wait_caught_up(primary, standby)

    primary.stop("immediate")  # the primary is lost
    promote_s = rep.promote(standby)
    assert counts(standby) == on_primary
    result = verified(cfg, standby.url(DB))  # the checkpoints signed while the primary was in use
    assert result["ok"] and result["records"] == on_primary["audit_chain"] and result["checkpoints_verified"] > 0
    print(f"\nreplication lag during the session: max {lag.max_bytes} bytes, max replay_lag "
          f"{lag.max_replay_ms} ms over {lag.samples} samples; caught up {catch_up_s * 1000:.0f} ms after the "
          f"session ended; promoted in {promote_s * 1000:.0f} ms")
    assert lag.samples > 0


@pytest.mark.shared_data
def test_a_live_sidecar_on_one_url_for_both_servers_goes_on_after_the_promotion(shared_data, clusters, tmp_path):
    """storage.url names primary and standby (libpq keeps the one that takes writes): the sidecar lives through
    the primary's loss and the promotion, its writer spools meanwhile and then stores on the new primary."""
    cfg = _config(tmp_path)
    primary = clusters.primary()
    standby = clusters.keep(rep.make_standby(primary, clusters.base / "standby", rep.free_port()))
    rep.wait_streaming(primary)
    config = load_config(cfg)
    ticks = load_stream([shared_data / ES_FILE])
    before, after = ticks.before(int(ticks.ts_ns[5_000])), ticks.before(int(ticks.ts_ns[10_000]))
    with SidecarProcess(rep.failover_url([primary, standby], DB), cfg) as proc:
        run_playback(before, proc.endpoint, config, master_for(config), window=256, instance_id="before")
        rep.wait_for(lambda: counts(primary).get("ticks") == len(before.ts_ns), "the first part committed", 60.0)
        rep.wait_caught_up(primary, standby)
        primary.stop("immediate")
        rep.promote(standby)
        run_playback(after, proc.endpoint, config, master_for(config), window=256, instance_id="after")
    assert counts(standby)["ticks"] == len(before.ts_ns) + len(after.ts_ns)
    assert verified(cfg, standby.url(DB))["ok"]


@pytest.mark.shared_data
def test_rows_the_standby_never_got_are_lost_but_the_journal_restores_their_audit_records(shared_data, clusters,
                                                                                        tmp_path):
    """Asynchronous replication's loss window at its widest: the standby is cut off for a whole session, then
    the primary is lost. The session's rows are gone with it (RPO = the lag); its audit records are not, since
    the journal on the sidecar's host has them and a sidecar opening the promoted database stores them again."""
    cfg = _config(tmp_path)
    primary = clusters.primary()
    standby = clusters.keep(rep.make_standby(primary, clusters.base / "standby", rep.free_port()))
    rep.wait_streaming(primary)
    standby.stop()  # cut off
    record_playback(shared_data, primary.url(DB), events=30_000, cfg=cfg)
    on_primary = counts(primary)
    primary.stop("immediate")

    standby.start()
    rep.promote(standby)
    assert counts(standby) == {}  # not even the tables: the sidecar's migrations ran after the cut
    with SidecarProcess(standby.url(DB), cfg):
        pass  # started (journal tail stored, checkpoints kept) and stopped cleanly
    after = counts(standby)
    assert after["ticks"] == 0 and after["orders"] == 0
    n = on_primary["audit_chain"]
    assert n > 0 and standby.scalar("select count(*) from audit_chain where seq <= %s", (n,), DB) == n
    assert after["audit_chain"] >= n  # and the records of the sidecar's own start and stop after them
    result = verified(cfg, standby.url(DB))
    assert result["ok"] and result["checkpoints_verified"] > 0


@pytest.mark.shared_data
def test_point_in_time_recovery_keeps_the_session_and_undoes_the_mistake_after_it(shared_data, clusters, tmp_path):
    cfg = _config(tmp_path)
    primary = clusters.primary()
    rep.base_backup(primary, clusters.base / "base")  # the nightly base backup, taken before the session

    record_playback(shared_data, primary.url(DB), events=30_000, cfg=cfg)  # first write: a session
    session = counts(primary)
    assert session["ticks"] > 0
    point = primary.scalar("select clock_timestamp()::text")
    time.sleep(0.2)  # commit times are microseconds: the mistake comes clearly after the point
    primary.query("delete from ticks; delete from bars", dbname=DB)  # second write: an operator's mistake
    assert counts(primary)["ticks"] == 0
    rep.switch_and_archive(primary)

    started = time.monotonic()
    restored = clusters.keep(rep.restore_to(clusters.base / "base", clusters.base / "pitr", rep.free_port(),
                                            clusters.tools, clusters.archive, target_time=point))
    print(f"\npoint-in-time recovery (base backup + archived WAL) took {time.monotonic() - started:.2f} s")
    assert counts(restored) == session  # the whole session, without the deletion
    assert verified(cfg, restored.url(DB))["ok"]


def test_drill_reports_no_missing_row(tmp_path):
    _require_psycopg()
    try:
        rep.PgTools.find()
    except StorageError as exc:
        pytest.skip(str(exc))
    out = subprocess.run([sys.executable, "deploy/postgres/standby-drill", "--rows", "2000"], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] and report["rows_on_promoted_standby"] == report["rows_written"] == 4000
    assert report["rows_after_pitr"] == 2000
    assert not Path(report["folder"]).exists()

    out = subprocess.run([*CLI, "db", "drill", "--pg-bin", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--pg-bin" in out.stderr and "Traceback" not in out.stderr
