"""The risk engine in the pipeline: limits from the config, per scope, named denials with the limits in force."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bridge.core.config import ConfigError, build_config
from tests.unit.test_pipeline_exits import ES, NQ, feed, long_es, make


def outcomes(rows):
    return [(d[6], json.loads(d[8])) for d in rows.decisions()]


def test_an_instrument_scope_limit_from_the_config_denies_with_its_value():
    config = build_config({"sizing": {"mode": "fixed", "quantity": 2}, "portfolio": {"regime_filter": False},
                           "risk_limits": [{"scope": "instrument:ES", "max_order_quantity": 1}]}, env={})
    p2, s2, rows2 = make()
    from bridge.engine.pipeline import risk_engine_for
    p2.config = config
    p2.risk = risk_engine_for(config, list(p2.instruments.values()), p2.gate.is_open)
    p2.portfolio.config = config
    feed(p2, NQ, 0, 15000.0)
    s2.next = [long_es()]
    assert feed(p2, ES, 0, 4500.0) == []
    (outcome, inputs), = outcomes(rows2)
    assert outcome == "DENIED:RISK_MAX_ORDER_QUANTITY"
    failed = [c for c in inputs["risk"] if not c["passed"]]
    assert failed == [{"check": "max_order_quantity", "passed": False, "value": 2, "limit": 1,
                       "scope": "instrument:ES"}]


def test_an_emitted_order_shows_every_check_it_passed():
    p, s, rows = make()
    feed(p, NQ, 0, 15000.0)
    s.next = [long_es()]
    (bracket,) = feed(p, ES, 0, 4500.0)
    (outcome, inputs), = outcomes(rows)
    assert outcome == "EMITTED"
    names = {c["check"] for c in inputs["risk"]}
    assert {"collar_ticks", "max_order_quantity", "max_order_notional", "max_net", "stale_data_s"} <= names
    assert all(c["passed"] for c in inputs["risk"])


def test_a_price_outside_the_collar_is_denied():
    p, s, rows = make()
    feed(p, NQ, 0, 15000.0)
    s.next = [replace(long_es(), target_price=4500.0 + 0.25 * 401)]  # the default collar is 400 ticks
    assert feed(p, ES, 0, 4500.0) == []
    assert outcomes(rows)[0][0] == "DENIED:RISK_PRICE_COLLAR"


def test_bad_risk_limits_in_the_config_are_named():
    with pytest.raises(ConfigError) as info:
        build_config({"risk_limits": [{"scope": "instrument:ES", "max_order_quantity": -1},
                                      {"scope": "galaxy:X", "max_net": 1}]}, env={})
    text = str(info.value)
    assert "risk_limits[0] (scope 'instrument:ES'): max_order_quantity" in text
    assert "risk_limits[1] (scope 'galaxy:X')" in text
