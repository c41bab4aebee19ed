"""ml.cv: purged, embargoed walk-forward splits never leak a label or a sample into training."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.cv import PurgedWalkForward

MIN = 60 * 1_000_000_000


def samples(n: int, seed: int, instruments: int = 1, max_horizon: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Pooled minute samples of several instruments (shared t0s), label ends up to ``max_horizon`` bars on."""
    rng = np.random.default_rng(seed)
    t0 = np.sort(np.repeat(np.arange(n // instruments + 1) * MIN, instruments)[:n])
    t1 = t0 + rng.integers(1, max_horizon + 1, n) * MIN
    return t0, t1


def check_folds(cv: PurgedWalkForward, t0: np.ndarray, t1: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    folds = list(cv.split(t0, t1))
    assert len(folds) == cv.n_splits
    embargo = cv.embargo_ns(t0)
    previous_stop = None
    for train, test in folds:
        assert len(train) and len(test)
        assert np.intersect1d(train, test).size == 0  # no test sample in training
        first_t0, last_t1 = t0[test].min(), t1[test].max()
        # purged: no training label interval [t0, t1] overlaps the test span [first t0, last t1]
        assert not np.any((t0[train] <= last_t1) & (t1[train] >= first_t0))
        # embargo: no training entry within the embargo before the test
        assert np.all(t0[train] < first_t0 - embargo)
        # test windows are contiguous, in order, and do not split an instant
        assert np.array_equal(test, np.arange(test[0], test[-1] + 1))
        if previous_stop is not None:
            assert test[0] == previous_stop
        assert test[0] == 0 or t0[test[0] - 1] < t0[test[0]]
        previous_stop = test[-1] + 1
        if cv.max_train is not None:
            assert train.min() >= test[0] - cv.max_train
    assert previous_stop == len(t0)  # the last window reaches the end
    return folds


def test_default_split_cuts_equal_windows_after_a_first_training_block():
    t0 = np.arange(100) * MIN
    folds = check_folds(PurgedWalkForward(n_splits=4), t0, t0)
    assert [(f[1][0], f[1][-1]) for f in folds] == [(20, 39), (40, 59), (60, 79), (80, 99)]
    assert folds[0][0].tolist() == list(range(20))  # t1 == t0 and no embargo: nothing purged


def test_purging_drops_labels_that_end_inside_the_test():
    t0 = np.arange(100) * MIN
    t1 = t0 + 5 * MIN
    train, test = next(PurgedWalkForward(n_splits=4).split(t0, t1))
    assert test[0] == 20
    assert train.tolist() == list(range(15))  # samples 15..19 end at or after the first test t0


def test_embargo_in_bars_and_as_a_fraction():
    t0 = np.arange(100) * MIN
    train, _ = next(PurgedWalkForward(n_splits=4, embargo_bars=3).split(t0, t0))
    assert train.tolist() == list(range(17))
    cv = PurgedWalkForward(n_splits=4, embargo_bars=3, embargo_fraction=0.05)
    assert cv.embargo_ns(t0) == 3 * MIN + round(0.05 * 99 * MIN)
    train, _ = next(cv.split(t0, t0))
    assert train.tolist() == list(range(13))  # 7.95 minutes before minute 20: minute 12 is the last kept


def test_rolling_and_min_train():
    t0 = np.arange(100) * MIN
    folds = check_folds(PurgedWalkForward(n_splits=3, min_train=40, max_train=25), t0, t0)
    assert folds[0][1][0] == 40
    assert all(len(train) == 25 for train, _ in folds)


def test_samples_of_one_instant_stay_in_one_window():
    t0, t1 = samples(99, seed=1, instruments=4)
    folds = check_folds(PurgedWalkForward(n_splits=4, embargo_bars=2), t0, t1)
    for _, test in folds:
        assert t0[test[0]] != t0[test[0] - 1]


def test_refuses_impossible_or_unsorted_input():
    t0 = np.arange(5) * MIN
    with pytest.raises(ValueError):
        list(PurgedWalkForward(n_splits=10).split(t0, t0))
    with pytest.raises(ValueError):
        list(PurgedWalkForward(n_splits=2).split(t0[::-1], t0[::-1]))
    with pytest.raises(ValueError):
        list(PurgedWalkForward(n_splits=2).split(t0, t0 - 1))
    with pytest.raises(ValueError, match="no training sample"):
        list(PurgedWalkForward(n_splits=2, embargo_bars=100).split(np.arange(30) * MIN, np.arange(30) * MIN))
    with pytest.raises(ValueError):
        PurgedWalkForward(n_splits=0)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(200, 2000), n_splits=st.integers(1, 6),
       instruments=st.integers(1, 4), embargo=st.integers(0, 20), horizon=st.integers(1, 40),
       rolling=st.sampled_from([None, 50, 300]))
def test_property_no_leak(seed, n, n_splits, instruments, embargo, horizon, rolling):
    t0, t1 = samples(n, seed, instruments, horizon)
    cv = PurgedWalkForward(n_splits=n_splits, embargo_bars=embargo, max_train=rolling)
    try:
        check_folds(cv, t0, t1)
    except ValueError as exc:  # a fold left without training data is refused, never returned empty
        assert "no training sample" in str(exc) or "cannot make" in str(exc)
