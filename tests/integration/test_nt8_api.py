"""The NT8 members the strategy uses are those of the Help Guide (ninjascript/Simulator/nt8-api.txt).

bridge/nt8/api_check.py reads the compiled strategy with Mono.Cecil (in the Mono that pythonnet hosts) and
checks every member of the simulator's NinjaTrader.* types it uses against the list; the list is in
turn checked against the simulator assembly, both ways. Sample strategies under nt8api_sample/ prove
that the checker passes what it should and fails what it should; the last test checks the real
strategy (ninjascript/Strategies).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.nt8 import api_check as nt8api
from bridge.nt8.ninjascript import (FRAMEWORK_REFERENCES, NINJASCRIPT, SIMULATOR_DLL, BuildError, build, compile_library,
                                find_mcs, simulator_sources)

SAMPLE = Path(__file__).parent / "nt8api_sample"
STRATEGIES = NINJASCRIPT / "Strategies"


@pytest.fixture(scope="module")
def cecil():
    """Mono hosted through pythonnet (pythonnet.load is a no-op when the session's `cs` fixture has
    already loaded it: one Mono per process) and Mono.Cecil referenced into it."""
    if shutil.which("mcs") is None or shutil.which("mono") is None:
        pytest.skip("Mono (mcs, mono) is not installed (apt-get install mono-devel; .ci/run installs it)")
    import pythonnet

    pythonnet.load("mono")
    return nt8api.load_cecil()


def _compile_lenient(sources: list[Path], out: Path) -> Path:
    """mcs without warnings as errors: the Api alone leaves SimAccount's fields unassigned (CS0649)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [find_mcs(), "-langversion:7.2", "-sdk:4.8", "-target:library", "-nologo", f"-out:{out}", *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"mcs failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return out


@pytest.fixture(scope="module")
def simulator_dll(cecil, tmp_path_factory) -> Path:
    """The simulator, whole; or, while its engine does not compile (work in progress), its NT8 surface
    (Api/*.cs and the ISimHost interface it calls), which is all these checker tests need."""
    out = tmp_path_factory.mktemp("nt8api-sim") / SIMULATOR_DLL
    try:
        return compile_library(simulator_sources(), out)
    except BuildError:
        api = sorted((NINJASCRIPT / "Simulator" / "Api").glob("*.cs"))
        return _compile_lenient(api + [NINJASCRIPT / "Simulator" / "Engine" / "SimHost.cs"], out)


def _sample(name: str, simulator: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nt8api-sample") / f"{name}.dll"
    return compile_library([SAMPLE / f"{name}.cs"], out, (str(simulator), *FRAMEWORK_REFERENCES))


@pytest.fixture(scope="module")
def good_sample(simulator_dll, tmp_path_factory) -> Path:
    return _sample("GoodStrategy", simulator_dll, tmp_path_factory)


@pytest.fixture(scope="module")
def bad_sample(simulator_dll, tmp_path_factory) -> Path:
    return _sample("BadStrategy", simulator_dll, tmp_path_factory)


def _edited_list(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of nt8-api.txt with one edit (the test fails if ``old`` is not found exactly once)."""
    text = nt8api.API_LIST.read_text(encoding="utf-8")
    assert len(re.findall(old, text, re.M)) == 1, f"{old!r} should match exactly one place of nt8-api.txt"
    path = tmp_path / "nt8-api.txt"
    path.write_text(re.sub(old, new, text, flags=re.M), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the list itself


def test_api_list_follows_its_format_and_names_a_page_for_every_verified_entry():
    api = nt8api.parse_api_list()
    verified = [e for e in api.entries if e.verified]
    unverified = [e for e in api.entries if not e.verified]
    assert len(verified) > 100 and unverified
    for e in verified:
        assert re.match(r"[a-z0-9_]+", e.sources), f"line {e.line}: no Help Guide page in [{e.sources}]"
        assert e.allow is None
    for e in unverified:
        assert e.sources.startswith("found:"), f"line {e.line}: say what was found instead of a Help Guide page"


def test_api_list_refuses_a_line_without_its_page(tmp_path):
    path = _edited_list(tmp_path, r"^(property\s+Order\.Filled : int \{ get; \})\s+\[order\]$", r"\1")
    with pytest.raises(nt8api.ApiListError, match="Order.Filled"):
        nt8api.parse_api_list(path)


def test_api_list_and_simulator_match_exactly(simulator_dll):
    report = nt8api.check_list(simulator_dll)
    assert report.ok, str(report)


@pytest.mark.parametrize("old, new, expected", [
    # a public member of the simulator that the list forgets
    (r"^property\s+Strategy\.Slippage .*\n", "",
     "the simulator's public 'property Strategy.Slippage : int { get; set; }' is not on nt8-api.txt"),
    # a parameter name that differs
    (r"int quantity, double limitPrice, double stopPrice, string oco, string signalName\) : Order",
     "int qty, double limitPrice, double stopPrice, string oco, string signalName) : Order",
     "differs from the simulator's 'method Strategy.SubmitOrderUnmanaged(int selectedBarsInProgress"),
    # an enum value that differs (NT8 numbers MarketPosition Long 0, Short 1, Flat 2)
    (r"MarketPosition \{ Flat = 2,", "MarketPosition { Flat = 0,", "MarketPosition.Flat = 0 on the list, 2 in the simulator"),
    # an enum member the simulator has and the list forgets
    (r"^member\s+State\.Finalized .*\n", "", "the simulator's State.Finalized = 9 is not listed"),
    # a listed member the simulator does not have
    (r"^(method\s+Strategy\.CancelOrder.*)$", r"\1\nmethod Strategy.EnterLong() : Order   [enterlong]",
     "'method Strategy.EnterLong() : Order' is not in the simulator assembly"),
])
def test_list_check_catches_drift_between_list_and_simulator(simulator_dll, tmp_path, old, new, expected):
    report = nt8api.check_list(simulator_dll, _edited_list(tmp_path, old, new))
    assert not report.ok
    assert any(expected in p for p in report.problems), str(report)


# --------------------------------------------------------------------------- the checker, on samples


def test_checker_passes_a_strategy_that_uses_only_listed_members(simulator_dll, good_sample):
    report = nt8api.check_strategy(good_sample, simulator_dll, sources=[SAMPLE / "GoodStrategy.cs"])
    assert report.ok, str(report)
    how = {u.key: u.how for u in report.uses}
    # what the checker must have seen in the IL, of every sort
    assert how["method:Strategy.SubmitOrderUnmanaged(int,OrderAction,OrderType,int,double,double,string,string)"] == "calls"
    assert how["method:Strategy.OnOrderUpdate(Order,double,double,int,int,double,OrderState,DateTime,ErrorCode,string)"] \
        == "overrides"
    assert how["method:Strategy.OnStateChange()"] == "overrides"
    assert "applies" in how["ctor:NinjaScriptPropertyAttribute()"]
    assert how["property:Order.Filled"] == "reads"
    assert how["property:Strategy.IsUnmanaged"] == "sets"
    assert how["method:Order.IsTerminalState(OrderState)"] == "calls"
    assert how["field:Globals.GeneralOptions"] == "reads"
    assert how["property:GeneralOptions.TimeZoneInfo"] == "reads"  # not in the Help Guide, allowed on its line
    assert how["ctor:Strategy()"] == "constructs"
    assert how["type:OrderState"] == "names the type"
    assert how["type:BarsPeriodType"] == "names the type"


def test_checker_fails_a_strategy_that_uses_members_outside_the_help_guide(simulator_dll, bad_sample):
    report = nt8api.check_strategy(bad_sample, simulator_dll, sources=[SAMPLE / "BadStrategy.cs"])
    assert not report.ok
    text = str(report)
    assert "constructs 'ctor Order()', which is not in the Help Guide" in text
    assert "OnOrderUpdate names its parameters" in text and "nativeError" in text
    finalized = [p for p in report.problems if "State.Finalized" in p]
    assert len(finalized) == 1 and finalized[0].startswith("BadStrategy.cs:19 ")  # code, not the comment on line 9


def test_checker_names_a_used_member_that_is_missing_from_the_list(simulator_dll, good_sample, tmp_path):
    api = _edited_list(tmp_path, r"^property\s+Strategy\.IsFillLimitOnTouch .*\n", "")
    report = nt8api.check_strategy(good_sample, simulator_dll, api, sources=[SAMPLE / "GoodStrategy.cs"])
    assert [p for p in report.problems if "IsFillLimitOnTouch" in p] == [
        "the strategy sets 'property Strategy.IsFillLimitOnTouch : bool { get; set; }', which is not on nt8-api.txt: "
        "check it on its NT8 Help Guide page (probably https://ninjatrader.com/support/helpGuides/nt8/"
        "isfilllimitontouch.htm) and add it with that page, or under 'not in the Help Guide' with what you found"]


def test_checker_reports_a_signature_that_differs_from_the_list(simulator_dll, good_sample, tmp_path):
    api = _edited_list(tmp_path, r"string oco, string signalName\) : Order", "string oco, string name) : Order")
    report = nt8api.check_strategy(good_sample, simulator_dll, api, sources=[SAMPLE / "GoodStrategy.cs"])
    assert len(report.problems) == 1, str(report)
    assert "the strategy calls 'method Strategy.SubmitOrderUnmanaged(" in report.problems[0]
    assert "string oco, string name) : Order' [submitorderunmanaged]" in report.problems[0]


def test_checker_wants_a_justification_for_a_member_outside_the_help_guide(simulator_dll, good_sample, tmp_path):
    api = _edited_list(tmp_path, r"^(property\s+GeneralOptions\.TimeZoneInfo .*\])\s+allow: .*$", r"\1")
    report = nt8api.check_strategy(good_sample, simulator_dll, api, sources=[SAMPLE / "GoodStrategy.cs"])
    assert len(report.problems) == 1, str(report)
    assert report.problems[0].startswith("the strategy reads 'property GeneralOptions.TimeZoneInfo : TimeZoneInfo "
                                         "{ get; }', which is not in the Help Guide")
    assert "allow: <reason>" in report.problems[0]


# --------------------------------------------------------------------------- the real strategy


def test_strategy_uses_only_nt8_members_of_the_help_guide(cecil, tmp_path_factory):
    sources = sorted(STRATEGIES.rglob("*.cs"))
    assert sources, "ninjascript/Strategies/ has no .cs file: the strategy that ships to NT8 is missing"
    try:
        built = build(tmp_path_factory.mktemp("nt8api-build"), force=True)
    except BuildError as exc:
        pytest.fail(f"the strategy does not build against the simulator (with ninjascript/AddOns):\n{exc}")
    report = nt8api.check_strategy(built.ninjascript, built.simulator, sources=sources)
    assert report.ok, str(report)
    assert any(u.how == "overrides" for u in report.uses), "no NT8 override found: is this a strategy?"
