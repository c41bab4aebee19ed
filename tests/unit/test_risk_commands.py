"""Run-time limit commands: validated once, applied to every engine, deferred to a new session's first event."""

from __future__ import annotations

import pytest

from bridge.transport.control import ControlError
from bridge.risk.commands import DeskLimitCommands, command_from_request
from bridge.risk.engine import Limits, RiskEngine

T = 1_525_700_000 * 1_000_000_000  # an event time in 2018, as in a playback
S = 1_000_000_000


def engine() -> RiskEngine:
    return RiskEngine({"*": Limits(max_order_quantity=2, collar_ticks=20, max_net=5, stale_data_s=5)})


def desk() -> DeskLimitCommands:
    return DeskLimitCommands(engine)


def set_limit(**kw) -> dict:
    return {"cmd": "set_limit", "scope": "*", "field": "max_order_quantity", "value": 1, "operator": "carol",
            "reason": "calm down"} | kw


def override(**kw) -> dict:
    return {"cmd": "override", "scope": "*", "field": "max_order_quantity", "value": 4, "who": "dave",
            "why": "roll", "approved_by": "erin", "duration_s": 60} | kw


def test_a_command_on_an_engine_with_event_time_applies_at_that_time():
    e = engine()
    e.expire(T)
    [event] = desk().submit(command_from_request(set_limit()), [e])
    assert event["event"] == "LimitChange" and event["ts_ns"] == T
    assert e.limits("*").max_order_quantity == 1


def test_a_new_session_takes_commands_at_its_first_event_not_at_the_wall_clock():
    d = desk()
    d.submit(command_from_request(set_limit()), [])
    d.submit(command_from_request(override()), [])
    e = engine()
    events = d.replay(e)
    assert [ev["event"] for ev in events] == ["Deferred", "Deferred"]
    assert e.limits("*").max_order_quantity == 2  # nothing yet: the engine has no clock
    assert e.event_time_ns is None
    first = e.expire(T)  # the session's first event
    assert [type(ev).__name__ for ev in first] == ["LimitChange", "Override"]
    assert e.event_time_ns == T  # the engine's clock is the data's, not dragged to the wall clock
    assert e.limits("*").max_order_quantity == 4  # the override in force over the change
    [o] = e.overrides()
    assert T + 59 * S <= o.expires_ns <= T + 60 * S  # what was left of its minute, from the first event
    expired = e.expire(T + 61 * S)
    assert [type(ev).__name__ for ev in expired] == ["OverrideExpired"]
    assert e.limits("*").max_order_quantity == 1


@pytest.mark.parametrize("request_, match", [
    (set_limit(field="max_quantity"), "unknown limit"),
    (set_limit(value=-1), ">= 0"),
    (set_limit(operator=""), "'operator' is required"),
    (override(approved_by="Dave"), "second person"),
    (override(duration_s=0), "duration_s > 0"),
    (override(value="big"), "numeric value"),
    (override(duration_s=10 * 86_400), "at most"),
])
def test_a_bad_command_is_refused_and_changes_nothing(request_, match):
    d = desk()
    e = engine()
    e.expire(T)
    with pytest.raises(ControlError, match=match):
        d.submit(command_from_request(request_), [e])
    assert d.accepted == [] and e.limits("*").max_order_quantity == 2 and e.overrides() == []


def test_a_deferred_command_the_session_refuses_is_recorded_not_raised():
    # valid on the desk's limits (no throttle there), impossible in a session that has a throttle count
    d = DeskLimitCommands(lambda: RiskEngine({"*": Limits()}))
    d.submit(command_from_request(set_limit(field="execution_window_s", value=None)), [])
    e = RiskEngine({"*": Limits(max_order_quantity=2, max_executions_per_window=3, execution_window_s=5)})
    d.replay(e)
    [event] = e.expire(T)
    assert type(event).__name__ == "CommandRefused" and "window" in event.error
    assert e.limits("*").execution_window_s == 5
