"""Stopping a sidecar without POSIX signals: ``shutdown`` on the control channel (``nt8bridge stop``, and
``SidecarProcess.stop``), recorded in the audit trail, with every row flushed; a signal only when no
control channel can take it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from bridge.nt8.client import Nt8Client
from bridge.protocol.messages import InstrumentDecl, Tick
from bridge.storage.queries import session_counts
from bridge.transport.control import ControlError, send_command, tcp_address
from bridge.transport.sidecar import SidecarProcess

CLI = [sys.executable, "-m", "bridge.cli"]
ES = InstrumentDecl("ES 06-18", 0.25, 50.0)
T0 = int(datetime(2018, 5, 8, 14, 30, tzinfo=timezone.utc).timestamp()) * 1_000_000_000


def send_ticks(client: Nt8Client, n: int) -> None:
    last = 0
    for i in range(n):
        ts = T0 + i * 250_000_000
        last = client.send(Tick(0, 0, 2700.0 + 0.25 * (i % 8), 1, float("nan"), float("nan"), ts, ts))
    client.wait_acks(last)  # lockstep: every tick was handled before the stop is asked for


def audit_records(db_path, kind: str) -> list[tuple[str, dict]]:
    with sqlite3.connect(db_path) as conn:
        return [(s, json.loads(p)) for s, p in conn.execute(
            "select subject_id, payload from audit_chain where kind = ? order by seq", (kind,))]


def test_nt8bridge_stop_ends_a_live_sidecar_cleanly_and_says_so_in_the_audit_trail(tmp_path):
    db = tmp_path / "stop.sqlite"
    url = f"sqlite:///{db}"
    proc = SidecarProcess(url)
    proc.start()
    try:
        client = Nt8Client(proc.endpoint, instance_id="stop-test", account="Sim101", instruments=[ES])
        session_id = client.connect().session_id
        send_ticks(client, 200)
        status = send_command(proc.control_endpoint, "status")
        assert status["pid"] == proc.proc.pid and status["endpoint"] == proc.endpoint
        (live,) = status["live_sessions"]
        assert live["session_id"] == session_id and live["instance_id"] == "stop-test"
        assert isinstance(live["clock_offset_ns"], int)  # sampled on the first tick after HELLO

        stop = subprocess.run([*CLI, "stop", "--control", proc.control_endpoint, "--operator", "alice",
                               "--reason", "end of day", "--wait", "60"], capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert "shutdown accepted" in stop.stdout and "stopped: storage flushed" in stop.stdout
        assert proc.proc.wait(30) == 0  # the endpoint is released last, just before the process exits
        client.close(reason=None)
    finally:
        proc.stop()
    counts = session_counts(url, session_id)
    assert counts.ticks == 200 and counts.end_reason == "SIDECAR_SHUTDOWN"
    ((operator, payload),) = audit_records(db, "shutdown")
    assert operator == "alice" and payload["reason"] == "end of day" and payload["sessions"] == [session_id]
    verify = subprocess.run([*CLI, "audit", "verify", "--db", url], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_shutdown_needs_who_and_why_and_the_parent_stops_its_child_through_the_control_channel(tmp_path):
    db = tmp_path / "child.sqlite"
    url = f"sqlite:///{db}"
    with SidecarProcess(url) as proc:
        with pytest.raises(ControlError, match="named operator and a reason"):
            send_command(proc.control_endpoint, "shutdown", operator=" ", reason="no one")
        refused = subprocess.run([*CLI, "stop", "--control", proc.control_endpoint, "--operator", "bob",
                                  "--reason", ""], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "named operator and a reason" in refused.stderr
        assert send_command(proc.control_endpoint, "status")["state"] == "ACTIVE"  # still serving
        with Nt8Client(proc.endpoint, instance_id="child", account="Sim101", instruments=[ES]) as client:
            session_id = client.connect().session_id
            send_ticks(client, 50)
    assert proc.proc.returncode == 0
    ((operator, payload),) = audit_records(db, "shutdown")
    assert operator == "nt8bridge" and payload["reason"].startswith("stopped by the process that started it")
    assert session_counts(url, session_id).ticks == 50


def test_without_a_control_channel_the_parent_falls_back_to_a_signal(tmp_path):
    db = tmp_path / "signal.sqlite"
    url = f"sqlite:///{db}"
    proc = SidecarProcess(url, extra_args=("--control-bind", ""))  # the last --control-bind wins: none
    proc.start()
    assert proc.control_endpoint is None
    client = Nt8Client(proc.endpoint, instance_id="signalled", account="Sim101", instruments=[ES])
    session_id = client.connect().session_id
    send_ticks(client, 30)
    assert proc.stop() == 0
    client.close(reason=None)
    assert audit_records(db, "shutdown") == []  # not asked on the control channel
    counts = session_counts(url, session_id)
    assert counts.ticks == 30 and counts.end_reason == "SIDECAR_SHUTDOWN"


def test_stop_says_so_when_no_sidecar_answers(tmp_path):
    import socket
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([*CLI, "stop", "--control", f"tcp://127.0.0.1:{port}", "--wait", "5"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "no answer from the sidecar's control channel" in out.stderr
    assert tcp_address(f"tcp://*:{port}") == ("127.0.0.1", port) and tcp_address("ipc:///tmp/x") is None
