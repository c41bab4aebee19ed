"""The drift rule's false-alarm rate on real 1-minute bars, and its power on shifted copies.

The numbers asserted here are the ones documented in ml/drift.py. Features are simple ones built
here with pandas (the production feature module is separate): log returns over 1, 5, 15 and 60
bars, range / close, a 60-bar volume z-score, 30-bar realised volatility, distance to the 20-bar mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bridge.data.nt8files import read_nt8
from ml.drift import (
    FALSE_ALARM_RATE_UPPER_95,
    MEASURED_FALSE_ALARM_RATE,
    SESSION_ROWS,
    DissimilarityGuard,
    DriftDetector,
    DriftReference,
)

FILES = ("ES 12-23", "MES 12-23", "MYM 12-23", "NQ 12-23")
SCALE_WITH_VOLATILITY = ["ret_1", "ret_5", "ret_15", "ret_60", "range_close", "rv_30"]


def _features(bars: pd.DataFrame) -> pd.DataFrame:
    close = bars["close"]
    log_close = np.log(close)
    log_volume = np.log1p(bars["volume"].astype(float))
    f = pd.DataFrame({
        "ret_1": log_close.diff(1), "ret_5": log_close.diff(5), "ret_15": log_close.diff(15),
        "ret_60": log_close.diff(60), "range_close": (bars["high"] - bars["low"]) / close,
        "vol_z": (log_volume - log_volume.rolling(60).mean()) / log_volume.rolling(60).std(),
        "rv_30": log_close.diff().rolling(30).std(), "dist_sma20": (close - close.rolling(20).mean()) / close,
    })
    return f.replace([np.inf, -np.inf], np.nan).dropna()


@pytest.fixture(scope="module")
def sessions(shared_data: Path) -> dict[str, tuple[list[str], list[np.ndarray]]]:
    """Per file, the feature names and the feature rows cut into consecutive one-session windows."""
    out = {}
    for name in FILES:
        f = _features(read_nt8(shared_data / "nt8" / f"{name}.Last.txt"))
        x = f.to_numpy()
        out[name] = (list(f.columns), [x[s:s + SESSION_ROWS] for s in range(0, len(x) - SESSION_ROWS + 1, SESSION_ROWS)])
    return out


@pytest.fixture(scope="module")
def interleaved(sessions):
    """Reference = the even sessions, hold-out = the odd ones: the same weeks, no regime change."""
    out = []
    for names, windows in sessions.values():
        reference = DriftReference.from_training(np.vstack(windows[0::2]), names)
        out.append((reference, windows[1::2]))
    return out


def test_false_alarm_rate_on_unshifted_hold_out(interleaved) -> None:
    alerts = [DriftDetector(ref).check(w).alert for ref, hold in interleaved for w in hold]
    assert len(alerts) == 56
    rate = sum(alerts) / len(alerts)
    assert rate <= MEASURED_FALSE_ALARM_RATE <= FALSE_ALARM_RATE_UPPER_95


def test_shifted_hold_out_alerts(interleaved) -> None:
    mean_shift, vol_x2 = [], []
    for ref, hold in interleaved:
        detector = DriftDetector(ref)
        scaled = [ref.feature_names.index(n) for n in SCALE_WITH_VOLATILITY]
        for w in hold:
            mean_shift.append(detector.check(w + 0.5 * ref.std).alert)
            v = w.copy()
            v[:, scaled] *= 2.0
            vol_x2.append(detector.check(v).alert)
    assert all(mean_shift)
    assert np.mean(vol_x2) >= 0.75  # 77 % measured (43 of 56)


def test_di_guard_on_real_hold_out(interleaved) -> None:
    for ref, hold in interleaved:
        guard = DissimilarityGuard(ref)
        rows = np.vstack(hold)
        assert np.mean(guard.index_many(rows) > guard.threshold) < 0.02  # 0.7 to 1.0 % measured
        far = rows + 3.0 * ref.std
        assert np.mean(guard.index_many(far) > guard.threshold) > 0.05
