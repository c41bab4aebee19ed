"""What is worth an alert: the sidecar's event stream and storage's findings turned into :class:`Alert`.

Sources, and the alert kinds they raise (``kind`` / subject; deduplication compares the two):

- audit records (``row.audit_chain``, or ``row.audit_log`` without a chain; the payload is JSON text):
  ``kill`` (desk; an operator's kill switch), ``enable`` (desk; clears ``kill``), ``session_lost`` (a
  kill by ``heartbeat``: the sidecar flattened a session it lost), ``reconciliation_break`` (instrument
  and break kind), ``limit_breach`` (a ``risk_event`` StateChange the risk engine made by itself: daily
  loss, drawdown, execution throttle, cancel rate), ``risk_state`` (an operator's StateChange),
  ``override`` and ``limit_change`` (the operator's command; a risk_event Override or LimitChange is the
  same command applied to one session, or replayed on one that connected later, and is not raised again),
  ``override_expired``, ``trading_hold`` / ``trading_hold_released`` (source), ``shutdown``, ``feed_switch`` (root);
- sessions (``row.sessions`` / ``update.sessions``): ``session_lost`` when one ends ``LOST`` (once per
  session, whichever of the two records comes first);
- quality records (``row.quality_events``): ``stale_feed`` (QUALITY_STALE_FEED) and ``feed_quality``
  (prices that jump, go back in time or cross: a feed diverging from the market);
- snapshots: ``stale_feed`` for an instrument the sidecar shows ``stale`` for ``alerts.stale_feed_s``,
  ``feed_ok`` when it ticks again; ``kill`` / ``enable`` from the trading state when no audit record said
  so (an event lost on the way, or a notifier started while trading was halted); ``sidecar_down`` when
  no snapshot came for ``sidecar_gone_s``, ``sidecar_back`` and ``sidecar_restarted``;
- storage (:mod:`bridge.alerts.polls`): ``drift`` (a row of ``drift_alerts``), ``audit_verification``
  (the chain in storage does not verify), ``storage_unreadable``; the stream itself: ``events_lost``.

A record whose payload cannot be read still raises its alert with what the row says, and is counted
(``RuleStats.bad_records``): a kill is never dropped because its details are garbled.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.alerts.alert import Alert, Severity
from bridge.transport.events import Event

__all__ = ["FEED_REASONS", "RuleStats", "Rules", "SIDECAR_GONE_S", "TOPICS"]

log = logging.getLogger("nt8bridge.alerts")

TOPICS = ("row.audit_chain", "row.audit_log", "row.sessions", "update.sessions", "row.quality_events", "snapshot")
SIDECAR_GONE_S = 5.0  # twenty snapshot intervals: a busy sidecar is late by a few, a gone one by all
STALE_REASON = "QUALITY_STALE_FEED"
# Verdicts that say a feed disagrees with the market; a locked quote or a tick outside session hours
# is a normal market's doing and would only be noise.
FEED_REASONS = frozenset({"QUALITY_PRICE_JUMP", "QUALITY_TIME_BACKWARDS", "QUALITY_CROSSED_QUOTE",
                          "QUALITY_NONFINITE_PRICE", "QUALITY_NONPOSITIVE_PRICE", "QUALITY_OFF_TICK_GRID",
                          "QUALITY_BAD_SIZE", "QUALITY_BAD_BAR"})
AUTOMATIC_OPERATOR = "risk-engine"  # bridge.risk.engine.AUTO_OPERATOR
_FALLBACK_S = 10.0  # a snapshot's trading state confirms an audit record seen this recently
_MEMORY = 10_000    # sessions remembered (their account and instance; whether their loss was raised)


@dataclass
class RuleStats:
    events: int = 0
    bad_records: int = 0  # a record with an unreadable payload or a missing field: raised with what was there
    raised: Counter[str] = field(default_factory=Counter)  # by kind
    ignored: Counter[str] = field(default_factory=Counter)  # audit kinds seen that raise nothing


class _Lru(OrderedDict):
    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _MEMORY:
            self.popitem(last=False)


def _text(v: Any) -> str:
    return "" if v is None else str(v)


class Rules:
    """Stateful (transitions, what was already raised); one thread only. ``clock`` is monotonic seconds."""

    def __init__(self, stale_feed_s: float = 30.0, sidecar_gone_s: float = SIDECAR_GONE_S, source: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_feed_s = stale_feed_s
        self.sidecar_gone_s = sidecar_gone_s
        self.source = source  # the event stream's endpoint: the subject of the sidecar's own alerts
        self.stats = RuleStats()
        self._clock = clock
        self._started = clock()
        self._last_snapshot: float | None = None
        self._down = False
        self._boot: str | None = None
        self._trading: str | None = None
        self._recent: dict[str, float] = {}  # kind -> when an audit record last raised it (kill, enable)
        self._sessions: _Lru = _Lru()  # session id -> {"instance_id", "account"}
        self._lost: _Lru = _Lru()  # session ids whose loss was raised
        self._stale: set[tuple[Any, str]] = set()  # (session id, instrument) raised as stale
        self._lost_events = 0

    @property
    def sidecar_up(self) -> bool:
        return self._last_snapshot is not None and self._clock() - self._last_snapshot <= self.sidecar_gone_s

    # --- the event stream -----------------------------------------------------------------------

    def on_event(self, event: Event) -> list[Alert]:
        self.stats.events += 1
        topic, body = event.topic, event.body
        try:
            if topic == "snapshot":
                out = self._snapshot(event)
            elif topic in ("row.audit_chain", "row.audit_log"):
                out = self._audit_row(body["row"], event.ts_ns)
            elif topic == "row.sessions":
                out = self._session_row(body["row"], event.ts_ns)
            elif topic == "update.sessions":
                out = self._session_update(body["key"], body.get("values") or {}, event.ts_ns)
            elif topic == "row.quality_events":
                out = self._quality_row(body["row"], event.ts_ns)
            else:
                out = []
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            self._bad(f"{topic} event {event.seq} not understood ({exc!r})")
            out = []
        for alert in out:
            self.stats.raised[alert.kind] += 1
        return out

    def on_lost(self, lost_total: int) -> list[Alert]:
        """The feed's count of events that never arrived: an alert when it grows (one may have been a kill)."""
        if lost_total <= self._lost_events:
            return []
        n, self._lost_events = lost_total - self._lost_events, lost_total
        return self._raise(Alert("events_lost", Severity.WARNING, self.source or "events",
                                 f"The notifier missed {n} events of the sidecar's stream",
                                 f"{lost_total} lost so far (the notifier read too slowly or the network dropped "
                                 "them). Alerts may be missing: the console and `nt8bridge audit` still have every "
                                 "record.", fields={"lost": n, "lost_total": lost_total}))

    def on_tick(self) -> list[Alert]:
        """Time passing: the sidecar gone when its snapshots stop."""
        now = self._clock()
        since = self._last_snapshot if self._last_snapshot is not None else self._started
        if self._down or now - since <= self.sidecar_gone_s:
            return []
        self._down = True
        self._stale.clear()  # its sessions went with it; a new run reports its own
        what = (f"no snapshot for {now - since:.0f} s" if self._last_snapshot is not None
                else f"no snapshot since the notifier started {now - since:.0f} s ago")
        return self._raise(Alert("sidecar_down", Severity.CRITICAL, self.source or "sidecar",
                                 f"Sidecar gone: {what}",
                                 f"The sidecar's event stream {self.source} is silent: the sidecar stopped, hangs "
                                 "or cannot be reached. NT8's strategies flatten on their own when they lose it.",
                                 fields={"silent_s": round(now - since, 1)}))

    def _raise(self, *alerts: Alert) -> list[Alert]:
        for a in alerts:
            self.stats.raised[a.kind] += 1
        return list(alerts)

    def _bad(self, what: str) -> None:
        self.stats.bad_records += 1
        if self.stats.bad_records <= 10 or self.stats.bad_records % 1000 == 0:
            log.warning("alerts: %s (%d such records so far)", what, self.stats.bad_records)

    # --- audit records --------------------------------------------------------------------------

    def _payload(self, row: dict[str, Any]) -> dict[str, Any]:
        raw = row.get("payload")
        try:
            payload = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            self._bad(f"audit record {row.get('kind')!r} {row.get('subject_id')!r} has no readable payload")
            return {}
        return payload

    def _audit_row(self, row: dict[str, Any], event_ts_ns: int) -> list[Alert]:
        kind = _text(row.get("kind"))
        subject = _text(row.get("subject_id"))
        ts_ns = (int(row["ts_us"]) * 1000 if row.get("ts_us") is not None else
                 int(row["ts_sidecar_ns"]) if row.get("ts_sidecar_ns") is not None else event_ts_ns)
        handler = _AUDIT.get(kind)
        if handler is None:
            self.stats.ignored[kind] += 1
            return []
        payload = self._payload(row)
        return handler(self, subject, payload, row.get("session_id"), ts_ns)

    def _kill(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        if subject == "heartbeat":  # the sidecar flattened one session whose heartbeat it lost
            sid = p.get("session_id", session_id)
            return self._session_lost(sid, ts_ns, p.get("instance_id"), "its heartbeat stopped; the sidecar sent "
                                      "FLATTEN of every instrument (delivered if NT8 is only slow)")
        operator = _text(p.get("operator")) or subject or "unnamed"
        reason = _text(p.get("reason")) or "no reason given"
        self._recent["kill"] = self._clock()
        told = p.get("sessions_flattened")
        return [Alert("kill", Severity.CRITICAL, "desk", f"KILL SWITCH by {operator}: {reason}",
                      f"{operator} halted trading: {reason}. "
                      + (f"{told} NT8 sessions were told to flatten everything; " if told is not None else "")
                      + "new orders are refused until a named operator runs `nt8bridge enable`.",
                      ts_ns, {"operator": operator, "reason": reason, "sessions_flattened": told,
                              "sessions": p.get("sessions")})]

    def _enable(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        operator = _text(p.get("operator")) or subject or "unnamed"
        reason = _text(p.get("reason")) or "no reason given"
        self._recent["enable"] = self._clock()
        return [Alert("enable", Severity.WARNING, "desk", f"Trading re-enabled by {operator}",
                      f"{operator} re-enabled trading after the kill switch: {reason}.", ts_ns,
                      {"operator": operator, "reason": reason}, clears="kill")]

    def _reconciliation(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        instrument = _text(p.get("instrument")) or subject or "?"
        kind = _text(p.get("kind")) or "BREAK"
        details = _text(p.get("details"))
        return [Alert("reconciliation_break", Severity.CRITICAL, f"{instrument} {kind}",
                      f"Reconciliation break {kind} on {instrument}",
                      f"The sidecar's fills and NT8's report of {instrument} disagree ({kind}): {details}. "
                      "Check the position in NT8 before trading on.", ts_ns,
                      {"instrument": instrument, "break": kind, "details": details, "session_id": session_id})]

    def _risk_event(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        event = _text(p.get("event")) or subject
        scope = _text(p.get("scope")) or "?"
        if event == "StateChange":
            old, new, reason = _text(p.get("old")), _text(p.get("new")), _text(p.get("reason"))
            operator = _text(p.get("operator"))
            fields = {"scope": scope, "old": old, "new": new, "reason": reason, "operator": operator,
                      "cause": p.get("cause"), "session_id": session_id}
            if p.get("automatic") or operator == AUTOMATIC_OPERATOR:
                cause = _text(p.get("cause")) or "RISK_LIMIT"
                return [Alert("limit_breach", Severity.CRITICAL if new == "HALTED" else Severity.WARNING,
                              f"{scope} {cause}", f"Limit breached: {cause} at {scope}, {old} -> {new}",
                              f"The risk engine moved {scope} from {old} to {new} by itself: {reason}. It stays "
                              f"{new} until a named operator re-enables it.", ts_ns, fields)]
            return [Alert("risk_state", Severity.WARNING, scope, f"{scope}: {old} -> {new} by {operator}",
                          f"{operator} set {scope} to {new}: {reason}.", ts_ns, fields)]
        if event == "OverrideExpired":
            name = f"{scope}.{_text(p.get('field'))}"
            return [Alert("override_expired", Severity.INFO, name, f"Override of {name} expired",
                          f"The override {name} = {p.get('value')} expired; {p.get('restored')} is in force again.",
                          ts_ns, {"scope": scope, "field": p.get("field"), "value": p.get("value"),
                                  "restored": p.get("restored")})]
        self.stats.ignored[f"risk_event.{event}"] += 1  # Override, LimitChange: the command's own record raised it
        return []

    def _override(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        return self._limit_command(subject, p, ts_ns, override=True)

    def _limit_change(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        return self._limit_command(subject, p, ts_ns, override=False)

    def _limit_command(self, subject: str, p: dict[str, Any], ts_ns: int, override: bool) -> list[Alert]:
        name = f"{_text(p.get('scope')) or '?'}.{_text(p.get('field')) or '?'}"
        operator = _text(p.get("operator")) or subject or "unnamed"
        reason = _text(p.get("reason")) or "no reason given"
        value = p.get("value")
        fields = {"scope": p.get("scope"), "field": p.get("field"), "value": value, "operator": operator,
                  "reason": reason, "sessions": p.get("sessions")}
        if override:
            approver = _text(p.get("approved_by"))
            fields |= {"approved_by": approver, "duration_s": p.get("duration_s")}
            # each distinct override is news: the value and who asked are part of what is compared
            return [Alert("override", Severity.WARNING, f"{name}={value} by {operator}",
                          f"Override {name} = {value} by {operator}, approved by {approver}",
                          f"{operator} overrode {name} with {value} for {p.get('duration_s')} s, approved by "
                          f"{approver}: {reason}.", ts_ns, fields)]
        return [Alert("limit_change", Severity.WARNING, f"{name}={value} by {operator}",
                      f"Limit {name} set to {value} by {operator}", f"{operator} set {name} to {value}: {reason}.",
                      ts_ns, fields)]

    def _hold(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        state, reason = _text(p.get("state")) or "HALTED", _text(p.get("reason"))
        return [Alert("trading_hold", Severity.CRITICAL, subject or "?", f"Trading hold ({subject}): {state}",
                      f"The sidecar holds trading back by itself ({subject}): {reason}. New orders that "
                      + ("do not reduce a position" if state == "REDUCING" else "open or add to a position")
                      + " are refused until it clears.", ts_ns, {"source": subject, "state": state, "reason": reason})]

    def _hold_released(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        return [Alert("trading_hold_released", Severity.INFO, subject or "?", f"Trading hold ({subject}) lifted",
                      f"{_text(p.get('reason'))} (held {p.get('held_s')} s).", ts_ns,
                      {"source": subject, "held_s": p.get("held_s")}, clears="trading_hold")]

    def _feed_switch(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        # back to NT8's own feed is good news; away from it means NT8's data is stale or wrong
        to, frm, reason = _text(p.get("to")), _text(p.get("from")), _text(p.get("reason"))
        back = to == "nt8"
        return [Alert("feed_back" if back else "feed_switch", Severity.INFO if back else Severity.WARNING,
                      subject or "?", f"{subject}: reference feed {frm} -> {to}",
                      f"The sidecar now believes {to} for {subject} ({reason})"
                      + (" and NT8's feed is the reference again." if back else
                         "; the quality gate and the price collar follow it." + (" It is delayed: no new entries."
                                                                                  if p.get("delayed") else "")),
                      ts_ns, {"root": subject, "from": frm, "to": to, "reason": reason},
                      clears="feed_switch" if back else "")]

    def _shutdown(self, subject: str, p: dict[str, Any], session_id: Any, ts_ns: int) -> list[Alert]:
        operator = _text(p.get("operator")) or subject
        return [Alert("shutdown", Severity.WARNING, "desk", f"Sidecar stopped by {operator}",
                      f"{operator} stopped the sidecar: {_text(p.get('reason'))}.", ts_ns,
                      {"operator": operator, "reason": p.get("reason")})]

    # --- sessions and quality -------------------------------------------------------------------

    def _session_row(self, row: dict[str, Any], ts_ns: int) -> list[Alert]:
        sid = row["session_id"]
        self._sessions.remember(sid, {"instance_id": row.get("instance_id"), "account": row.get("account")})
        if row.get("end_reason") == "LOST":
            return self._session_lost(sid, ts_ns, row.get("instance_id"), "its heartbeat stopped")
        return []

    def _session_update(self, key: Any, values: dict[str, Any], ts_ns: int) -> list[Alert]:
        if values.get("end_reason") != "LOST":
            return []
        return self._session_lost(key, ts_ns, None, "its heartbeat stopped",
                                  int(values["ended_ns"]) if values.get("ended_ns") else ts_ns)

    def _session_lost(self, sid: Any, ts_ns: int, instance_id: Any, how: str, when_ns: int | None = None) -> list[Alert]:
        if sid in self._lost:  # the heartbeat kill and the session's end record tell the same loss
            return []
        self._lost.remember(sid, True)
        known = self._sessions.get(sid, {})
        instance = _text(instance_id or known.get("instance_id"))
        account = _text(known.get("account"))
        who = " ".join(x for x in (f"session {sid}", f"({instance}" + (f", {account})" if account else ")")
                                   if instance else "") if x)
        return [Alert("session_lost", Severity.CRITICAL, instance or f"session {sid}", f"NT8 {who} lost",
                      f"The sidecar lost NT8 {who}: {how}.", when_ns or ts_ns,
                      {"session_id": sid, "instance_id": instance or None, "account": account or None})]

    def _quality_row(self, row: dict[str, Any], ts_ns: int) -> list[Alert]:
        reason = _text(row.get("reason"))
        instrument = _text(row.get("instrument")) or "?"
        detail = _text(row.get("detail"))
        fields = {"instrument": instrument, "reason": reason, "detail": detail, "session_id": row.get("session_id")}
        when = int(row.get("ts_sidecar_ns") or ts_ns)
        if reason == STALE_REASON:
            return [Alert("stale_feed", Severity.WARNING, instrument, f"Stale feed: {instrument}",
                          f"{instrument}: {detail} (the quality gate flagged the trade that ended the silence).",
                          when, fields)]
        if reason in FEED_REASONS or "FEED" in reason or "DIVERG" in reason:
            return [Alert("feed_quality", Severity.WARNING, f"{instrument} {reason}",
                          f"Feed problem on {instrument}: {reason}", f"{instrument}: {reason}: {detail}.", when,
                          fields)]
        return []

    # --- snapshots ------------------------------------------------------------------------------

    def _snapshot(self, event: Event) -> list[Alert]:
        now = self._clock()
        out: list[Alert] = []
        if self._down:
            self._down = False
            out.append(Alert("sidecar_back", Severity.INFO, self.source or "sidecar", "Sidecar back",
                             f"The sidecar's event stream {self.source} is live again.", event.ts_ns,
                             clears="sidecar_down"))
        if self._boot is not None and event.boot != self._boot:
            self._trading = None  # a new run: its trading state is judged afresh, not against the old run's
            self._stale.clear()
        if self._boot is not None and event.boot != self._boot and not out:
            out.append(Alert("sidecar_restarted", Severity.WARNING, self.source or "sidecar", "Sidecar restarted",
                             "A new sidecar run publishes on the event stream (it restarted within "
                             f"{self.sidecar_gone_s:g} s): its sessions reconnect and resume from storage.",
                             event.ts_ns))
        self._boot = event.boot
        self._last_snapshot = now
        state = event.body.get("state")
        if not isinstance(state, dict):
            self._bad("a snapshot without a state")
            return out
        out += self._trading_state(state.get("sidecar") or {}, event.ts_ns, now)
        out += self._feeds(state.get("sessions") or [], event.ts_ns)
        return out

    def _trading_state(self, sidecar: dict[str, Any], ts_ns: int, now: float) -> list[Alert]:
        state = sidecar.get("trading_state")
        if state not in ("ACTIVE", "HALTED") or state == self._trading:
            return []
        before, self._trading = self._trading, state
        by = _text(sidecar.get("halted_by")) or "unknown"
        reason = _text(sidecar.get("halted_reason")) or "no reason given"
        if state == "HALTED" and now - self._recent.get("kill", -1e18) > _FALLBACK_S:
            return [Alert("kill", Severity.CRITICAL, "desk", f"Trading HALTED by {by}: {reason}",
                          f"The sidecar reports trading HALTED by {by}: {reason} (seen in its state"
                          + (" as the notifier first saw this sidecar run" if before is None else "; its audit record "
                             "did not reach the notifier") + "). New orders are refused until a named operator runs "
                          "`nt8bridge enable`.", ts_ns, {"operator": by, "reason": reason,
                                                         "halted_at_ns": sidecar.get("halted_at_ns")})]
        if state == "ACTIVE" and before == "HALTED" and now - self._recent.get("enable", -1e18) > _FALLBACK_S:
            return [Alert("enable", Severity.WARNING, "desk", "Trading ACTIVE again",
                          "The sidecar reports trading ACTIVE again (its enable record did not reach the notifier).",
                          ts_ns, clears="kill")]
        return []

    def _feeds(self, sessions: list[Any], ts_ns: int) -> list[Alert]:
        out: list[Alert] = []
        seen: set[tuple[Any, str]] = set()
        for session in sessions:
            if not isinstance(session, dict):
                continue
            sid = session.get("session_id")
            for inst in session.get("instruments") or []:
                if not isinstance(inst, dict):
                    continue
                name = _text(inst.get("instrument")) or "?"
                key = (sid, name)
                seen.add(key)
                age = inst.get("last_tick_age_s")
                stale = inst.get("feed") == "stale" and (age is None or age >= self.stale_feed_s)
                if stale and key not in self._stale:
                    self._stale.add(key)
                    ago = "never ticked" if age is None else f"no tick for {age:.0f} s"
                    out.append(Alert("stale_feed", Severity.WARNING, name, f"Stale feed: {name}",
                                     f"{name} (session {sid}, {_text(session.get('account'))}): {ago} during its "
                                     "trading hours. Strategies hold back on it; check NT8's data connection.",
                                     ts_ns, {"instrument": name, "session_id": sid, "last_tick_age_s": age}))
                elif inst.get("feed") == "ok" and key in self._stale:
                    self._stale.discard(key)
                    out.append(Alert("feed_ok", Severity.INFO, name, f"Feed back: {name}",
                                     f"{name} (session {sid}) ticks again.", ts_ns, {"instrument": name,
                                                                                     "session_id": sid},
                                     clears="stale_feed"))
        self._stale &= seen  # sessions that ended take their stale instruments with them
        return out

    # --- storage --------------------------------------------------------------------------------

    def drift(self, row: dict[str, Any]) -> list[Alert]:
        """A row of the ``drift_alerts`` table."""
        model, feature, metric = _text(row.get("model_id")), _text(row.get("feature")), _text(row.get("metric"))
        what = "overall" if feature == "*" else feature
        return self._raise(Alert(
            "drift", Severity.WARNING, f"{model} {feature} {metric}", f"Model drift: {model}, {what} ({metric})",
            f"{metric} of {what} for model {model} is {row.get('value')}, beyond its threshold "
            f"{row.get('threshold')}, over {row.get('n_rows')} rows. Its predictions may no longer hold: see "
            "`nt8bridge ml` and the model's drift report.", int(row.get("ts_ns") or time.time_ns()),
            {k: row.get(k) for k in ("model_id", "feature", "metric", "value", "threshold", "n_rows",
                                     "window_start_ns", "window_end_ns")}))

    def audit_broken(self, where: str, first_bad_seq: int | None, reason: str, records: int) -> list[Alert]:
        return self._raise(Alert(
            "audit_verification", Severity.CRITICAL, where, f"AUDIT CHAIN BROKEN: record {first_bad_seq}",
            f"The audit chain in {where} does not verify: first bad record {first_bad_seq}: {reason} "
            f"({records} records verified before it). A record was changed, removed or inserted after it was "
            "written: keep the database and the journal as they are and run `nt8bridge audit verify`.",
            fields={"first_bad_seq": first_bad_seq, "reason": reason, "records_verified": records}))

    def storage_unreadable(self, where: str, doing: str, error: str) -> list[Alert]:
        return self._raise(Alert("storage_unreadable", Severity.WARNING, where, "Notifier cannot read storage",
                                 f"{doing} failed: {error}. Drift alerts and the audit verification wait until it "
                                 "can.", fields={"doing": doing, "error": error}))


_AUDIT: dict[str, Callable[..., list[Alert]]] = {
    "kill": Rules._kill, "enable": Rules._enable, "reconciliation_break": Rules._reconciliation,
    "risk_event": Rules._risk_event, "override": Rules._override, "limit_change": Rules._limit_change,
    "trading_hold": Rules._hold, "trading_hold_released": Rules._hold_released, "shutdown": Rules._shutdown,
    "feed_switch": Rules._feed_switch,
}
