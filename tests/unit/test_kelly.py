"""Fractional Kelly sizing (strategies/kelly.py): the formulas on known cases, caps, no-edge, extremes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.kelly import bracket_contracts, continuous_kelly, discrete_kelly, leverage_contracts, shrink_probability


@pytest.mark.parametrize("p, b, expected", [
    (0.6, 1.0, 0.2),       # even money, 60 %: bet 20 %
    (0.5, 2.0, 0.25),      # 2:1 payoff at a coin flip
    (0.55, 1.5, 0.25),     # 0.55 - 0.45 / 1.5
    (1.0, 3.0, 1.0),       # a sure win: everything
    (0.4, 1.0, 0.0),       # negative edge: nothing, never a short bet
    (1 / 3, 2.0, 0.0),     # exactly break-even
    (0.0, 5.0, 0.0),
])
def test_discrete_kelly_known_cases(p, b, expected):
    assert discrete_kelly(p, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("p, b", [(-0.1, 1.0), (1.1, 1.0), (0.5, 0.0), (0.5, -1.0), (0.5, math.inf), (0.5, math.nan)])
def test_discrete_kelly_refuses_nonsense(p, b):
    with pytest.raises(ValueError):
        discrete_kelly(p, b)


def test_continuous_kelly_known_cases():
    assert continuous_kelly(0.10, 0.20) == pytest.approx(2.5)
    assert continuous_kelly(0.10, 0.20, r=0.02) == pytest.approx(2.0)
    assert continuous_kelly(0.01, 0.20, r=0.02) == 0.0
    with pytest.raises(ValueError):
        continuous_kelly(0.1, 0.0)


ES = dict(entry=4000.0, stop=3996.0, target=4008.0, point_value=50.0)   # $200 risk, $400 reward: b = 2
MES = dict(entry=4000.0, stop=3996.0, target=4008.0, point_value=5.0)


def test_es_bracket_on_a_100k_account():
    s = bracket_contracts(p=0.5, equity=100_000, cap=100, **ES)
    assert s.kelly_fraction == pytest.approx(0.25)
    assert s.shrunk_fraction == pytest.approx(0.125)        # half the edge
    assert s.applied_fraction == pytest.approx(0.03125)     # a quarter Kelly
    assert s.contracts == 15                                # 3,125 at risk / 200 per contract
    assert "0.25 Kelly" in s.explain()


def test_the_cap_always_wins():
    s = bracket_contracts(p=0.5, equity=10_000_000, cap=5, **ES)
    assert s.uncapped_contracts == 1562 and s.contracts == 5 and "capped at 5" in s.reason


def test_small_accounts_size_sensibly_with_micros():
    assert bracket_contracts(p=0.5, equity=25_000, cap=100, **ES).contracts == 3
    assert bracket_contracts(p=0.5, equity=25_000, cap=100, **MES).contracts == 39
    tiny = bracket_contracts(p=0.5, equity=1_000, cap=100, **ES)
    assert tiny.contracts == 0 and "too small" in tiny.reason


def test_costs_are_taken_out_of_the_payoff():
    with_costs = bracket_contracts(p=0.5, equity=100_000, cap=100, cost_per_contract=25.0, **ES)
    assert with_costs.kelly_fraction == pytest.approx(0.5 - 0.5 / (375 / 225))
    assert with_costs.contracts < 15
    eaten = bracket_contracts(p=0.9, equity=100_000, cap=100, cost_per_contract=400.0, **ES)
    assert eaten.contracts == 0 and "no edge after costs" in eaten.reason


def test_no_edge_never_trades():
    s = bracket_contracts(p=0.30, equity=1e9, cap=1000, **ES)   # break-even is 1/3 at b = 2
    assert s.contracts == 0 and s.kelly_fraction == 0.0 and "no edge" in s.reason


def test_leverage_sizing():
    s = leverage_contracts(mu=0.10, sigma=0.20, price=4000.0, point_value=50.0, equity=1_000_000, cap=50)
    # f* 2.5, shrunk by half 1.25, a quarter 0.3125: 312,500 notional / 200,000 per contract
    assert (s.kelly_fraction, s.shrunk_fraction, s.contracts) == (pytest.approx(2.5), pytest.approx(1.25), 1)
    assert leverage_contracts(mu=-0.1, sigma=0.2, price=4000.0, point_value=50.0, equity=1e6, cap=50).contracts == 0


probabilities = st.floats(min_value=0.0, max_value=1.0)
payoffs = st.floats(min_value=0.05, max_value=20.0)


@given(p=probabilities, b=payoffs, s=st.floats(min_value=0.0, max_value=1.0))
def test_shrinkage_scales_the_kelly_fraction_linearly(p, b, s):
    expected = max(0.0, p - (1 - p) / b) * (1 - s)
    assert discrete_kelly(min(1.0, max(0.0, shrink_probability(p, b, s))), b) == pytest.approx(expected, abs=1e-9)


@given(p=probabilities, equity=st.floats(min_value=0.0, max_value=1e10), cap=st.integers(min_value=0, max_value=500),
       stop_ticks=st.integers(min_value=1, max_value=200), target_ticks=st.integers(min_value=1, max_value=400),
       point_value=st.sampled_from([50.0, 20.0, 5.0, 0.5, 2.0]), fraction=st.floats(min_value=0.01, max_value=1.0))
def test_sizing_never_exceeds_the_cap_or_the_kelly_risk(p, equity, cap, stop_ticks, target_ticks, point_value, fraction):
    entry = 4000.0
    s = bracket_contracts(p=p, entry=entry, stop=entry - 0.25 * stop_ticks, target=entry + 0.25 * target_ticks,
                          point_value=point_value, equity=equity, fraction=fraction, cap=cap)
    assert 0 <= s.contracts <= cap
    risk_per_contract = 0.25 * stop_ticks * point_value
    assert s.contracts * risk_per_contract <= s.applied_fraction * equity + 1e-6 * max(1.0, equity)
    b = target_ticks / stop_ticks
    if p <= 1 / (1 + b) + 1e-12:
        assert s.contracts == 0


@given(p=st.floats(min_value=0.4, max_value=0.99), a=st.floats(min_value=1e3, max_value=1e8),
       k=st.floats(min_value=1.0, max_value=100.0))
def test_more_equity_never_means_fewer_contracts(p, a, k):
    small = bracket_contracts(p=p, equity=a, cap=10**9, **ES).contracts
    large = bracket_contracts(p=p, equity=a * k, cap=10**9, **ES).contracts
    assert large >= small


# --------------------------------------------------------------------------- extremes, with the numbers worked out here
# Each expected value below follows from the formulas by hand (b = reward / risk, p' = be + (p - be)(1 - s),
# f = p' - (1 - p') / b, contracts = floor(f * fraction * equity / risk)), not from the code under test.


@pytest.mark.parametrize("p", [0.0, 1e-12, 1e-6, 0.01])
def test_p_near_zero_never_trades_even_on_a_huge_account(p):
    s = bracket_contracts(p=p, equity=1e15, cap=10**9, **ES)   # break-even is 1/3 at b = 2
    assert s.contracts == 0 and s.kelly_fraction == 0.0 and s.uncapped_contracts == 0
    assert "no edge" in s.reason


def test_p_near_one_bets_the_bounded_fraction_and_the_cap_still_wins():
    # p = 1 - 1e-12 at b = 2: f* = p - (1 - p) / 2 ~ 1; shrunk halfway to break-even 1/3: p' ~ 2/3,
    # f(p') = 2/3 - (1/3) / 2 = 0.5; a quarter of it: 0.125 of equity at risk.
    s = bracket_contracts(p=1 - 1e-12, equity=1_000_000, cap=10**6, **ES)
    assert s.kelly_fraction == pytest.approx(1.0, abs=1e-9)
    assert s.shrunk_fraction == pytest.approx(0.5, abs=1e-9)
    assert s.applied_fraction == pytest.approx(0.125, abs=1e-9)
    assert s.contracts == 625                                   # 125,000 at risk / 200 per contract
    assert bracket_contracts(p=1.0, equity=1_000_000, cap=7, **ES).contracts == 7
    # p = 1 exactly, no shrinkage, full Kelly: the whole account at risk, one stop per contract
    full = bracket_contracts(p=1.0, equity=1_000_000, cap=10**6, fraction=1.0, shrinkage=0.0, **ES)
    assert full.applied_fraction == 1.0 and full.contracts == 5_000
    assert bracket_contracts(p=1.0, equity=1_000_000, cap=3, fraction=1.0, shrinkage=0.0, **ES).contracts == 3


def test_huge_accounts_are_exact_and_capped():
    # 0.03125 of $1e12 at $200 per ES contract: 156,250,000 contracts before the cap; no float trouble.
    s = bracket_contracts(p=0.5, equity=1e12, cap=10, **ES)
    assert s.uncapped_contracts == 156_250_000 and s.contracts == 10 and "capped at 10" in s.reason
    lev = leverage_contracts(mu=0.10, sigma=0.20, price=4000.0, point_value=50.0, equity=1e12, cap=25)
    assert lev.uncapped_contracts == 1_562_500 and lev.contracts == 25   # 0.3125 * 1e12 / 200,000


@pytest.mark.parametrize("equity, root, expected", [
    (0.0, "ES", 0), (-5_000.0, "ES", 0),    # no equity: nothing, never a negative count
    (6_399.0, "ES", 0), (6_400.0, "ES", 1),  # 0.03125 * 6,400 = 200 = one ES stop
    (639.0, "MES", 0), (640.0, "MES", 1),    # MES: $20 per contract at risk
    (64.0, "MYM", 1), (63.0, "MYM", 0),      # MYM ($0.50 a point), 4-point stop: $2 per contract
])
def test_tiny_accounts_size_to_whole_contracts_or_nothing(equity, root, expected):
    pv = {"ES": 50.0, "MES": 5.0, "MYM": 0.5}[root]
    s = bracket_contracts(p=0.5, entry=4000.0, stop=3996.0, target=4008.0, point_value=pv, equity=equity, cap=100)
    assert s.contracts == expected
    if equity <= 0:
        assert s.reason == "no equity"
    elif expected == 0:
        assert "too small" in s.reason


@given(p=st.one_of(st.floats(0.0, 1e-3), st.floats(1 - 1e-3, 1.0)), equity=st.floats(0.0, 1e13),
       cap=st.integers(0, 10**6), b_ticks=st.integers(1, 400))
def test_extreme_p_and_equity_stay_within_cap_and_kelly(p, equity, cap, b_ticks):
    s = bracket_contracts(p=p, entry=4000.0, stop=3999.0, target=4000.0 + 0.25 * b_ticks, point_value=50.0,
                          equity=equity, cap=cap)
    assert 0 <= s.contracts <= cap
    assert 0.0 <= s.shrunk_fraction <= s.kelly_fraction <= 1.0
    assert s.contracts * 50.0 <= s.applied_fraction * equity * (1 + 1e-9) + 1e-6
    b = 0.25 * b_ticks                                  # reward 12.5 * b_ticks / risk 50
    if p <= 1 / (1 + b):
        assert s.contracts == 0
