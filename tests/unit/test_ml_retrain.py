"""Retraining under apscheduler with a controlled clock (no sleeping): the schedule fires after the
Friday close, a missed run is done once or skipped past its grace, and a challenger replaces the
champion only through the promotion gates; and one real quick retraining on the team's ES minute bars."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.base import BaseScheduler

from ml.registry import Registry
from ml.retrain import PARITY_TOLERANCE, RETRAINER, Retrainer, promotion_gates, trigger_from_text

UTC = dt.timezone.utc


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def ns(self) -> int:
        return int(self.now.timestamp()) * 1_000_000_000


class ClockedScheduler(BaseScheduler):
    """apscheduler's own job store, trigger arithmetic, coalescing, misfire rule and executor, with no
    thread of its own: the test moves the clock and asks it to process the jobs that are due."""

    def wakeup(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)

    def run_due(self) -> None:
        self._process_jobs()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock(dt.datetime(2026, 11, 30, 0, 0, tzinfo=UTC))  # a Monday

    class FrozenDatetime(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return c.now if tz is None else c.now.astimezone(tz)

    import apscheduler.executors.base as executors_base
    import apscheduler.schedulers.base as schedulers_base
    monkeypatch.setattr(schedulers_base, "datetime", FrozenDatetime)
    monkeypatch.setattr(executors_base, "datetime", FrozenDatetime)
    return c


def fake_train(clock: Clock, log_losses: list[float], parity: float = 1e-7):
    """Registers a model the way ml.train does (through the real registry), with the given out-of-sample
    log-loss; what is under test here is the schedule and the gates, not the fitting."""
    def train(paths, root: Path, db_url, cfg):
        staging = root.parent / f"staging-{clock.ns()}"
        (staging / "members").mkdir(parents=True)
        (staging / "members" / "lightgbm.onnx").write_bytes(b"model bytes %d" % clock.ns())
        meta = {"feature_names": ["ret_1"], "feature_set_version": "mlf-1", "label_config": {"barrier_atr": 3.0},
                "train_start_ns": 0, "train_end_ns": clock.ns(), "data_sha256": f"{clock.ns():064x}",
                "code_version": "test", "window_days": cfg.window_days,
                "metrics": {"evaluation": {"ensemble": {"log_loss": log_losses.pop(0)},
                                           "base_rate_model": {"log_loss": 0.6930}}},
                "parity_max_abs": {"lightgbm": parity}, "expires_ns": clock.ns() + 14 * 86_400 * 10**9}
        return Registry(root, db_url).register(staging, meta, now_ns=clock.ns())
    return train


def run(scheduler: ClockedScheduler, clock: Clock, until: dt.datetime, step=dt.timedelta(minutes=15)) -> None:
    while clock.now < until:
        clock.now += step
        scheduler.run_due()


def make(tmp_path, clock, log_losses, **kw) -> tuple[Retrainer, ClockedScheduler]:
    retrainer = Retrainer([], tmp_path / "registry", f"sqlite:///{tmp_path / 'r.sqlite'}",
                          train_fn=fake_train(clock, log_losses), clock=clock.ns, window_days=30, **kw)
    scheduler = ClockedScheduler(timezone=UTC, executors={"default": DebugExecutor()})
    retrainer.schedule(scheduler, trigger_from_text("cron:fri 16:30 America/Chicago"))
    scheduler.start()
    return retrainer, scheduler


def started(retrainer: Retrainer) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(r["started_ns"] / 1e9, UTC) for r in retrainer.history]


def test_retraining_fires_after_each_friday_close_and_registers_a_challenger(tmp_path, clock):
    retrainer, scheduler = make(tmp_path, clock, [0.69, 0.69])
    run(scheduler, clock, dt.datetime(2026, 12, 14, tzinfo=UTC))
    # 16:30 in Chicago is 22:30 UTC in winter (CST)
    assert started(retrainer) == [dt.datetime(2026, 12, 4, 22, 30, tzinfo=UTC),
                                  dt.datetime(2026, 12, 11, 22, 30, tzinfo=UTC)]
    models = Registry(tmp_path / "registry").list()
    assert [m.status for m in models] == ["challenger", "challenger"]  # never promoted by itself
    assert all(r["promoted"] is False for r in retrainer.history)


def test_a_missed_run_is_done_once_within_its_grace_and_skipped_after(tmp_path, clock):
    retrainer, scheduler = make(tmp_path, clock, [0.69, 0.69, 0.69])
    clock.now = dt.datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
    scheduler.run_due()
    clock.now = dt.datetime(2026, 12, 5, 1, 0, tzinfo=UTC)  # the machine slept through 22:30; 2.5 h late
    scheduler.run_due()
    scheduler.run_due()
    assert started(retrainer) == [dt.datetime(2026, 12, 5, 1, 0, tzinfo=UTC)]
    clock.now = dt.datetime(2026, 12, 12, 9, 0, tzinfo=UTC)  # 10.5 h late: past the 6 h grace, skipped
    scheduler.run_due()
    assert len(retrainer.history) == 1
    run(scheduler, clock, dt.datetime(2026, 12, 19, tzinfo=UTC))
    assert started(retrainer)[-1] == dt.datetime(2026, 12, 18, 22, 30, tzinfo=UTC)


def test_only_a_challenger_that_passes_every_gate_is_promoted(tmp_path, clock):
    retrainer, scheduler = make(tmp_path, clock, [0.7001, 0.6900, 0.6890, 0.6880], auto_promote=True)
    registry = Registry(retrainer.registry_root, retrainer.db_url)
    run(scheduler, clock, dt.datetime(2026, 12, 5, tzinfo=UTC))
    assert retrainer.history[-1]["promoted"] is False  # worse than the base rate: no skill
    assert "no skill" in retrainer.history[-1]["gate_reasons"][0]
    run(scheduler, clock, dt.datetime(2026, 12, 12, tzinfo=UTC))
    first = retrainer.history[-1]
    assert first["promoted"] is True and registry.champion().model_id == first["model_id"]  # no champion yet
    events = registry.events(first["model_id"])
    assert any(e.get("operator") == RETRAINER for e in events), events
    run(scheduler, clock, dt.datetime(2026, 12, 19, tzinfo=UTC))
    second = retrainer.history[-1]
    assert second["promoted"] is False and "shadow A/B" in " ".join(second["gate_reasons"])
    assert registry.champion().model_id == first["model_id"]  # the champion stays without an A/B verdict
    retrainer.ab_decision = lambda model_id: "promote"
    run(scheduler, clock, dt.datetime(2026, 12, 26, tzinfo=UTC))
    assert retrainer.history[-1]["promoted"] is True
    assert registry.champion().model_id == retrainer.history[-1]["model_id"]


def test_gates_name_parity_and_expiry():
    meta = {"metrics": {"evaluation": {"ensemble": {"log_loss": 0.68}, "base_rate_model": {"log_loss": 0.69}}},
            "parity_max_abs": {"lstm": 3e-3}, "expires_ns": 10}
    g = promotion_gates(meta, has_champion=False, ab_decision=None, now_ns=11)
    assert not g.passed and any("parity" in r for r in g.reasons) and "expired" in g.reasons


def test_a_bad_schedule_says_how_to_write_one():
    with pytest.raises(ValueError, match="cron:fri 16:30"):
        trigger_from_text("weekly")
    assert json.dumps(str(trigger_from_text("interval:24")))


@pytest.mark.shared_data
def test_a_real_quick_retraining_registers_a_challenger_and_its_gate_verdicts_follow_its_figures(shared_data, tmp_path):
    """ml.train itself (quick) on the newest week of real ES minute bars, through Retrainer.run_once with
    auto-promotion on: the challenger is in the registry, on disk and in the database, and each gate's
    verdict, and whether it was promoted, follows from the out-of-sample figures it was registered with."""
    db = tmp_path / "r.sqlite"
    retrainer = Retrainer([shared_data / "nt8" / "ES 12-23.Last.txt"], tmp_path / "registry", f"sqlite:///{db}",
                          quick=True, window_days=7, auto_promote=True)
    result = retrainer.run_once()
    assert retrainer.history == [result]

    registry = Registry(retrainer.registry_root, retrainer.db_url)
    (model,) = registry.list()
    assert model.model_id == result["model_id"] and model.in_db is True
    registry.verify(model)  # every artifact hashes to what was registered
    meta = json.loads((model.path / "model.json").read_text())
    assert meta["files"] == ["ES 12-23.Last.txt"]
    assert meta["test_end_ns"] - meta["train_start_ns"] <= 7 * 86_400 * 10**9  # the newest window only
    assert set(meta["parity_max_abs"]) == {"lightgbm", "xgboost", "lstm", "transformer", "meta"}

    ev = meta["metrics"]["evaluation"]
    ensemble, base_rate = ev["ensemble"]["log_loss"], ev["base_rate_model"]["log_loss"]
    worst_parity = max(meta["parity_max_abs"].values())
    failed = {"no skill": not ensemble < base_rate, "ONNX parity": not worst_parity <= PARITY_TOLERANCE}
    reasons = result["gate_reasons"]
    # not expired (14 days from now) and no champion to compare with: only these two gates can fail
    assert len(reasons) == sum(failed.values())
    for gate, fails in failed.items():
        assert sum(r.startswith(gate) for r in reasons) == fails, (gate, reasons)
    if failed["no skill"]:
        assert any(f"{ensemble:.5f}" in r and f"{base_rate:.5f}" in r for r in reasons), reasons
    if failed["ONNX parity"]:
        assert any(f"{worst_parity:.2e}" in r for r in reasons), reasons
    assert meta["expires_ns"] > result["finished_ns"]
    assert result["gates_passed"] is not any(failed.values())
    assert result["promoted"] is result["gates_passed"]  # auto-promotion on: the gates alone decide

    status = "champion" if result["promoted"] else "challenger"
    assert model.status == status
    events = [(e["event"], e["operator"]) for e in registry.events(model.model_id)]
    assert events == [("register", "registry")] + ([("promote", RETRAINER)] if result["promoted"] else [])
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select model_id, status, metrics from models").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(model.model_id, status)]
    # the figures the gates judged are the ones stored in the database row
    assert json.dumps(json.loads(rows[0][2]), sort_keys=True) == json.dumps(meta["metrics"], sort_keys=True)
