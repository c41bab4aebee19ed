"""Round trips from a playback's fills, and the walk-forward prior update."""

from __future__ import annotations

import math
from dataclasses import replace

from bridge.core.config import Config
from bridge.nt8.fillmodel import Fill
from bridge.research.backtest import calibrated_priors, trades_from_fills
from reports.performance import TradeRecord

NAMES = ["ES 12-23", "NQ 12-23"]
PV = [50.0, 20.0]
ALGOS = {"B1": "momentum@0.2.0", "B2": "reversion@0.2.0", "B3": "spread@0.2.0", "B4": "spread@0.2.0"}


def f(bracket, role, iid, side, qty, price, commission=2.0):
    return Fill(0, bracket, role, iid, side, qty, price, commission)


def test_bracket_exits_close_their_own_lot_and_flatten_closes_the_rest_oldest_first():
    fills = [
        (100, f("B1", "ENTRY", 0, "BUY", 2, 4500.0, 4.0)),
        (110, f("B2", "ENTRY", 1, "SELL", 1, 15000.0)),
        (120, f("B1", "TARGET", 0, "SELL", 2, 4510.0, 4.0)),
        (130, f("flatten-9", "FLATTEN", 1, "BUY", 1, 14990.0)),
    ]
    trades, still_open = trades_from_fills(fills, ALGOS, NAMES, PV, {}, 200)
    assert still_open == 0
    assert trades == [
        TradeRecord("momentum", "ES 12-23", 1, 2, 100, 120, 4500.0, 4510.0, 50.0, 8.0),
        TradeRecord("reversion", "NQ 12-23", -1, 1, 110, 130, 15000.0, 14990.0, 20.0, 4.0),
    ]
    assert trades[0].net_pnl == 10 * 2 * 50 - 8
    assert trades[1].net_pnl == 10 * 20 - 4


def test_a_flatten_splits_across_lots_and_commission_is_shared_by_quantity():
    fills = [
        (100, f("B3", "ENTRY", 0, "SELL", 1, 4500.0, 2.0)),
        (105, f("B4", "ENTRY", 0, "SELL", 2, 4502.0, 4.0)),
        (150, f("flatten-1", "FLATTEN", 0, "BUY", 3, 4490.0, 6.0)),
    ]
    trades, _ = trades_from_fills(fills, ALGOS, NAMES, PV, {}, 200)
    assert [(t.quantity, t.entry_price, t.exit_ns) for t in trades] == [(1, 4500.0, 150), (2, 4502.0, 150)]
    assert [t.commission for t in trades] == [2.0 + 2.0, 4.0 + 4.0]


def test_a_lot_open_at_the_end_is_closed_at_the_last_price_and_counted():
    fills = [(100, f("B1", "ENTRY", 1, "BUY", 1, 15000.0))]
    trades, still_open = trades_from_fills(fills, ALGOS, NAMES, PV, {1: 15025.0}, 500)
    assert still_open == 1
    assert (trades[0].exit_ns, trades[0].exit_price, trades[0].commission) == (500, 15025.0, 2.0)


def test_calibration_updates_the_stated_prior_with_the_earlier_windows_record():
    c = Config()
    c = replace(c, strategy=replace(c.strategy, names="momentum,spread"), sizing=replace(c.sizing, prior_strength=10))

    def t(strategy, entry, pnl):
        return TradeRecord(strategy, "ES", 1, 1, entry, entry + 1, 100.0, 100.0 + pnl, 1.0, 0.0)
    trades = [t("momentum", 1, 5), t("momentum", 2, -5), t("momentum", 3, -5),
              # one spread bet = its legs entered together: +8 and -3 is a win, -4 and +1 a loss
              t("spread", 10, 8), t("spread", 10, -3), t("spread", 20, -4), t("spread", 20, 1)]
    new, report = calibrated_priors(c, trades)
    k = 10
    assert math.isclose(new.strategy.momentum_win_prior, (c.strategy.momentum_win_prior * k + 1) / (k + 3))
    assert math.isclose(new.strategy.spread_win_prior, (c.strategy.spread_win_prior * k + 1) / (k + 2))
    assert report["spread"]["bets"] == 2 and report["momentum"]["wins"] == 1
    assert "reversion" not in report  # not asked for


def test_the_report_says_why_a_strategy_cannot_trade():
    from bridge.research.backtest import strategy_status
    c = Config()
    c = replace(c, strategy=replace(c.strategy, names="momentum,ml", ml_model=""))
    status = strategy_status(c)
    assert list(status) == ["momentum", "ml"]
    assert status["momentum"] == "ready"
    assert status["ml"].startswith("no model")   # and why: the wording is the ML strategy's (strategies/ml_strategy.py)
