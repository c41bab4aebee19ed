"""Every benchmark in bench/ runs its real workload end to end in smoke mode (``--smoke``: tiny sizes),
so that a benchmark cannot rot unnoticed: one whose workload no longer produces what it measures (no
BRACKET, no fill, no row stored, no feature computed) exits non-zero, and so fails here. The figures
of a smoke run mean nothing; only the exit code and that figures were printed are checked, never a
time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BENCH = REPO_ROOT / "bench"
# smoke.py: their --smoke; nautilus_ema_bracket.py: bench_research.py's other side, run by NautilusTrader's own Python
NOT_BENCHES = {"smoke.py", "nautilus_ema_bracket.py"}
BENCHES = sorted(p.name for p in BENCH.glob("*.py") if p.name not in NOT_BENCHES)

# A headline figure each smoke run must print: its label, then a number.
FIGURES = {
    "bench_analytics.py": r"analytics store insert\s+:\s+[1-9][\d,]* rows/s",
    "bench_audit.py": r"AuditChain\.append\s+\d",
    "bench_console.py": r"event -> DOM painted, 1 browser\s+n=\s*[1-9]",
    "bench_db_lookups.py": r"History\.decision: .+\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+",
    "bench_drift.py": r"DissimilarityGuard\.index\s+\d",
    "bench_failover.py": r"failover: leader killed -> session with the standby\s+n=\s*1\s+p50\s+\d",
    "bench_features.py": r"OnlineFeatures\.on_bar\s+\d",
    "bench_feeds.py": r"p99\(feeds\) / p99\(none\)\s+=\s+\d",
    "bench_fuzz.py": r"hostile messages/s, sent and answered\s+[1-9][\d,]*",
    "bench_inference.py": r"ensemble: OnnxEnsemble\.predict \(total_us\)\s+\d",
    "bench_ingest.py": r"sidecar: first send -> last row committed\s+\d",
    "bench_nt8sim.py": r"tick -> BRACKET \(entry submitted\+filled\)\s+[1-9]",
    "bench_outage.py": r"catch-up from the spool\s+:\s+[1-9][\d,]* rows/s",
    "bench_research.py": r"research / numpy ticks/s = \d",
    "bench_risk.py": r"RiskEngine\.check_new\s+n=\s*[\d,]+\s+p50\s+\d",
    "bench_roundtrip.py": r"tick -> BRACKET \(sidecar child\)\s+\d+\s+\d",
    "bench_soak.py": r"last window / first window, round-trip p50\s+\d",
    "bench_storage.py": r"StorageWriter end to end :\s+\d",
    "bench_strategies.py": r"with \S+ \+ portfolio:\s+p50\s+\d",
    "quality_report.py": r"ES 06-18\.Last\.txt\.gz\s+\d",
}
NEEDS_SHARED_DATA = {"bench_console.py", "bench_failover.py", "bench_features.py", "bench_nt8sim.py",
                     "bench_research.py", "bench_strategies.py", "quality_report.py"}
NEEDS_MONO = {"bench_failover.py", "bench_nt8sim.py"}
NEEDS_PG = {"bench_failover.py"}  # given the test server with --pg
NEEDS_IB_ASYNC = {"bench_feeds.py"}  # the IB feed's client, against the fake TWS
NEEDS_CHROMIUM = {"bench_console.py"}  # Debian's chromium and chromium-driver, with selenium
# Mono and four playbacks up to the first entry of ES 06-18, at event 25,500: about half a minute; the console's
# four phases, each with a sidecar started and (two of them) a Chromium: about half a minute too
SLOW = {"bench_console.py", "bench_failover.py", "bench_nt8sim.py"}


def run_bench(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    # the timeout only stops a hung benchmark from hanging the suite; nothing here is timed
    return subprocess.run([sys.executable, str(BENCH / name), *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900)


def failure_report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def test_every_benchmark_has_a_smoke_figure() -> None:
    assert set(FIGURES) == set(BENCHES), "a benchmark without a figure to look for in its smoke run, or gone"


def marks(name: str) -> list[pytest.MarkDecorator]:
    slow = [pytest.mark.slow] if name in SLOW else []
    return slow + ([pytest.mark.shared_data] if name in NEEDS_SHARED_DATA else [])


@pytest.mark.parametrize("name", [pytest.param(n, marks=marks(n)) for n in BENCHES])
def test_smoke_run_produces_figures(name: str, request: pytest.FixtureRequest) -> None:
    if name in NEEDS_SHARED_DATA:
        request.getfixturevalue("shared_data")  # skips when ../shared/data is truly absent
    if name in NEEDS_IB_ASYNC:
        pytest.importorskip("ib_async", reason="ib_async is not installed (pip install ib_async): the IB feed needs it")
    if name in NEEDS_MONO and shutil.which("mcs") is None:
        pytest.skip("Mono's mcs is not installed (apt-get install mono-devel; .ci/run installs it)")
    if name in NEEDS_CHROMIUM:
        from tests.integration.console_support import chromium_missing

        if chromium_missing():
            pytest.skip(chromium_missing())
    extra = ("--pg", request.getfixturevalue("pg_url")) if name in NEEDS_PG else ()
    proc = run_bench(name, "--smoke", *extra)
    assert proc.returncode == 0, failure_report(proc)
    assert "SMOKE RUN" in proc.stderr, failure_report(proc)
    assert re.search(FIGURES[name], proc.stdout), f"no figure matching {FIGURES[name]!r}\n{failure_report(proc)}"


def test_roundtrip_smoke_fails_when_the_sidecar_does_not_trade(tmp_path: Path) -> None:
    config = tmp_path / "no-strategy.toml"
    config.write_text('[strategy]\nnames = "none"\n', encoding="utf-8")
    proc = run_bench("bench_roundtrip.py", "--smoke", "--no-inprocess", "--config", str(config))
    assert proc.returncode == 1, failure_report(proc)
    assert "FAILED" in proc.stderr and "no BRACKET" in proc.stderr, failure_report(proc)
    assert "Traceback" not in proc.stderr, failure_report(proc)


def test_fuzz_smoke_fails_when_the_sidecar_does_not_serve_the_clean_session(tmp_path: Path) -> None:
    config = tmp_path / "no-strategy.toml"
    config.write_text('[strategy]\nnames = "none"\n', encoding="utf-8")
    proc = run_bench("bench_fuzz.py", "--smoke", "--config", str(config))
    assert proc.returncode == 1, failure_report(proc)
    assert "FAILED" in proc.stderr and "clean session was not served" in proc.stderr, failure_report(proc)
    assert "Traceback" not in proc.stderr, failure_report(proc)


@pytest.mark.shared_data
def test_strategies_smoke_fails_when_nothing_decides(shared_data: Path) -> None:
    proc = run_bench("bench_strategies.py", "--smoke", "--strategies", "none")
    assert proc.returncode == 1, failure_report(proc)
    assert "FAILED" in proc.stderr and "no decision" in proc.stderr, failure_report(proc)


@pytest.mark.shared_data
def test_research_smoke_fails_when_the_research_run_places_no_bracket(shared_data: Path) -> None:
    # the file's first bracket comes at event 25,528
    proc = run_bench("bench_research.py", "--smoke", "--limit", "20000")
    assert proc.returncode == 1, failure_report(proc)
    assert "FAILED" in proc.stderr and "no bracket placed" in proc.stderr, failure_report(proc)
    assert "Traceback" not in proc.stderr, failure_report(proc)


def test_quality_report_smoke_fails_without_data(tmp_path: Path) -> None:
    proc = run_bench("quality_report.py", "--smoke", "--data", str(tmp_path))
    assert proc.returncode == 1, failure_report(proc)
    assert "FAILED" in proc.stderr and "no NT8 export" in proc.stderr, failure_report(proc)


@pytest.mark.shared_data
@pytest.mark.slow
def test_console_smoke_fails_when_the_page_paints_no_event(shared_data: Path) -> None:
    from tests.integration.console_support import chromium_missing

    if chromium_missing():
        pytest.skip(chromium_missing())
    # the Models view shows stored rows only: no event of the stream changes it, so nothing is measured
    proc = run_bench("bench_console.py", "--smoke", "--view", "models")
    assert proc.returncode == 1, failure_report(proc)
    assert "FAILED" in proc.stderr and "painted no event" in proc.stderr, failure_report(proc)
    assert "Traceback" not in proc.stderr, failure_report(proc)
