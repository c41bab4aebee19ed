"""The notifier's rules (bridge/alerts/rules.py): which records and snapshots raise which alert, once.

Payloads are made by the code that makes them in the sidecar (the risk engine's events, the limit
commands, the recorder's row layout), so a change of their shape fails here."""

from __future__ import annotations

import json
import time
from typing import Any

from bridge.alerts.alert import Severity
from bridge.alerts.rules import Rules
from bridge.audit.recorder import ROW_FIELDS
from bridge.core.limits import Scope
from bridge.risk.commands import LimitCommand
from bridge.risk.engine import AUTO_OPERATOR, LimitChange, Override, OverrideExpired, RiskReason, StateChange
from bridge.risk.switch import TradingState
from bridge.transport.events import Event


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Stream:
    """Events as EventPublisher writes them (seq, boot, ts_ns and the body)."""

    def __init__(self, boot: str = "b1") -> None:
        self.seq = 0
        self.boot = boot

    def event(self, topic: str, body: dict[str, Any]) -> Event:
        self.seq += 1
        return Event(topic, self.seq, self.boot, time.time_ns(), body)

    def row(self, table: str, row: tuple) -> Event:
        return self.event("row." + table, {"table": table, "row": dict(zip(ROW_FIELDS[table], row))})

    def audit(self, kind: str, subject: str, payload: Any, chained: bool = True, raw: str | None = None) -> Event:
        text = raw if raw is not None else json.dumps(payload, sort_keys=True)
        if chained:
            return self.row("audit_chain", (self.seq + 1, time.time_ns() // 1000, kind, subject, 7, text, "00", "11"))
        return self.row("audit_log", (7, time.time_ns(), kind, subject, text))

    def snapshot(self, trading: str = "ACTIVE", sessions: list | None = None, **sidecar: Any) -> Event:
        return self.event("snapshot", {"state": {"sidecar": {"trading_state": trading, **sidecar},
                                                 "sessions": sessions or []}})


def rules(**kw: Any) -> tuple[Rules, Clock]:
    clock = Clock()
    return Rules(clock=clock, source="tcp://127.0.0.1:5557", **kw), clock


def test_a_kill_names_its_operator_and_reason_and_an_enable_clears_it():
    r, _ = rules()
    s = Stream()
    [kill] = r.on_event(s.audit("kill", "alice", {"operator": "alice", "reason": "runaway strategy",
                                                   "sessions_flattened": 2, "state": "HALTED", "sessions": [1, 2]}))
    assert (kill.kind, kill.severity, kill.subject) == ("kill", Severity.CRITICAL, "desk")
    assert "alice" in kill.title and "runaway strategy" in kill.title
    assert kill.fields["operator"] == "alice" and kill.fields["sessions_flattened"] == 2
    [enable] = r.on_event(s.audit("enable", "bob", {"operator": "bob", "reason": "checked"}, chained=False))
    assert (enable.kind, enable.clears) == ("enable", "kill") and "bob" in enable.title


def test_a_garbled_payload_still_raises_the_kill_and_is_counted():
    r, _ = rules()
    [kill] = r.on_event(Stream().audit("kill", "carol", None, raw="{not json"))
    assert kill.kind == "kill" and "carol" in kill.title
    assert r.stats.bad_records == 1


def test_a_lost_session_is_raised_once_whether_the_heartbeat_kill_or_the_session_record_comes_first():
    r, _ = rules()
    s = Stream()
    assert r.on_event(s.row("sessions", (41, "chart-ES", "Sim101", "ab", 1, 5, None, None, 0))) == []
    [lost] = r.on_event(s.audit("kill", "heartbeat", {"reason": "heartbeat lost", "operator": "sidecar",
                                                      "scope": "session", "session_id": 41,
                                                      "instance_id": "chart-ES"}))
    assert lost.kind == "session_lost" and lost.severity == Severity.CRITICAL
    assert "41" in lost.title and "chart-ES" in lost.title and "Sim101" in lost.title
    assert r.on_event(s.event("update.sessions", {"table": "sessions", "key": 41,
                                                  "values": {"ended_ns": 9, "end_reason": "LOST"}})) == []
    # the other order, another session
    [lost2] = r.on_event(s.event("update.sessions", {"table": "sessions", "key": 42,
                                                     "values": {"ended_ns": 9, "end_reason": "LOST"}}))
    assert lost2.fields["session_id"] == 42
    assert r.on_event(s.audit("kill", "heartbeat", {"session_id": 42})) == []
    # a session that ends otherwise raises nothing
    assert r.on_event(s.event("update.sessions", {"table": "sessions", "key": 43,
                                                  "values": {"ended_ns": 9, "end_reason": "CLOSED"}})) == []


def test_the_risk_engines_own_state_changes_are_limit_breaches_and_an_operators_are_not():
    r, _ = rules()
    s = Stream()
    scope = Scope.parse("strategy:momentum")
    auto = StateChange(scope, TradingState.ACTIVE, TradingState.HALTED, "8 executions in 60 s", AUTO_OPERATOR, 5,
                       RiskReason.RISK_EXECUTION_THROTTLE, True)
    [a] = r.on_event(s.audit("risk_event", "StateChange", auto.to_dict()))
    assert (a.kind, a.severity) == ("limit_breach", Severity.CRITICAL)
    assert "RISK_EXECUTION_THROTTLE" in a.title and "strategy:momentum" in a.title
    loss = StateChange(scope, TradingState.ACTIVE, TradingState.REDUCING, "day loss 2100 > 2000", AUTO_OPERATOR, 6,
                       RiskReason.RISK_DAILY_LOSS, True)
    [b] = r.on_event(s.audit("risk_event", "StateChange", loss.to_dict()))
    assert (b.kind, b.severity) == ("limit_breach", Severity.WARNING)
    manual = StateChange(scope, TradingState.ACTIVE, TradingState.HALTED, "news", "dave", 7)
    [c] = r.on_event(s.audit("risk_event", "StateChange", manual.to_dict()))
    assert c.kind == "risk_state" and "dave" in c.title
    expired = OverrideExpired(scope, "max_net", 4.0, 2.0, 8, 8)
    [d] = r.on_event(s.audit("risk_event", "OverrideExpired", expired.to_dict()))
    assert d.kind == "override_expired" and "max_net" in d.title
    # the engine's echo of an operator's command (applied, or replayed on a session that connects later)
    for event in (Override(scope, "max_net", 4.0, 2.0, "erin", "hedge", "frank", 9, 99),
                  LimitChange(scope, "max_net", 2, 3, "erin", "desk", 9)):
        assert r.on_event(s.audit("risk_event", type(event).__name__, event.to_dict())) == []


def test_an_override_and_a_limit_change_name_who_asked_and_who_approved():
    r, _ = rules()
    s = Stream()
    cmd = LimitCommand("override", "instrument:ES", "max_net", 6, "erin", "hedging the open", "frank", 600.0, 1)
    [o] = r.on_event(s.audit("override", "erin", {**cmd.to_dict(), "sessions": [1], "events": []}))
    assert o.kind == "override" and "erin" in o.title and "frank" in o.title and "instrument:ES.max_net" in o.title
    change = LimitCommand("set_limit", "*", "max_order_quantity", 3, "gina", "quieter day")
    [c] = r.on_event(s.audit("limit_change", "gina", {**change.to_dict(), "sessions": [], "events": []}))
    assert c.kind == "limit_change" and "gina" in c.title and "3" in c.title
    # two different overrides of one limit are two alerts (deduplication compares kind and subject)
    other = LimitCommand("override", "instrument:ES", "max_net", 8, "erin", "more", "frank", 600.0, 2)
    [o2] = r.on_event(s.audit("override", "erin", {**other.to_dict(), "sessions": [1], "events": []}))
    assert o2.key != o.key


def test_breaks_holds_and_feed_problems():
    r, _ = rules()
    s = Stream()
    [b] = r.on_event(s.audit("reconciliation_break", "ES 06-24", {"kind": "POSITION_MISMATCH", "instrument": "ES 06-24",
                                                                  "details": "NT8 2, ledger 1", "ts_event_ns": 1}))
    assert (b.kind, b.subject, b.severity) == ("reconciliation_break", "ES 06-24 POSITION_MISMATCH", Severity.CRITICAL)
    [h] = r.on_event(s.audit("trading_hold", "audit", {"state": "HALTED", "reason": "the journal's disk is full"}))
    assert (h.kind, h.subject) == ("trading_hold", "audit") and "disk is full" in h.text
    [rel] = r.on_event(s.audit("trading_hold_released", "audit", {"reason": "room again", "held_s": 3.5}))
    assert rel.clears == "trading_hold" and rel.severity == Severity.INFO

    def quality(reason: str) -> Event:
        return s.row("quality_events", (7, 1, "NQ 12-23", reason, "no trade for 41.0 s in session", 1, 2, "{}"))
    [st] = r.on_event(quality("QUALITY_STALE_FEED"))
    assert (st.kind, st.subject) == ("stale_feed", "NQ 12-23") and "41.0 s" in st.text
    [j] = r.on_event(quality("QUALITY_PRICE_JUMP"))
    assert (j.kind, j.subject) == ("feed_quality", "NQ 12-23 QUALITY_PRICE_JUMP")
    assert r.on_event(quality("QUALITY_OUTSIDE_SESSION")) == []  # the market's hours, not a feed problem
    assert r.on_event(quality("QUALITY_LOCKED_QUOTE")) == []
    assert r.on_event(s.audit("decision", "D1", {"outcome": "BRACKET"})) == []
    assert r.stats.ignored["decision"] == 1


def test_snapshots_raise_stale_feeds_past_the_threshold_and_their_return():
    r, _ = rules(stale_feed_s=30.0)
    s = Stream()

    def snap(feed: str, age: float | None) -> Event:
        return s.snapshot(sessions=[{"session_id": 5, "account": "Sim101", "instruments": [
            {"instrument": "ES 06-24", "feed": feed, "last_tick_age_s": age}]}])
    assert r.on_event(snap("ok", 1.0)) == []
    assert r.on_event(snap("stale", 12.0)) == []  # the sidecar calls it stale, the desk's threshold is not reached
    [a] = r.on_event(snap("stale", 31.0))
    assert (a.kind, a.subject) == ("stale_feed", "ES 06-24") and "31 s" in a.text
    assert r.on_event(snap("stale", 45.0)) == []  # raised once while it lasts
    [ok] = r.on_event(snap("ok", 0.1))
    assert (ok.kind, ok.clears) == ("feed_ok", "stale_feed")


def test_the_sidecar_gone_back_and_restarted():
    r, clock = rules(sidecar_gone_s=5.0)
    s = Stream()
    assert r.on_tick() == []
    clock.t += 6
    [down] = r.on_tick()  # nothing since the notifier started
    assert down.kind == "sidecar_down" and "since the notifier started" in down.title
    assert r.on_tick() == []  # once
    [back] = r.on_event(s.snapshot())
    assert (back.kind, back.clears) == ("sidecar_back", "sidecar_down") and r.sidecar_up
    clock.t += 4
    assert r.on_tick() == [] and r.sidecar_up
    clock.t += 2
    [down2] = r.on_tick()
    assert "no snapshot for 6 s" in down2.title and not r.sidecar_up
    r.on_event(s.snapshot())
    [restart] = r.on_event(Stream(boot="b2").snapshot())
    assert restart.kind == "sidecar_restarted"


def test_a_halt_seen_only_in_the_snapshot_is_raised_and_one_the_audit_record_told_is_not():
    r, clock = rules()
    s = Stream()
    [a] = r.on_event(s.snapshot("HALTED", halted_by="alice", halted_reason="flatten all"))
    assert a.kind == "kill" and "alice" in a.title and "first saw this sidecar run" in a.text
    [e] = r.on_event(s.snapshot("ACTIVE"))
    assert e.kind == "enable" and e.clears == "kill"
    r.on_event(s.audit("kill", "bob", {"operator": "bob", "reason": "x"}))
    assert r.on_event(s.snapshot("HALTED", halted_by="bob")) == []  # the record said it a moment ago
    clock.t += 60
    r.on_event(s.audit("enable", "bob", {"operator": "bob", "reason": "ok"}))
    assert r.on_event(s.snapshot("ACTIVE")) == []


def test_a_restarted_sidecar_starting_active_is_not_an_enable():
    r, _ = rules()
    r.on_event(Stream("run1").snapshot("HALTED", halted_by="alice"))
    assert [a.kind for a in r.on_event(Stream("run2").snapshot("ACTIVE"))] == ["sidecar_restarted"]


def test_storage_findings_and_lost_events():
    r, _ = rules()
    [d] = r.drift({"id": 3, "model_id": "ens-7", "feature": "ret_5", "metric": "psi", "value": 0.41,
                   "threshold": 0.25, "ts_ns": 1, "window_start_ns": 0, "window_end_ns": 1, "n_rows": 500})
    assert d.kind == "drift" and "ens-7" in d.title and "0.41" in d.text
    [a] = r.audit_broken("sqlite:///x.sqlite", 3, "record 3: hash does not match its contents", 2)
    assert a.kind == "audit_verification" and a.severity == Severity.CRITICAL and a.fields["first_bad_seq"] == 3
    assert r.on_lost(0) == []
    [lost] = r.on_lost(12)
    assert lost.kind == "events_lost" and lost.fields["lost"] == 12
    assert r.on_lost(12) == []


def test_an_event_without_its_fields_is_counted_not_raised():
    r, _ = rules()
    assert r.on_event(Event("row.audit_chain", 1, "b", 1, {"table": "audit_chain"})) == []
    assert r.on_event(Event("snapshot", 2, "b", 1, {"state": "nonsense"})) == []
    assert r.stats.bad_records == 2


def test_a_reference_feed_switch_away_from_nt8_warns_and_the_way_back_clears_it():
    r, _ = rules()
    s = Stream()
    [away] = r.on_event(s.audit("feed_switch", "ES", {"root": "ES", "from": "nt8", "to": "ib", "delayed": True,
                                                      "reason": "nt8 stale for 2.0 s"}))
    assert (away.kind, away.subject, away.severity) == ("feed_switch", "ES", Severity.WARNING)
    assert "nt8 stale" in away.text and "no new entries" in away.text
    [back] = r.on_event(s.audit("feed_switch", "ES", {"root": "ES", "from": "ib", "to": "nt8", "reason": "nt8 live"}))
    assert (back.kind, back.clears, back.severity) == ("feed_back", "feed_switch", Severity.INFO)
