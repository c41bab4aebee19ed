"""Walk-forward windows, lengths and the choice of a window's parameter set."""

from __future__ import annotations

import math

import pytest

from bridge.core.config import parse_utc
from bridge.research.walkforward import WalkForwardError, choose, iso, make_windows, parse_length

DAY = 86_400 * 10**9


def test_lengths():
    assert parse_length("20d") == 20 * DAY
    assert parse_length("12h") == DAY // 2
    assert parse_length("2w") == 14 * DAY
    assert parse_length(" 1.5D ") == 36 * 3600 * 10**9
    for bad in ("20", "d", "0d", "5m", "-1d"):
        with pytest.raises(WalkForwardError, match="20d, 12h"):
            parse_length(bad)


def test_rolling_windows_step_by_the_test_and_never_overlap():
    origin = parse_utc("2023-10-10")
    windows = make_windows(origin, origin + 42 * DAY, 20 * DAY, 5 * DAY)
    assert len(windows) == 4  # tests end on days 25, 30, 35, 40 (45 is past the data)
    for w, nxt in zip(windows, windows[1:]):
        assert w.train_to - w.train_from == 20 * DAY and w.test_to - w.test_from == 5 * DAY
        assert w.train_to <= w.test_from and nxt.test_from == w.test_to
        assert nxt.train_from == w.train_from + 5 * DAY
    assert iso(windows[0].test_from) == "2023-10-30T00:00:00Z"


def test_anchored_windows_start_at_the_origin_and_grow():
    origin = parse_utc("2023-10-10")
    windows = make_windows(origin, origin + 42 * DAY, 20 * DAY, 5 * DAY, anchored=True)
    assert [w.train_from for w in windows] == [origin] * 4
    assert [(w.train_to - origin) // DAY for w in windows] == [20, 25, 30, 35]


def test_no_window_when_the_span_is_too_short():
    assert make_windows(0, 10 * DAY, 8 * DAY, 5 * DAY) == []


def test_iso_round_trips_to_the_microsecond():
    for text in ("2023-10-16T13:30:00Z", "2023-10-16T13:30:00.250000Z"):
        assert iso(parse_utc(text.replace("Z", "+00:00"))) == text


def test_the_best_training_sharpe_wins_first_in_grid_order_on_ties_and_undefined_ranks_last():
    assert choose([0.5, 1.5, -2.0]) == 1
    assert choose([1.0, 2.0, 2.0]) == 1
    assert choose([math.nan, None, -3.0]) == 2
    assert choose([None, math.nan]) == 0


def test_a_stream_slice_is_half_open():
    import numpy as np

    from bridge.nt8.playback import TickStream
    ts = np.array([10, 20, 20, 30, 40], dtype=np.int64)
    nan = np.full(5, np.nan)
    stream = TickStream(["ES"], np.zeros(5, np.int32), ts, np.arange(5.0), nan, nan, np.ones(5, np.int64),
                        np.zeros(5, bool), nan, nan, nan)
    part = stream.between(20, 40)
    assert part.ts_ns.tolist() == [20, 20, 30] and part.price.tolist() == [1.0, 2.0, 3.0]
    assert len(stream.between(41, 50)) == 0 and len(stream.between(0, 10)) == 0
    assert stream.before(30).ts_ns.tolist() == [10, 20, 20]
