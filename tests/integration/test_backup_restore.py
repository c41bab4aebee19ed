"""Backups that are proven: a real sidecar session is backed up with `nt8bridge db backup`, restored with
`nt8bridge db restore` into a new database, and `nt8bridge audit verify` passes there (hash chain and signed
checkpoints); on SQLite and on PostgreSQL. A target with data is refused without --force; a damaged backup
is named, not a traceback."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from bridge.storage.database import with_connection
from bridge.transport.sidecar import SidecarProcess
from tests.conftest import PLUMBING_CONFIG
from tests.integration.test_audit_trail import record_playback

CLI = [sys.executable, "-m", "bridge.cli"]
ES_FILE = "nt8/ES 06-18.Last.txt.gz"
TABLES = ("ticks", "decisions", "orders", "executions", "audit_chain")


def _config(tmp_path: Path) -> Path:
    """The plumbing config with the audit key in the test's folder and frequent checkpoints, so that the
    restored copy has signed checkpoints to verify."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(Path(PLUMBING_CONFIG).read_text() + f'\n[audit]\nkey_path = "{tmp_path / "key.pem"}"\n'
                   "checkpoint_every = 25\n")
    return cfg


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "--config", str(cfg), *args], capture_output=True, text=True, timeout=600)


def counts(url: str) -> dict[str, int]:
    return with_connection(url, "counting rows",
                           lambda conn: {t: conn.execute(text(f"select count(*) from {t}")).scalar_one() for t in TABLES})


def verified(cfg: Path, url: str) -> dict:
    out = cli(cfg, "audit", "verify", "--db", url, "--json")
    assert out.returncode == 0, (out.stdout, out.stderr)
    return json.loads(out.stdout)


def round_trip(cfg: Path, source: str, target: str, backup_file: Path) -> dict:
    """backup -> restore -> verify; returns the restored copy's verification."""
    before = verified(cfg, source)
    assert before["checkpoints_verified"] > 0
    out = cli(cfg, "db", "backup", "--db", source, "--to", str(backup_file))
    assert out.returncode == 0, out.stderr
    manifest = json.loads(backup_file.with_name(backup_file.name + ".manifest.json").read_text())
    assert set(manifest["files"]) >= {backup_file.name, f"{backup_file.name}.audit/journal.jsonl",
                                      f"{backup_file.name}.audit/checkpoints.jsonl"}
    out = cli(cfg, "db", "restore", "--from", str(backup_file), "--to", target)
    assert out.returncode == 0, out.stderr
    assert counts(target) == counts(source)
    after = verified(cfg, target)
    assert after["records"] == before["records"] and after["checkpoints_verified"] == before["checkpoints_verified"]
    return after


@pytest.mark.shared_data
@pytest.mark.slow
def test_sqlite_session_backs_up_restores_and_verifies(shared_data, tmp_path):
    cfg = _config(tmp_path)
    source = tmp_path / "live.sqlite"
    record_playback(shared_data, f"sqlite:///{source}", cfg=cfg)
    target = tmp_path / "restored" / "copy.sqlite"
    target.parent.mkdir()
    backup_file = tmp_path / "backups" / "b1.sqlite"
    backup_file.parent.mkdir()
    round_trip(cfg, f"sqlite:///{source}", f"sqlite:///{target}", backup_file)
    assert (Path(str(target) + ".audit") / "checkpoints.jsonl").exists()

    # a target with data is refused, in one line, and left as it was
    out = cli(cfg, "db", "restore", "--from", str(backup_file), "--to", f"sqlite:///{target}")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "refusing to restore" in out.stderr and "--force" in out.stderr
    # --force replaces it; the replaced audit files are kept aside; the copy verifies again
    with sqlite3.connect(target) as conn:
        conn.execute("DROP TRIGGER audit_chain_no_delete")
        conn.execute("delete from audit_chain where seq = 7")  # the copy is damaged...
    assert cli(cfg, "audit", "verify", "--db", f"sqlite:///{target}").returncode == 1
    out = cli(cfg, "db", "restore", "--from", str(backup_file), "--to", f"sqlite:///{target}", "--force")
    assert out.returncode == 0, out.stderr
    assert verified(cfg, f"sqlite:///{target}")["ok"]  # ...and restored whole
    assert list(Path(str(target) + ".audit").glob("replaced-*/checkpoints.jsonl"))


@pytest.mark.postgres
@pytest.mark.shared_data
@pytest.mark.slow
def test_postgres_session_backs_up_restores_into_a_second_database_and_verifies(shared_data, pg_database_factory,
                                                                                tmp_path, monkeypatch):
    # a PostgreSQL database's audit files live in the user's data folder: the test's own, inherited by the
    # sidecar and the CLI (Linux and macOS; LOCALAPPDATA plays this part on Windows)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "data"))
    cfg = _config(tmp_path)
    source, target = pg_database_factory(), pg_database_factory()
    record_playback(shared_data, source, events=30_000, cfg=cfg)
    backup_file = tmp_path / "b1.dump"
    round_trip(cfg, source, target, backup_file)
    assert len(list((tmp_path / "data" / "nt8bridge" / "audit").glob("*/checkpoints.jsonl"))) == 2  # source, target

    out = cli(cfg, "db", "restore", "--from", str(backup_file), "--to", target)
    assert out.returncode == 2 and "refusing to restore" in out.stderr and "--force" in out.stderr
    out = cli(cfg, "db", "restore", "--from", str(backup_file), "--to", target, "--force")
    assert out.returncode == 0, out.stderr
    assert counts(target) == counts(source)
    assert verified(cfg, target)["ok"]

    # a proven backup: restored into a scratch database of the same server, verified there, the scratch dropped
    out = cli(cfg, "db", "backup", "--db", source, "--to", str(tmp_path / "proven"), "--prove")
    assert out.returncode == 0, out.stderr
    proof = json.loads(out.stdout.strip().splitlines()[-1])
    assert proof["ok"] and proof["details"]["checkpoints_verified"] > 0
    left = with_connection(source, "listing scratch databases", lambda conn: conn.execute(
        text("select datname from pg_database where datname like 'nt8bridge_proof_%'")).all())
    assert left == []


def _small_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("create table t (x integer)")
        conn.executemany("insert into t values (?)", [(i,) for i in range(5000)])


def test_damaged_backup_is_named_and_the_target_untouched(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[audit]\nkey_path = "{tmp_path / "key.pem"}"\n')
    source = tmp_path / "src.sqlite"
    _small_sqlite(source)
    backup_file = tmp_path / "b.sqlite"
    assert cli(cfg, "db", "backup", "--db", f"sqlite:///{source}", "--to", str(backup_file)).returncode == 0
    target = tmp_path / "t.sqlite"

    # one byte changed in the middle: the manifest's SHA-256 catches it before anything is written
    data = bytearray(backup_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    backup_file.write_bytes(bytes(data))
    out = cli(cfg, "db", "restore", "--from", str(backup_file), "--to", f"sqlite:///{target}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "is damaged" in out.stderr and "does not match its manifest" in out.stderr
    assert not target.exists()

    # without a manifest, garbage is named as not a backup
    backup_file.with_name(backup_file.name + ".manifest.json").unlink()
    backup_file.write_bytes(b"not a database at all" * 100)
    out = cli(cfg, "db", "restore", "--from", str(backup_file), "--to", f"sqlite:///{target}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "neither an SQLite database nor a pg_dump" in out.stderr

    # an SQLite file whose pages are damaged (header intact) fails the integrity check
    _small_sqlite(tmp_path / "src2.sqlite")
    raw = bytearray((tmp_path / "src2.sqlite").read_bytes())
    raw[4096:4096 * 3] = b"\xAB" * 4096 * 2  # the table's root and first leaf page
    backup_file.write_bytes(bytes(raw))
    out = cli(cfg, "db", "restore", "--from", str(backup_file), "--to", f"sqlite:///{target}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "damaged" in out.stderr or "not a readable SQLite database" in out.stderr, out.stderr
    assert not target.exists()

    # a missing backup file
    out = cli(cfg, "db", "restore", "--from", str(tmp_path / "nope.sqlite"), "--to", f"sqlite:///{target}")
    assert out.returncode == 2 and "no such file" in out.stderr and "Traceback" not in out.stderr


def proofs(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "proofs.jsonl").read_text().splitlines()]


@pytest.mark.shared_data
@pytest.mark.slow
def test_proven_backups_keep_n_and_never_the_last_proven_one(shared_data, tmp_path):
    cfg = _config(tmp_path)
    source = tmp_path / "live.sqlite"
    url = f"sqlite:///{source}"
    record_playback(shared_data, url, cfg=cfg)
    folder = tmp_path / "backups"
    for _ in range(3):
        out = cli(cfg, "db", "backup", "--db", url, "--to", str(folder), "--keep", "2")
        assert out.returncode == 0, out.stderr
    runs = proofs(folder)
    assert [r["ok"] for r in runs] == [True, True, True]
    assert all(r["details"]["checkpoints_verified"] > 0 for r in runs)
    kept = sorted(p.name for p in folder.glob("*.sqlite"))
    assert kept == sorted(r["backup"] for r in runs[1:])  # the oldest went
    assert runs[2]["deleted"] == [runs[0]["backup"]]
    assert not (folder / (runs[0]["backup"] + ".audit")).exists()

    # the live database is damaged: the backup copies the damage faithfully and the proof says so
    with sqlite3.connect(source) as conn:
        conn.execute("DROP TRIGGER audit_chain_no_update")
        conn.execute("update audit_chain set payload = payload || ' ' where seq = 11")
    out = cli(cfg, "db", "backup", "--db", url, "--to", str(folder), "--keep", "1")
    assert out.returncode == 1
    last = proofs(folder)[-1]
    assert last["ok"] is False and last["details"]["first_bad_seq"] == 11
    # keep 1 keeps the newest (unproven) backup and, whatever keep says, the newest proven one
    assert sorted(p.name for p in folder.glob("*.sqlite")) == sorted([last["backup"], runs[2]["backup"]])


def test_bad_schedule_and_missing_folder_are_named(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[audit]\nkey_path = "{tmp_path / "key.pem"}"\n')
    source = tmp_path / "src.sqlite"
    _small_sqlite(source)
    out = cli(cfg, "db", "backup", "--db", f"sqlite:///{source}", "--prove")
    assert out.returncode == 2 and "need --to FOLDER" in out.stderr
    out = cli(cfg, "db", "backup", "--db", f"sqlite:///{source}", "--to", str(tmp_path), "--schedule", "weekly")
    assert out.returncode == 2 and "bad schedule" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.shared_data
def test_each_proof_is_recorded_in_the_audit_trail_by_the_running_sidecar(shared_data, tmp_path):
    cfg = _config(tmp_path)
    url = f"sqlite:///{tmp_path / 'live.sqlite'}"
    record_playback(shared_data, url, events=30_000, cfg=cfg)
    folder = tmp_path / "backups"
    # no sidecar: the proof stands in proofs.jsonl, and the command says it is not in the trail
    out = cli(cfg, "db", "backup", "--db", url, "--to", str(folder), "--prove", "--control", "tcp://127.0.0.1:9")
    assert out.returncode == 0, out.stderr
    assert "not recorded in the audit trail" in out.stderr
    with SidecarProcess(url, cfg) as proc:
        out = cli(cfg, "db", "backup", "--db", url, "--to", str(folder), "--prove", "--control", proc.control_endpoint)
        assert out.returncode == 0, out.stderr
        assert "recorded in the audit trail" in out.stderr and "not recorded" not in out.stderr
    runs = proofs(folder)
    assert [r["ok"] for r in runs] == [True, True]
    rows = with_connection(url, "reading the proofs", lambda conn: conn.execute(
        text("select subject_id, payload from audit_chain where kind = 'backup_proof'")).all())
    assert [r.subject_id for r in rows] == [runs[1]["backup"]]
    recorded = json.loads(rows[0].payload)
    assert recorded["ok"] is True and recorded["details"]["checkpoints_verified"] > 0
    assert verified(cfg, url)["ok"]  # the chain, with the proof in it, still verifies
