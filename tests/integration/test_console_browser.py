"""The operator console in a real browser: headless Chromium (Debian's, driven by Selenium) on a real
`nt8bridge console` process, fed by a real sidecar while a playback of the team's real ES ticks runs through
it. What the page shows is checked against the SQLite file the sidecar wrote; the kill switch is worked from
the page's dialog and checked where it acts (the NT8 side, the decisions, the audit trail); the banner is
checked with the sidecar stopped and started again.

Screenshots of each view go to the test's folder, and also to $NT8BRIDGE_SCREENSHOTS when it is set (that
is how docs/console.md's are made: NT8BRIDGE_SCREENSHOTS=docs/console).

It is one scenario (about 30-40 s: the whole ES 06-18 file, the console, a browser, two sidecar starts),
marked ``slow`` so that ``-m "not slow"`` leaves it out of a quick run; CI runs it. The page's cost under a
stream of events (at most one DOM update per 100 ms) is checked in the same playback.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the console needs the console extra: pip install nt8bridge[console]")

from bridge.core.config import load_config  # noqa: E402
from bridge.nt8.playback import load_stream, run_playback  # noqa: E402
from bridge.transport.control import send_command  # noqa: E402
from bridge.transport.sidecar import SidecarProcess, master_for  # noqa: E402
from tests.conftest import PLUMBING_CONFIG  # noqa: E402
from tests.integration.console_support import (  # noqa: E402
    WATCH_MUTATIONS,
    ConsoleProcess,
    chromium_missing,
    free_port,
    read,
    start_chromium,
    wait_for,
)

pytestmark = pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")

ES_FILE = "ES 06-18.Last.txt.gz"
POINT_VALUE = {"ES 06-18": 50.0}
SIGN = {"LONG": 1, "SHORT": -1, "FLAT": 0}
# run_playback calls its progress every 16,384 events: the page is looked at, and the switch worked, there.
# In this file the first bracket's entry fills at event 25,529 and its target at 35,427, so the position is
# open at the first pause; at the second the switch has been off for 16,384 events.
LOOK_AT = 32_768
ENABLE_AT = 49_152


def sql(db: Path, query: str, *params) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(query, params).fetchall()


class Shots:
    """Screenshots of the page: into the test's folder, and into $NT8BRIDGE_SCREENSHOTS when set."""

    def __init__(self, driver, folder: Path) -> None:
        self.driver = driver
        self.folders = [folder]
        if os.environ.get("NT8BRIDGE_SCREENSHOTS"):
            self.folders.append(Path(os.environ["NT8BRIDGE_SCREENSHOTS"]))
        for f in self.folders:
            f.mkdir(parents=True, exist_ok=True)
        self.taken: list[str] = []

    def take(self, name: str) -> None:
        png = self.driver.get_screenshot_as_png()
        for f in self.folders:
            (f / f"console-{name}.png").write_bytes(png)
        self.taken.append(name)


class Page:
    """The console page in the browser, and what a test does on it."""

    def __init__(self, driver, url: str) -> None:
        self.driver = driver
        self.url = url

    def open(self, view: str) -> None:
        if not self.driver.current_url.startswith(self.url):
            self.driver.get(self.url + "#" + view)
        else:
            self.driver.execute_script("location.hash = arguments[0];", view)
        wait_for(lambda: not self.one(f"view-{view}")["hidden"], f"the {view} view shown")

    def all(self, testid: str) -> list[dict]:
        return read(self.driver, testid)

    def one(self, testid: str) -> dict:
        found = self.all(testid)
        assert len(found) == 1, (testid, found)
        return found[0]

    def attr(self, testid: str, key: str) -> str | None:
        """``key`` of the one element ``testid``; None while there is none (not drawn yet) or several."""
        found = self.all(testid)
        return found[0].get(key) if len(found) == 1 else None

    def visible(self, testid: str) -> list[dict]:
        return [e for e in self.all(testid) if not e["hidden"]]

    def click(self, testid: str, **data: str) -> None:
        from selenium.webdriver.common.by import By

        selector = f'[data-testid="{testid}"]' + "".join(f'[data-{k.replace("_", "-")}="{v}"]' for k, v in data.items())
        self.driver.find_element(By.CSS_SELECTOR, selector).click()

    def type(self, testid: str, text: str) -> None:
        from selenium.webdriver.common.by import By

        field = self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
        field.clear()
        field.send_keys(text)

    def dialog_open(self) -> bool:
        return bool(self.driver.execute_script('return document.querySelector("[data-testid=confirm-dialog]").open;'))

    def switch(self, action: str, operator: str, reason: str, word: str, submit: bool = True) -> None:
        """The KILL (or ENABLE) button, then the confirmation dialog filled in (and submitted)."""
        self.click(f"{action}-button")
        wait_for(self.dialog_open, f"the {action} dialog open")
        self.type("confirm-operator", operator)
        self.type("confirm-reason", reason)
        self.type("confirm-word", word)
        if submit:
            self.click("confirm-submit")


# --------------------------------------------------------------------------- the desk: sidecar, console, browser


def desk_config(folder: Path) -> Path:
    """The plumbing configuration (the momentum strategy trades one contract per bracket), with the audit
    signing key in the test's folder for the sidecar and the console alike, and a heartbeat timeout that
    outlasts the playback's pauses (NT8 sends nothing while the test looks at the page)."""
    path = folder / "desk.toml"
    key = (folder / "audit-key.pem").as_posix()
    path.write_text(PLUMBING_CONFIG.read_text(encoding="utf-8")
                    + f'\n[server]\nheartbeat_timeout_ms = 600000\n\n[audit]\nkey_path = "{key}"\n', encoding="utf-8")
    return path


def settle_storage(control: str) -> None:
    """Until the sidecar's writer has nothing left to commit (its queue empty, its row count unchanged)."""
    def settled() -> bool:
        first = send_command(control, "status")["storage"]
        time.sleep(0.3)
        second = send_command(control, "status")["storage"]
        return second["queue_depth"] == 0 and first["rows_written"] == second["rows_written"]
    wait_for(settled, "the sidecar's storage settled")


def stored_book(db: Path, session_id: int | None = None) -> dict:
    """Realized P&L at average cost per instrument, commission and net from the stored fills, as NT8 books
    them; computed here from the executions table, independently of the console."""
    where = "where session_id = ?" if session_id is not None else ""
    fills = sql(db, f"select instrument, side, quantity, price, commission from executions {where} "
                "order by ts_event_ns, session_id, seq", *([session_id] if session_id is not None else []))
    position: dict[str, int] = defaultdict(int)
    avg: dict[str, float] = defaultdict(float)
    realized: dict[str, float] = defaultdict(float)
    commission = 0.0
    for instrument, side, qty, price, fee in fills:
        signed = qty if side == "BUY" else -qty
        held = position[instrument]
        if held == 0 or (held > 0) == (signed > 0):
            avg[instrument] = (avg[instrument] * abs(held) + price * qty) / (abs(held) + qty)
        else:
            closed = min(abs(held), qty)
            direction = 1 if held > 0 else -1
            realized[instrument] += (price - avg[instrument]) * direction * closed * POINT_VALUE[instrument]
            if qty > closed:
                avg[instrument] = price
        position[instrument] = held + signed
        commission += fee or 0.0
    total = sum(realized.values())
    return {"fills": len(fills), "position": dict(position), "realized": dict(realized), "total": round(total, 2),
            "commission": round(commission, 2), "net": round(total - commission, 2)}


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_console_in_a_browser_during_a_playback(shared_data, tmp_path):
    folder = tmp_path / "desk"
    folder.mkdir()
    config_file = desk_config(folder)
    config = load_config(config_file, env={})
    es = load_stream([shared_data / "nt8" / ES_FILE])
    db = folder / "desk.sqlite"
    control, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    # fixed endpoints: the sidecar started again later is found where the console looks
    sidecar_args = ("--control-bind", control, "--events-bind", events)
    sidecar = SidecarProcess(f"sqlite:///{db}", config_file, log_path=folder / "sidecar.log", extra_args=sidecar_args)
    sidecar.start()
    console = ConsoleProcess(folder, db_url=f"sqlite:///{db}", events=events, control=control, config=config_file)
    driver = None
    try:
        console.start()
        driver = start_chromium()
        shots = Shots(driver, tmp_path / "screenshots")
        page = Page(driver, console.url)
        page.open("positions")
        wait_for(lambda: page.attr("sidecar-state", "up") == "true", "the page hears the sidecar")
        assert page.one("sidecar-banner")["hidden"] and page.one("trading-state")["state"] == "ACTIVE"

        marks: dict[str, object] = {}

        def at(n: int) -> None:  # n: events played so far, the playback waiting with all of them answered
            if "watch_ns" not in marks and n >= 16_384:
                driver.execute_script(WATCH_MUTATIONS)  # the page is left alone from here to the first look
                marks["watch_ns"] = time.time_ns()
            elif "watched" not in marks and n >= LOOK_AT:
                marks["watched"] = driver.execute_script("return window.__mutationBatches;")
                marks["watched_ns"] = time.time_ns()
                marks["kill_n"] = n
                look_and_kill(page, shots, db, control, marks)
            elif "killed" in marks and "enabled" not in marks and n >= ENABLE_AT:
                marks["enable_n"] = n
                enable(page, marks)

        result = run_playback(es, sidecar.endpoint, config, master_for(config), window=64,
                              instance_id="console-browser", progress=at)
        assert "killed" in marks and "enabled" in marks, marks.keys()

        # --- the DOM is touched at most once per 100 ms, however fast events arrive -----------------------
        batches = marks["watched"]
        watched_ms = (marks["watched_ns"] - marks["watch_ns"]) / 1e6
        assert len(batches) >= 3, f"the page barely changed while the playback ran: {batches}"
        # one batch per gated frame, and frames open 100 ms after the previous one ended (the bound holds
        # however slow the machine: slowness only makes fewer frames)
        assert len(batches) <= watched_ms / 100 + 1, (len(batches), watched_ms)
        gaps = [b - a for a, b in zip(batches, batches[1:])]
        assert min(gaps) >= 95, sorted(gaps)[:5]

        # --- the kill switch acted: NT8 flattened, nothing new while halted, trading resumed --------------
        flattens = [i for i, kind in result.commands if kind == "FLATTEN"]
        assert flattens and marks["kill_n"] <= flattens[0] < marks["enable_n"], result.commands
        brackets = [i for i, kind in result.commands if kind == "BRACKET"]
        assert not [i for i in brackets if marks["kill_n"] <= i < marks["enable_n"]], result.commands  # none halted
        decisions = sql(db, "select ts_sidecar_ns, outcome from decisions where session_id = ?", result.session_id)
        halted = [o for ts, o in decisions if marks["killed"] <= ts <= marks["enabled"]]
        assert halted and not [o for o in halted if o == "EMITTED"], halted
        assert any(o.startswith("DENIED:RISK_KILL_SWITCH") for o in halted), halted
        assert [i for i in brackets if i >= marks["enable_n"]], "trading did not resume after ENABLE"

        # --- the audit trail names the operators, and the page shows it ---------------------------------------
        settle_storage(control)
        audits = sql(db, "select kind, subject_id, payload from audit_chain where kind in ('kill', 'enable') "
                         "order by seq")
        assert [(k, s) for k, s, _ in audits] == [("kill", "carol"), ("enable", "dave")]
        assert json.loads(audits[0][2])["reason"] == "desk test: kill from the page"
        assert json.loads(audits[0][2])["sessions_flattened"] == 1
        page.open("risk")
        acts = wait_for(lambda: [(a["kind"], a["operator"]) for a in page.visible("risk-action")
                                 if a["kind"] in ("kill", "enable")], "the operators' acts shown", timeout_s=60)
        assert acts == [("enable", "dave"), ("kill", "carol")]  # newest first
        page.open("audit")
        wait_for(lambda: page.attr("audit-verdict", "ok") == "true", "the audit chain verified", timeout_s=120)
        (head,), = sql(db, "select max(seq) from audit_chain")
        wait_for(lambda: page.attr("audit-head", "seq") == str(head), f"the stored head {head} shown")
        assert [int(r["seq"]) for r in page.visible("audit-row")][0] == head  # the latest records, newest first
        shots.take("audit")
        page.open("models")
        wait_for(lambda: page.visible("models"), "the models view")
        shots.take("models")

        # --- the sidecar stops: the banner, and the stored picture equal to the SQLite file ----------------
        assert sidecar.stop() == 0  # a clean stop: every row committed
        page.open("positions")
        banner = wait_for(lambda: [b for b in page.visible("sidecar-banner")], "the banner", timeout_s=30)[0]
        assert banner["text"] == f"Sidecar not reachable at {events} — showing stored history; reconnecting"
        assert page.one("sidecar-state")["up"] == "false"
        latest = sql(db, """select instrument, market_position, quantity, avg_price from positions where id in
                            (select max(id) from positions where session_id = ? group by instrument)""",
                     result.session_id)
        book = stored_book(db)
        assert book["fills"] == result.fills > 0
        expected = (sorted((i, SIGN[mp] * q, round(book["realized"].get(i, 0.0), 2)) for i, mp, q, _ in latest),
                    {"realized": book["total"], "commission": book["commission"], "net": book["net"]})

        def shown() -> tuple:
            rows = sorted((r["instrument"], int(r["quantity"]), round(float(r["pnl"]), 2))
                          for r in page.visible("position-row") if r["source"] == "stored")
            cards = {k: [round(float(c["value"]), 2) for c in page.visible(f"pnl-{k}") if c["value"]]
                     for k in ("realized", "commission", "net")}
            return rows, {k: v[0] if v else None for k, v in cards.items()}
        # the page reads storage when the view opens and every 5 s: a read that began before the sidecar's
        # last commit is followed by one after it
        wait_for(lambda: shown() == expected, f"the stored positions and P&L {expected}", seen=shown)
        expected_rows = expected[0]
        assert [r[1] for r in expected_rows] == [result.final_position["ES 06-18"]]  # NT8's last report is the broker's
        assert book["net"] == pytest.approx(sum(result.realized_pnl.values()) - result.commission, abs=0.005)
        shots.take("sidecar-down")

        # --- the sidecar comes back where the console looks: the banner goes --------------------------------
        again = SidecarProcess(f"sqlite:///{db}", config_file, log_path=folder / "sidecar-2.log",
                               extra_args=sidecar_args)
        again.start()
        try:
            wait_for(lambda: page.attr("sidecar-banner", "hidden"), "the banner gone", timeout_s=30)
            assert page.one("sidecar-state")["up"] == "true"
            # the first snapshot of the new sidecar follows its first event within a quarter of a second
            wait_for(lambda: f"pid {again.proc.pid}" in (page.attr("sidecar-state", "text") or ""),
                     "the new sidecar's snapshot shown")
        finally:
            assert again.stop() == 0
        assert set(shots.taken) >= {"sessions", "positions", "blotter-decision", "risk-kill-dialog", "latency",
                                    "audit", "models", "sidecar-down"}
    finally:
        if driver is not None:
            driver.quit()
        console.stop()
        sidecar.stop()
    assert "Traceback" not in console.log(), console.log()[-3000:]


def look_and_kill(page: Page, shots: Shots, db: Path, control: str, marks: dict) -> None:
    """The first pause of the playback, a position open: the live views against storage, then KILL."""
    settle_storage(control)
    (session_id,) = sql(db, "select session_id from sessions where instance_id = 'console-browser'")[0]
    marks["session_id"] = session_id
    (mp, qty, avg), = sql(db, "select market_position, quantity, avg_price from positions where id = "
                              "(select max(id) from positions where session_id = ?)", session_id)
    (last,), = sql(db, "select price from ticks where session_id = ? order by seq desc limit 1", session_id)
    assert SIGN[mp] * qty != 0, "no position open at the first look: the data or the strategy changed"
    book = stored_book(db, session_id)
    unrealized = (last - avg) * SIGN[mp] * qty * POINT_VALUE["ES 06-18"]
    # the live P&L books a bracket when it is closed (net of its commissions); none is closed yet here
    assert book["total"] == 0.0 and book["position"]["ES 06-18"] == SIGN[mp] * qty
    expected = [("ES 06-18", SIGN[mp] * qty, f"{unrealized:.2f}")]

    page.open("positions")

    def live_rows() -> list:
        return [(r["instrument"], int(r["quantity"]), r["pnl"]) for r in page.visible("position-row")
                if r["source"] == "live"]
    wait_for(lambda: live_rows() == expected, f"the live position {expected}", seen=live_rows)
    assert float(page.one("pnl-unrealized")["value"]) == pytest.approx(unrealized, abs=0.005)
    assert float(page.one("pnl-realized")["value"]) == 0.0
    working = sql(db, "select client_order_id from orders where session_id = ?", session_id)
    wait_for(lambda: {o["client_order_id"] for o in page.visible("order-row") if o["source"] == "live"}
             == {c for (c,) in working}, "the working bracket shown")
    shots.take("positions")

    page.open("sessions")
    rows = wait_for(lambda: [r for r in page.visible("session-row") if r["source"] == "live"], "the live session")
    assert [int(r["session_id"]) for r in rows] == [session_id]
    wait_for(lambda: [r for r in page.visible("session-row") if r["source"] == "stored"
                      and int(r["session_id"]) == session_id], "the session as stored (open)", timeout_s=60)
    instrument = page.one("session-instrument")
    assert instrument["instrument"] == "ES 06-18" and instrument["feed"] == "ok"
    shots.take("sessions")

    page.open("latency")
    count = wait_for(lambda: [c["count"] for c in page.visible("t2b-count") if c["count"]], "the tick-to-BRACKET "
                     "figures")[0]
    assert 1 <= int(count) <= len(working)  # the last minute's BRACKETs sent on market data
    assert {r["stage"] for r in page.visible("latency-row")} >= {"risk"}
    shots.take("latency")

    page.open("blotter")
    fills = wait_for(lambda: page.visible("blotter-row"), "the stored fill in the blotter", timeout_s=60)
    stored = sql(db, """select e.execution_id, o.decision_id from executions e join orders o
                        on o.client_order_id = e.client_order_id where e.session_id = ?""", session_id)
    assert {(f["execution_id"], f["decision_id"]) for f in fills} == set(stored)
    execution_id, decision_id = stored[0]
    page.click("blotter-row", execution_id=execution_id)
    wait_for(lambda: page.visible("decision-id") and page.attr("decision-id", "decision_id") == decision_id,
             "the decision opened")
    assert page.one("decision-outcome")["outcome"] == "EMITTED"
    assert page.one("decision-audit")["inputs_match"] == "true"
    shots.take("blotter-decision")

    # KILL: a wrong confirmation word is refused in the dialog and changes nothing
    page.open("risk")
    wait_for(lambda: page.visible("risk-trading-state"), "the trading state")
    page.switch("kill", "carol", "desk test: kill from the page", "kill")
    wait_for(lambda: "type KILL" in page.attr("confirm-error", "text"), "the refusal of a wrong word")
    assert page.dialog_open() and send_command(control, "status")["state"] == "ACTIVE"
    page.click("confirm-cancel")
    wait_for(lambda: not page.dialog_open(), "the dialog closed")
    page.switch("kill", "carol", "desk test: kill from the page", "KILL", submit=False)
    assert page.one("confirm-error")["text"] == ""  # the dialog opens clean
    shots.take("risk-kill-dialog")
    page.click("confirm-submit")
    wait_for(lambda: not page.dialog_open(), "the dialog closed")
    marks["killed"] = time.time_ns()
    wait_for(lambda: page.attr("trading-state", "state") == "HALTED", "the page shows HALTED")
    assert page.one("trading-state")["text"] == "HALTED by carol"
    assert "KILLED by carol: 1 NT8 sessions told to flatten" in page.one("notice")["text"]


def enable(page: Page, marks: dict) -> None:
    page.open("risk")
    assert page.one("trading-state")["state"] == "HALTED"
    page.switch("enable", "dave", "desk test: checked", "ENABLE")
    wait_for(lambda: not page.dialog_open(), "the dialog closed")
    marks["enabled"] = time.time_ns()
    wait_for(lambda: page.attr("trading-state", "state") == "ACTIVE", "the page shows ACTIVE")
    assert "trading enabled by dave" in page.one("notice")["text"]
