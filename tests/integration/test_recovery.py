"""A sidecar that restarts resumes each strategy instance from storage when it reconnects: open brackets
managed on under their own ids, positions and the day's realized P&L; flattened only when configured."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time

import pytest

from bridge.core.config import Config, RecoveryConfig
from bridge.nt8.client import Nt8Client
from bridge.protocol import messages as m
from bridge.storage.writer import StorageWriter
from tests.integration.test_server import ES, T0, RunningSidecar

NOW = time.time_ns()


def store_a_past_session(db_url: str, instance: str) -> None:
    """What a sidecar killed an hour ago had committed: a session, two brackets (one closed by its target,
    one still open) and their fills."""
    with StorageWriter(db_url) as w:
        w.write("sessions", (7, instance, "Sim101", "127.0.0.1", 1, NOW - 3600 * 10**9, None, None, 0))
        for cid, side, in_ns in (("S7-B1", "BUY", 1), ("S7-B2", "SELL", 2)):
            w.write("orders", (cid, 7, f"S7-D{cid[-1]}", "ES 06-18", side, 1, "MARKET", None,
                               2660.0 if side == "BUY" else 2690.0, 2690.0 if side == "BUY" else 2660.0, "DAY",
                               "momentum@0.2.0", NOW - in_ns * 10**9))
        for seq, (xid, cid, role, side, price) in enumerate((("x1", "S7-B1", "ENTRY", "BUY", 2670.0),
                                                             ("x2", "S7-B1", "TARGET", "SELL", 2690.0),
                                                             ("x3", "S7-B2", "ENTRY", "SELL", 2675.0)), 1):
            w.write("executions", (7, seq, xid, cid, role, f"n{xid}", "ES 06-18", side, price, 1, 2.09,
                                   T0 + seq * 10**9))


@pytest.mark.parametrize("flatten", [False, True])
def test_a_reconnecting_instance_resumes_its_open_bracket_and_pnl_and_is_flattened_only_when_configured(
        tmp_path, flatten):
    db = f"sqlite:///{tmp_path / 'desk.sqlite'}"
    store_a_past_session(db, "chart-1")
    # a sidecar started on the database that holds the past session, resuming as `nt8bridge serve` does
    sidecar = RunningSidecar(Config(recovery=dataclasses.replace(RecoveryConfig(), flatten=flatten)), db, resume=True)
    client = Nt8Client(sidecar.endpoint, instance_id="chart-1", account="Sim101", instruments=[ES])
    client.connect()
    # the first lockstep step collects what the sidecar sent after WELCOME
    replies = client.step(m.Tick(0, 0, 2676.0, 1, float("nan"), float("nan"), T0 + 10 * 10**9,
                                 T0 + 10 * 10**9))
    [session] = sidecar.server.sessions.values()
    ledger = session.pipeline.orders
    assert [b.client_order_id for b in ledger.active()] == ["S7-B2"]
    assert ledger.position(0) == -1
    assert session.pipeline.realized == pytest.approx((2690.0 - 2670.0) * 50.0 - 2 * 2.09)
    flattens = [r for r in replies if isinstance(r, m.Flatten)]
    assert [f.instrument_id for f in flattens] == ([0] if flatten else [])
    # NT8 replays the open bracket's fill after WELCOME: recognised, not stored again
    client.step(m.Execution("x3", "S7-B2", int(m.OrderRole.ENTRY), "nx3", 0, int(m.Side.SELL), 2675.0, 1, 2.09,
                            T0 + 3 * 10**9))
    assert session.pipeline.fills_replayed == 1
    client.close()
    sidecar.stop()
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        fills = conn.execute("select count(*) from executions where execution_id = 'x3'").fetchone()[0]
        [resume] = [json.loads(p) for (p,) in conn.execute("select payload from audit_log where kind = 'resume'")]
    assert fills == 1
    assert resume["active"] == ["S7-B2"] and resume["positions"] == {"ES 06-18": -1} and resume["closed"] == 1
