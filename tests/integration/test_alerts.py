"""The notifier end to end on real parts: the sidecar's event stream (an EventPublisher on a real socket, and
a real sidecar process), a webhook server, an SMTP server that insists on STARTTLS and a login, an SQLite
file with a real audit chain, and the notifier's own Prometheus endpoint.

No test waits for a time to pass: a deduplication window is ended by the service's clock, and "nothing
more came" is known from a later alert arriving behind it (each destination delivers in order)."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.alerts.destinations import Retry, destinations_from_config
from bridge.alerts.service import AlertService
from bridge.audit.chain import AuditChain
from bridge.audit.recorder import Recorder
from bridge.audit.trail import audit_paths
from bridge.core.config import Config, build_config
from bridge.storage.writer import StorageWriter
from tests.integration.alert_receivers import (
    Mailbox,
    PublishingSidecar,
    RowSink,
    WebhookReceiver,
    free_port,
    wait_until,
)

CLI = [sys.executable, "-m", "bridge.cli"]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def mailbox(tmp_path, monkeypatch) -> Iterator[Mailbox]:
    box = Mailbox(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(box.cert))  # how a desk trusts a private CA: OpenSSL's own variable
    yield box
    box.close()


@pytest.fixture
def sidecar() -> Iterator[PublishingSidecar]:
    s = PublishingSidecar()
    yield s
    s.close()


def alerts_config(tmp_path: Path, receiver: WebhookReceiver, mailbox: Mailbox | None, hooks: list[str],
                  **alerts: Any) -> dict[str, Any]:
    """The [alerts] section (and the files it names) as a parsed TOML document."""
    (tmp_path / "hooks.txt").write_text("# where the desk's alerts go\n" + "\n".join(
        h if "://" in h else f"{h.split('=')[0]}={receiver.url(h.split('=')[1])}" for h in hooks) + "\n")
    section: dict[str, Any] = {"webhooks_file": str(tmp_path / "hooks.txt"), "metrics_port": 0, **alerts}
    if mailbox is not None:
        (tmp_path / "smtp.pw").write_text(Mailbox.PASSWORD + "\n")
        section |= {"smtp_host": "127.0.0.1", "smtp_port": mailbox.port, "smtp_user": Mailbox.USER,
                    "smtp_password_file": str(tmp_path / "smtp.pw"), "mail_from": "nt8bridge@desk.example",
                    "mail_to": "ops@desk.example, risk@desk.example"}
    return {"alerts": section, "audit": {"key_path": str(tmp_path / "audit-key.pem")}}


class Clock:
    """Monotonic time that a test can move forward: the end of a deduplication window without the wait."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@contextmanager
def running(service: AlertService) -> Iterator[AlertService]:
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: service.rules.sidecar_up, "the notifier hears the sidecar's snapshots")
        yield service
    finally:
        service.request_stop()
        thread.join(60)
        assert not thread.is_alive(), "the notifier did not stop"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def kill_payload(operator: str, reason: str) -> dict[str, Any]:
    """What SidecarServer.kill records."""
    return {"reason": reason, "operator": operator, "state": "HALTED", "sessions_flattened": 1, "sessions": [17]}


def test_a_kill_reaches_every_webhook_and_the_mailbox_naming_the_operator(tmp_path, receiver, mailbox, sidecar):
    config = build_config(alerts_config(tmp_path, receiver, mailbox, ["slack=/slack", "teams=/teams",
                                                                        "generic=/generic"]), env={})
    service = AlertService(config, None, destinations_from_config(config.alerts), events=sidecar.endpoint)
    paths = audit_paths(config, f"sqlite:///{tmp_path / 'desk.sqlite'}")
    paths.journal.parent.mkdir(parents=True)
    chain = AuditChain(paths.journal, paths.checkpoints, paths.key, fsync_interval_s=None)
    recorder = Recorder(RowSink(sidecar), 17, chain=chain)  # the sidecar's own path: chained, then published
    with running(service):
        recorder.audit("kill", "alice", time.time_ns(), kill_payload("alice", "runaway momentum strategy"))
        wait_until(lambda: len(mailbox.mails) == 1 and all(receiver.at(p) for p in ("/slack", "/teams", "/generic")),
                   "the kill at every destination")
    chain.close()
    [slack], [teams], [generic] = receiver.at("/slack"), receiver.at("/teams"), receiver.at("/generic")
    assert "KILL SWITCH by alice: runaway momentum strategy" in slack["text"]
    assert slack["blocks"][0]["type"] == "header" and "alice" in slack["blocks"][0]["text"]["text"]
    card = teams["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard" and "alice" in card["body"][0]["text"]
    assert {f["title"]: f["value"] for f in card["body"][2]["facts"]}["operator"] == "alice"
    assert generic["kind"] == "kill" and generic["severity"] == "critical"
    assert generic["fields"]["operator"] == "alice" and generic["fields"]["sessions_flattened"] == 1
    [mail] = mailbox.mails
    assert mail.tls and mail.login == Mailbox.USER  # STARTTLS, then the login from smtp_password_file
    assert mail.mail_from == "nt8bridge@desk.example"
    assert mail.rcpt_tos == ["ops@desk.example", "risk@desk.example"]
    assert mail.message["Subject"] == "[nt8bridge CRITICAL] KILL SWITCH by alice: runaway momentum strategy"
    assert "alice halted trading" in mail.message.get_content()
    assert service.dispatcher.stats.sent == {("kill", d): 1 for d in ("slack-1", "teams-1", "generic-1", "email")}


def test_a_burst_of_a_hundred_identical_alerts_is_one_message_and_one_summary(tmp_path, receiver, mailbox, sidecar):
    config = build_config(alerts_config(tmp_path, receiver, mailbox, ["generic=/generic"], dedup_s=300.0,
                                        rate_per_min=1000.0), env={})
    clock = Clock()
    service = AlertService(config, None, destinations_from_config(config.alerts), events=sidecar.endpoint,
                           clock=clock, sidecar_gone_s=1e9)  # the window is ended by moving this clock
    service.serve_metrics("127.0.0.1", 0)
    recorder = Recorder(RowSink(sidecar), 17)  # no chain: audit_log rows, as a sidecar without one writes them
    payload = {"kind": "POSITION_MISMATCH", "instrument": "ES 06-24", "details": "NT8 holds 2, the ledger 1",
               "ts_event_ns": 1}
    with running(service):
        for _ in range(100):
            recorder.audit("reconciliation_break", "ES 06-24", time.time_ns(), payload)
        wait_until(lambda: service.dispatcher.dedup.suppressed["reconciliation_break"] == 99, "the burst read")
        clock.offset += 300.0  # the deduplication window ends
        wait_until(lambda: len(receiver.at("/generic")) == 2, "the summary")
        # anything more would be queued before this later alert; it arriving means nothing else did
        recorder.audit("trading_hold", "storage", time.time_ns(), {"state": "REDUCING", "reason": "database away"})
        wait_until(lambda: len(receiver.at("/generic")) == 3 and len(mailbox.mails) == 3, "the later alert")
        metrics = scrape(service.metrics_port)
    first, summary, later = receiver.at("/generic")
    assert first["kind"] == summary["kind"] == "reconciliation_break" and "repeats" not in first["fields"]
    assert summary["fields"]["repeats"] == 99 and "repeated 99 more times" in summary["title"]
    assert later["kind"] == "trading_hold"
    assert [m.message["Subject"].strip() for m in mailbox.mails][:2] == [  # a long Subject is folded
        "[nt8bridge CRITICAL] Reconciliation break POSITION_MISMATCH on ES 06-24",
        "[nt8bridge CRITICAL] Reconciliation break POSITION_MISMATCH on ES 06-24 (repeated 99 more times)"]
    labels = (("destination", "all"), ("kind", "reconciliation_break"), ("reason", "duplicate"))
    assert metrics[("nt8bridge_alerts_suppressed_total", labels)] == 99
    assert metrics[("nt8bridge_alerts_raised_total", (("kind", "reconciliation_break"),))] == 100
    for dest in ("generic-1", "email"):
        assert metrics[("nt8bridge_alerts_sent_total", (("destination", dest), ("kind", "reconciliation_break")))] == 2
    assert metrics[("nt8bridge_alerts_summaries_total", ())] == 1


def write_chain(config: Config, db_url: str, records: int) -> None:
    """A real audit chain in an SQLite file: journal and signed checkpoints beside it, rows through the writer."""
    paths = audit_paths(config, db_url)
    paths.journal.parent.mkdir(parents=True, exist_ok=True)
    writer = StorageWriter(db_url)
    writer.start()
    chain = AuditChain(paths.journal, paths.checkpoints, paths.key, checkpoint_every=2, fsync_interval_s=None)
    recorder = Recorder(writer, 1, chain=chain)
    for i in range(records):
        recorder.audit("decision", f"D{i}", time.time_ns(), {"outcome": "BRACKET", "n": i})
    chain.close()
    writer.close()


def test_a_tampered_audit_chain_row_in_sqlite_is_an_alert(tmp_path, receiver, sidecar):
    db = tmp_path / "desk.sqlite"
    url = f"sqlite:///{db}"
    config = build_config(alerts_config(tmp_path, receiver, None, ["generic=/generic"]), env={})
    write_chain(config, url, 6)

    def look_once() -> AlertService:
        service = AlertService(config, url, destinations_from_config(config.alerts), events=sidecar.endpoint)
        service.run_once()
        return service

    intact = look_once()
    assert intact.storage.stats.verifications == {"ok": 1}
    assert not [p for p in receiver.at("/generic") if p["kind"] == "audit_verification"]
    with sqlite3.connect(db) as conn:  # an intruder with write access to the file
        conn.execute("DROP TRIGGER audit_chain_no_update")
        conn.execute("UPDATE audit_chain SET payload = replace(payload, '\"n\":2', '\"n\":20') WHERE seq = 3")
    broken = look_once()
    assert broken.storage.stats.verifications == {"broken": 1}
    [alert] = [p for p in receiver.at("/generic") if p["kind"] == "audit_verification"]
    assert alert["severity"] == "critical" and alert["fields"]["first_bad_seq"] == 3
    assert "record 3: hash does not match its contents" in alert["text"] and str(db) in alert["subject"]


def test_a_dead_webhook_is_retried_counted_and_logged_and_the_notifier_goes_on(tmp_path, receiver, sidecar, caplog):
    closed = f"generic=http://127.0.0.1:{free_port()}/nothing-listens"
    config = build_config(alerts_config(tmp_path, receiver, None, ["generic=/dead", "slack=/ok", closed]), env={})
    receiver.status["/dead"] = 503
    service = AlertService(config, None, destinations_from_config(config.alerts), events=sidecar.endpoint,
                           retry=Retry(attempts=3, backoff_s=0.05))
    service.serve_metrics("127.0.0.1", 0)
    recorder = Recorder(RowSink(sidecar), 17)
    caplog.set_level(logging.INFO, logger="nt8bridge.alerts")
    with running(service):
        recorder.audit("kill", "alice", time.time_ns(), kill_payload("alice", "test"))
        wait_until(lambda: service.dispatcher.stats.failed[("kill", "generic-2")] == 1
                   and service.dispatcher.stats.failed[("kill", "generic-1")] == 1, "both dead webhooks given up")
        recorder.audit("enable", "bob", time.time_ns(), {"operator": "bob", "reason": "checked", "state": "ACTIVE"})
        wait_until(lambda: len(receiver.at("/ok")) == 2, "the notifier still delivering")
        wait_until(lambda: service.dispatcher.stats.failed[("enable", "generic-1")] == 1
                   and service.dispatcher.stats.failed[("enable", "generic-2")] == 1, "the enable given up too")
        metrics = scrape(service.metrics_port)
        assert all(w.thread.is_alive() for w in service.dispatcher.workers.values())
    assert [p["blocks"][0]["text"]["text"] for p in receiver.at("/ok")] == [
        "\U0001F534 KILL SWITCH by alice: test", "\U0001F7E0 Trading re-enabled by bob"]
    assert len(receiver.at("/dead")) == 6  # three tries of each alert
    for dest in ("generic-1", "generic-2"):
        assert metrics[("nt8bridge_alerts_failed_total", (("destination", dest), ("kind", "kill")))] == 1
        assert metrics[("nt8bridge_alerts_delivery_attempts_total", (("destination", dest),))] == 6
        assert metrics[("nt8bridge_alerts_destination_failures_total", (("destination", dest),))] == 2
    assert metrics[("nt8bridge_alerts_destination_failures_total", (("destination", "slack-1"),))] == 0
    assert metrics[("nt8bridge_alerts_sent_total", (("destination", "slack-1"), ("kind", "kill")))] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "NOT delivered" in r.getMessage()]
    assert "alert kill NOT delivered to generic-1 after 3 attempts: 127.0.0.1 answered HTTP 503: service unavailable" \
        in errors
    assert any(e.startswith("alert kill NOT delivered to generic-2 after 3 attempts: 127.0.0.1:") for e in errors)
    assert not any("nothing-listens" in r.getMessage() for r in caplog.records)  # the URL's path is a secret


def test_alerts_test_says_which_destination_took_it_and_a_bad_webhooks_file_is_a_config_error(tmp_path, receiver,
                                                                                               mailbox):
    data = alerts_config(tmp_path, receiver, mailbox, ["slack=/ok", "generic=/dead"])
    receiver.status["/dead"] = 503
    (tmp_path / "config.toml").write_text(toml(data))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "SSL_CERT_FILE": str(mailbox.cert)}
    out = subprocess.run([*CLI, "--config", str(tmp_path / "config.toml"), "alerts", "test"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert "WebhookDestination(slack-1, 127.0.0.1): sent" in lines
    assert f"MailDestination(email, 127.0.0.1:{mailbox.port} -> ops@desk.example, risk@desk.example): sent" in lines
    assert any(line.startswith("WebhookDestination(generic-1, 127.0.0.1): FAILED after 2 attempts: 127.0.0.1 "
                               "answered HTTP 503") for line in lines)
    assert lines[-1] == "2 of 3 destinations took the test alert"
    assert [p["blocks"][0]["text"]["text"] for p in receiver.at("/ok")] == ["\U0001F7E2 nt8bridge test alert"]
    assert mailbox.mails[0].message["Subject"] == "[nt8bridge INFO] nt8bridge test alert"

    (tmp_path / "hooks.txt").write_text("slack=https://hooks.example/services/SECRET\nsignal=https://x.example/y\n")
    out = subprocess.run([*CLI, "--config", str(tmp_path / "config.toml"), "alerts", "test"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 2
    assert "line 2: format 'signal' is not one of slack, teams, generic" in out.stderr
    assert "SECRET" not in out.stderr and "Traceback" not in out.stderr


def toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_a_real_sidecars_kill_and_enable_reach_the_webhook_and_the_mailbox(tmp_path, receiver, mailbox):
    """The whole path: `nt8bridge kill` on a real sidecar's control channel, its audit record on the sidecar's
    event stream, `nt8bridge alerts` (a process of its own) reading it, the webhook and the mail box."""
    from bridge.transport.control import send_command
    from bridge.transport.sidecar import SidecarProcess, child_creationflags, interrupt_signal

    data = alerts_config(tmp_path, receiver, mailbox, ["generic=/generic"])
    config_path = tmp_path / "config.toml"
    config_path.write_text(toml(data))
    db = f"sqlite:///{tmp_path / 'desk.sqlite'}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "SSL_CERT_FILE": str(mailbox.cert)}
    with SidecarProcess(db, config_path) as proc:
        status = send_command(proc.control_endpoint, "status")
        if "events_endpoint" not in status:
            pytest.skip("this sidecar publishes no event stream yet: SidecarServer.status_report() has no "
                        "events_endpoint")
        log_path = tmp_path / "alerts.log"
        with open(log_path, "wb") as log_file:  # the test's sidecar picked a free port: --events names it
            notifier = subprocess.Popen([*CLI, "--config", str(config_path), "alerts", "--db", db, "--events",
                                         status["events_endpoint"]], env=env, stdout=log_file,
                                        stderr=subprocess.STDOUT, creationflags=child_creationflags())
        try:
            def metrics_port() -> int | None:
                found = re.search(r"notifier metrics on http://127\.0\.0\.1:(\d+)/metrics", log_path.read_text())
                return int(found.group(1)) if found else None
            wait_until(lambda: metrics_port() is not None or notifier.poll() is not None, "the notifier's metrics")
            assert notifier.poll() is None, log_path.read_text()
            port = metrics_port()
            wait_until(lambda: scrape(port)[("nt8bridge_alerts_sidecar_up", ())] == 1, "the notifier hears the sidecar")
            for args in (["kill", "--operator", "alice", "--reason", "end to end"],
                         ["enable", "--operator", "bob", "--reason", "all clear"]):
                subprocess.run([*CLI, "--config", str(config_path), *args, "--control", proc.control_endpoint],
                               check=True, capture_output=True, timeout=120, env=env)
            wait_until(lambda: [p["kind"] for p in receiver.at("/generic")][-2:] == ["kill", "enable"]
                       and len(mailbox.mails) >= 2, "the kill and the enable delivered")
            wait_until(lambda: scrape(port).get(("nt8bridge_alerts_audit_verifications_total", (("result", "ok"),)))
                       == 1, "the audit chain verified at start")
            metrics = scrape(port)
        finally:
            if notifier.poll() is None:
                notifier.send_signal(interrupt_signal())  # Ctrl+C: a clean stop after delivering what is queued
            code = notifier.wait(60)
    text = log_path.read_text()
    assert code == 0, text
    assert "notifier stopped" in text and "Traceback" not in text
    kill = next(p for p in receiver.at("/generic") if p["kind"] == "kill")
    assert kill["fields"]["operator"] == "alice" and kill["fields"]["reason"] == "end to end"
    assert kill["fields"]["sessions_flattened"] == 0  # from the audit record itself, not the state that follows it
    enable = next(p for p in receiver.at("/generic") if p["kind"] == "enable")
    assert enable["fields"]["operator"] == "bob"
    subjects = [m.message["Subject"].strip() for m in mailbox.mails]
    assert "[nt8bridge CRITICAL] KILL SWITCH by alice: end to end" in subjects
    assert metrics[("nt8bridge_alerts_sent_total", (("destination", "generic-1"), ("kind", "kill")))] == 1
    assert metrics[("nt8bridge_alerts_audit_verifications_total", (("result", "ok"),))] == 1
