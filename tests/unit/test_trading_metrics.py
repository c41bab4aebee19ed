"""The sidecar's snapshot and its trading metrics, from a bracket's first fill to its close, over two sessions
on two accounts: positions, P&L, working orders, limit use, denials, breaks and the kill switch."""

from __future__ import annotations

import dataclasses
import math
import threading
from datetime import datetime, timezone

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.core.config import Config, PortfolioConfig, ServerConfig, SizingConfig
from bridge.core.market import BarData
from bridge.nt8.client import Nt8Client
from bridge.protocol import messages as m
from bridge.protocol.messages import EntryType, MarketPosition, OrderRole, OrderState, OrderType, Side
from bridge.storage.writer import StorageWriter
from bridge.transport.control import send_command
from bridge.transport.metrics import SidecarCollector
from bridge.transport.server import SidecarServer
from bridge.transport.sidecar import master_for
from strategies.base import MarketView, Signal, Strategy
from tests.integration.test_server import wait_until

ES = m.InstrumentDecl("ES 06-18", 0.25, 50.0)
T0 = int(datetime(2018, 5, 8, 14, 30, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
S = 1_000_000_000


class BuyWhenFlat(Strategy):
    """Buys at market at every closed bar while flat: a bracket whose fills the test reports itself."""

    name = "buywhenflat"

    def on_bar(self, bar: BarData, market: MarketView) -> Signal | None:
        if not market.is_flat(bar.instrument_id):
            return None
        return Signal(bar.instrument_id, Side.BUY, EntryType.MARKET, math.nan, bar.close - 5.0, bar.close + 5.0,
                      0.6, "test entry")


class Desk:
    """A sidecar server on a thread of the test process, on SQLite, with a control channel."""

    def __init__(self, tmp_path) -> None:
        self.config = Config(server=dataclasses.replace(ServerConfig(), events_bind=""),
                             sizing=dataclasses.replace(SizingConfig(), mode="fixed", quantity=2),
                             portfolio=dataclasses.replace(PortfolioConfig(), regime_filter=False))
        self.writer = StorageWriter(f"sqlite:///{tmp_path / 'desk.sqlite'}")
        self.writer.start()
        self.server = SidecarServer(self.config, self.writer, master_for(self.config), lambda: [BuyWhenFlat()])
        self.endpoint = self.server.bind("tcp://127.0.0.1:*")
        self.control = self.server.bind_control("tcp://127.0.0.1:*")
        self.registry = CollectorRegistry()
        self.registry.register(SidecarCollector(self.server, self.writer))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of a scrape: (name, sorted labels) -> value."""
        text = generate_latest(self.registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> None:
        self.server.request_stop()
        self.thread.join(10)
        self.server.close_control()
        self.writer.close()


@pytest.fixture
def desk(tmp_path):
    d = Desk(tmp_path)
    yield d
    if d.thread.is_alive():
        d.stop()


def tick(price: float, ts: int) -> m.Tick:
    return m.Tick(0, 0, price, 1, math.nan, math.nan, ts, ts)


def fill(bracket: m.SubmitBracket, execution_id: str, role: OrderRole, side: Side, price: float, quantity: int,
         ts: int) -> m.Execution:
    return m.Execution(execution_id, bracket.client_order_id, int(role), f"nt-{role.name}", 0, int(side), price,
                       quantity, 1.0, ts)


def position(signed: int, avg: float, ts: int) -> m.Position:
    mp = MarketPosition.FLAT if signed == 0 else MarketPosition.LONG if signed > 0 else MarketPosition.SHORT
    return m.Position(0, int(mp), abs(signed), avg if signed else math.nan, ts)


def only(rows: list[dict], **match) -> dict:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


def labels(**kw: str) -> tuple:
    return tuple(sorted(kw.items()))


def test_positions_pnl_orders_and_limits_follow_a_bracket_over_two_sessions_and_accounts(desk):
    a = Nt8Client(desk.endpoint, instance_id="chart-a", account="Sim101", instruments=[ES])
    b = Nt8Client(desk.endpoint, instance_id="chart-b", account="Sim202", instruments=[ES])
    try:
        a.connect()
        b.connect()
        a.step(tick(2670.0, T0))
        brackets = [r for r in a.step(tick(2670.0, T0 + 61 * S)) if isinstance(r, m.SubmitBracket)]
        assert len(brackets) == 1 and brackets[0].quantity == 2
        br = brackets[0]
        state = desk.server.snapshot()
        order = only(state["orders"], client_order_id=br.client_order_id)
        assert (order["account"], order["side"], order["quantity"], order["state"], order["filled"]) == (
            "Sim101", "BUY", 2, "SENT", 0)
        assert order["strategy"] == "buywhenflat@0.2.0" and order["decision_id"] == br.decision_id
        assert state["positions"] == []  # a bracket sent is no position yet

        # the entry fills 2 @ 2670.25; the market trades at 2672.25
        a.step(m.OrderUpdate(br.client_order_id, int(OrderRole.ENTRY), "nt-ENTRY", 0, int(OrderState.FILLED),
                             int(OrderType.MARKET), int(Side.BUY), 2, 2, math.nan, math.nan, 2670.25, T0 + 62 * S,
                             0, ""))
        a.step(fill(br, "e1", OrderRole.ENTRY, Side.BUY, 2670.25, 2, T0 + 62 * S))
        a.step(position(2, 2670.25, T0 + 62 * S))
        a.step(tick(2672.25, T0 + 63 * S))
        # session b: a fill no bracket of the sidecar accounts for (a manual trade on the other account)
        b.step(tick(2672.0, T0 + 63 * S))
        b.step(m.Execution("manual-1", "", int(OrderRole.OTHER), "nt-m1", 0, int(Side.SELL), 2672.0, 1, 0.0,
                           T0 + 63 * S))
        b.step(position(-1, 2672.0, T0 + 63 * S))

        state = desk.server.snapshot()
        sessions = {s["account"]: s for s in state["sessions"]}
        assert set(sessions) == {"Sim101", "Sim202"}
        inst = sessions["Sim101"]["instruments"][0]
        assert (inst["instrument"], inst["root"], inst["last_price"], inst["feed"]) == ("ES 06-18", "ES", 2672.25, "ok")
        assert sessions["Sim101"]["orders_sent"] == 1 and sessions["Sim101"]["lockstep"] is True
        held = only(state["positions"], account="Sim101")
        assert (held["strategy"], held["quantity"], held["avg_price"], held["last_price"]) == (
            "buywhenflat@0.2.0", 2, 2670.25, 2672.25)
        assert held["unrealized"] == pytest.approx((2672.25 - 2670.25) * 2 * 50.0) and held["realized"] == 0.0
        manual = only(state["positions"], account="Sim202")
        assert (manual["strategy"], manual["quantity"], manual["avg_price"], manual["unrealized"]) == (
            None, -1, None, None)
        pnl = only(state["pnl"], account="Sim101")
        assert pnl["unrealized"] == pytest.approx(200.0) and pnl["equity"] == pytest.approx(500_000.0 + 200.0)
        assert only(state["orders"], client_order_id=br.client_order_id)["state"] == "OPEN"
        net = only(state["risk"]["limits"], scope="*", limit="max_net")
        assert (net["value"], net["use"], net["utilization"]) == (5, 2, pytest.approx(0.4))  # the engine's count

        # the target fills one contract at 2675.25: realized 250 (commissions are booked with the close), one held
        a.step(fill(br, "t1", OrderRole.TARGET, Side.SELL, 2675.25, 1, T0 + 64 * S))
        a.step(position(1, 2670.25, T0 + 64 * S))
        state = desk.server.snapshot()
        held = only(state["positions"], account="Sim101")
        assert held["quantity"] == 1 and held["realized"] == pytest.approx(250.0)
        assert held["unrealized"] == pytest.approx(100.0)
        metrics = desk.metrics()
        assert metrics[("nt8bridge_position_contracts", labels(account="Sim101", instrument="ES 06-18",
                                                                strategy="buywhenflat@0.2.0"))] == 1
        assert metrics[("nt8bridge_position_contracts", labels(account="Sim202", instrument="ES 06-18",
                                                                strategy=""))] == -1
        assert metrics[("nt8bridge_pnl_dollars", labels(account="Sim101", kind="realized"))] == pytest.approx(250.0)
        assert metrics[("nt8bridge_pnl_dollars", labels(account="Sim101", kind="unrealized"))] == pytest.approx(100.0)
        assert {k for k in metrics if k[0] == "nt8bridge_reconciliation_breaks_total"} == {
            ("nt8bridge_reconciliation_breaks_total", labels(kind="EXTRA"))}
        assert metrics[("nt8bridge_reconciliation_breaks_total", labels(kind="EXTRA"))] == 1
        assert metrics[("nt8bridge_limit_utilization_ratio", labels(limit="max_net", scope="*"))] == pytest.approx(0.2)
        assert metrics[("nt8bridge_trading_halted", ())] == 0

        # the stop takes the last contract at 2668.25: the bracket is closed and booked with its commissions
        a.step(fill(br, "s1", OrderRole.STOP, Side.SELL, 2668.25, 1, T0 + 65 * S))
        a.step(position(0, 0.0, T0 + 65 * S))
        state = desk.server.snapshot()
        closed = only(state["positions"], account="Sim101")
        booked = (2675.25 - 2670.25) * 50.0 + (2668.25 - 2670.25) * 50.0 - 3.0
        assert (closed["quantity"], closed["avg_price"]) == (0, None)
        assert closed["realized"] == pytest.approx(booked) and closed["unrealized"] == 0.0
        assert only(state["pnl"], account="Sim101")["realized"] == pytest.approx(booked)
        assert [o for o in state["orders"] if o["account"] == "Sim101"] == []

        # the kill switch: halted, and the next bar's entry is denied and counted
        reply = send_command(desk.control, "kill", operator="alice", reason="test")
        assert reply["ok"]
        a.step(tick(2669.0, T0 + 121 * S))
        state = desk.server.snapshot()
        assert state["sidecar"]["trading_state"] == "HALTED" and state["risk"]["trading_state"] == "HALTED"
        assert (state["sidecar"]["halted_by"], state["sidecar"]["halted_reason"]) == ("alice", "test")
        assert state["risk"]["denials"] == {"RISK_KILL_SWITCH": 1}
        metrics = desk.metrics()
        assert metrics[("nt8bridge_trading_halted", ())] == 1
        assert metrics[("nt8bridge_kill_switch_activations_total", ())] == 1
        assert metrics[("nt8bridge_risk_denials_total", labels(reason="RISK_KILL_SWITCH"))] == 1
    finally:
        a.close()
        b.close()
    wait_until(lambda: not desk.server.sessions, "both sessions ended with their BYE")
    # counters outlive the sessions that counted them; positions and P&L leave with their sessions
    state = desk.server.snapshot()
    assert state["sessions"] == [] and state["positions"] == [] and state["pnl"] == []
    assert state["risk"]["denials"] == {"RISK_KILL_SWITCH": 1}
    assert only(state["risk"]["limits"], scope="*", limit="max_net")["use"] is None  # no session: nothing in use
    metrics = desk.metrics()
    assert metrics[("nt8bridge_reconciliation_breaks_total", labels(kind="EXTRA"))] == 1
    assert metrics[("nt8bridge_risk_denials_total", labels(reason="RISK_KILL_SWITCH"))] == 1
    assert not [k for k in metrics if k[0] == "nt8bridge_position_contracts"]


def test_the_snapshot_without_sessions_names_the_sidecar_and_its_limits(desk):
    state = desk.server.snapshot()
    assert set(state) == {"sidecar", "sessions", "positions", "orders", "pnl", "risk", "latency", "events", "feeds"}
    assert state["feeds"] is None  # feeds.enabled is empty: NT8 is the only feed
    sidecar = state["sidecar"]
    assert sidecar["endpoint"] == desk.endpoint and sidecar["control_endpoint"] == desk.control
    assert sidecar["events_endpoint"] is None and sidecar["role"] == "single"
    assert sidecar["trading_state"] == "ACTIVE" and sidecar["halted_by"] is None
    assert sidecar["storage"]["state"] == "ok"
    assert state["events"] == {"published": None, "failed": None, "ticks_conflated": None}  # the stream is off
    assert state["latency"]["tick_to_bracket"] == {"p50_us": None, "p99_us": None, "count": 0}
    limits = {(r["scope"], r["limit"]): r for r in state["risk"]["limits"]}
    assert limits[("*", "max_net")]["value"] == desk.config.risk.max_position
    # a run-time change shows at once, with no session to carry it
    send_command(desk.control, "set_limit", scope="*", field="max_net", value=3, operator="bob", reason="test")
    state = desk.server.snapshot()
    assert only(state["risk"]["limits"], scope="*", limit="max_net")["value"] == 3
    assert desk.server.status_report()["events_endpoint"] is None
