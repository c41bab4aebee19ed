"""What the destinations send (Slack, Teams, generic JSON, e-mail), how the webhooks file is read, and the
retries of :func:`deliver`. The Slack and Teams bodies are held against the parts of those services' payload
rules that they use (written down below from Slack's Block Kit and Microsoft's Adaptive Card 1.4 references)."""

from __future__ import annotations

import email
import json
from email import policy

import jsonschema
import pytest

from bridge.alerts.alert import Alert, Severity
from bridge.alerts.destinations import (
    DeliveryError,
    MailDestination,
    Retry,
    WebhookDestination,
    deliver,
    destinations_from_config,
    generic_body,
    mail_message,
    parse_webhooks,
    slack_body,
    teams_body,
)
from bridge.core.config import AlertsConfig, ConfigError

ALERT = Alert("kill", Severity.CRITICAL, "desk", "KILL SWITCH by alice: <runaway> & more",
              "alice halted trading: <runaway> & more.", 1_718_000_000_123_000_000,
              {"operator": "alice", "sessions": [1, 2], "nothing": None})

_TEXT = {"type": "object", "required": ["type", "text"],
         "properties": {"type": {"enum": ["plain_text", "mrkdwn"]}, "text": {"type": "string", "minLength": 1}}}
SLACK = {
    "type": "object", "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "blocks": {"type": "array", "maxItems": 50, "items": {"oneOf": [
            {"type": "object", "required": ["type", "text"], "additionalProperties": False,
             "properties": {"type": {"const": "header"}, "text": {**_TEXT, "properties": {
                 "type": {"const": "plain_text"}, "text": {"type": "string", "minLength": 1, "maxLength": 150},
                 "emoji": {"type": "boolean"}}}}},
            {"type": "object", "required": ["type", "text"], "additionalProperties": False,
             "properties": {"type": {"const": "section"}, "text": {**_TEXT, "properties": {
                 "type": {"enum": ["plain_text", "mrkdwn"]},
                 "text": {"type": "string", "minLength": 1, "maxLength": 3000}}}}},
            {"type": "object", "required": ["type", "elements"], "additionalProperties": False,
             "properties": {"type": {"const": "context"},
                            "elements": {"type": "array", "minItems": 1, "maxItems": 10, "items": _TEXT}}}]}}}}
TEAMS = {
    "type": "object", "required": ["type", "attachments"],
    "properties": {
        "type": {"const": "message"},
        "attachments": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["contentType", "content"],
            "properties": {
                "contentType": {"const": "application/vnd.microsoft.card.adaptive"},
                "content": {"type": "object", "required": ["type", "version", "body"], "properties": {
                    "type": {"const": "AdaptiveCard"}, "version": {"type": "string", "pattern": r"^1\.[0-5]$"},
                    "body": {"type": "array", "minItems": 1, "items": {"oneOf": [
                        {"type": "object", "required": ["type", "text"],
                         "properties": {"type": {"const": "TextBlock"}, "text": {"type": "string"},
                                        "wrap": {"type": "boolean"},
                                        "weight": {"enum": ["Default", "Lighter", "Bolder"]},
                                        "size": {"enum": ["Default", "Small", "Medium", "Large", "ExtraLarge"]},
                                        "color": {"enum": ["Default", "Dark", "Light", "Accent", "Good", "Warning",
                                                           "Attention", "good", "warning", "attention"]}}},
                        {"type": "object", "required": ["type", "facts"],
                         "properties": {"type": {"const": "FactSet"}, "facts": {"type": "array", "items": {
                             "type": "object", "required": ["title", "value"], "additionalProperties": False,
                             "properties": {"title": {"type": "string"}, "value": {"type": "string"}}}}}}]}}}}}}}}}


def test_slack_body_follows_block_kit_and_escapes_its_control_characters():
    body = slack_body(ALERT)
    jsonschema.validate(body, SLACK)
    mrkdwn = [body["text"], body["blocks"][1]["text"]["text"]]
    assert all("&lt;runaway&gt; &amp; more" in t and "<runaway>" not in t for t in mrkdwn)
    assert body["blocks"][0]["text"]["text"].endswith(ALERT.title)  # plain_text: no escaping there
    long = Alert("drift", Severity.WARNING, "m", "x" * 400, "y" * 5000)
    jsonschema.validate(slack_body(long), SLACK)


def test_teams_body_is_an_adaptive_card_with_every_field_as_a_fact():
    body = teams_body(ALERT)
    jsonschema.validate(body, TEAMS)
    card = body["attachments"][0]["content"]
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    assert facts["operator"] == "alice" and facts["sessions"] == "[1, 2]" and "nothing" not in facts
    assert facts["time"] == "2024-06-10T06:13:20.123Z" and card["body"][0]["color"] == "attention"


def test_generic_body_is_the_alert_as_json():
    body = json.loads(json.dumps(generic_body(ALERT)))
    assert body["source"] == "nt8bridge"
    assert {k: body[k] for k in ("kind", "severity", "subject", "title", "text", "ts_ns")} == {
        "kind": "kill", "severity": "critical", "subject": "desk", "title": ALERT.title, "text": ALERT.text,
        "ts_ns": ALERT.ts_ns}
    assert body["fields"]["operator"] == "alice"


def test_mail_message_says_the_severity_in_its_subject_and_the_facts_in_its_body():
    msg = email.message_from_bytes(mail_message(ALERT, "nt8bridge@desk", ["ops@desk", "risk@desk"]).as_bytes(),
                                   policy=policy.default)
    assert msg["Subject"] == f"[nt8bridge CRITICAL] {ALERT.title}"
    assert msg["To"] == "ops@desk, risk@desk" and msg["X-Nt8bridge-Kind"] == "kill"
    text = msg.get_content()
    assert ALERT.text in text and "operator  alice" in text


def test_the_webhooks_file_is_read_and_every_bad_line_is_named_without_its_url():
    good = parse_webhooks("# desk alerts\n\nslack = https://hooks.slack.com/services/T/B/x\n"
                          "TEAMS=https://prod.westeurope.logic.azure.com/workflows/1\n"
                          "generic=http://127.0.0.1:8099/alerts\n", "hooks.txt")
    assert good == [("slack", "https://hooks.slack.com/services/T/B/x"),
                    ("teams", "https://prod.westeurope.logic.azure.com/workflows/1"),
                    ("generic", "http://127.0.0.1:8099/alerts")]
    with pytest.raises(ConfigError) as err:
        parse_webhooks("slack=https://ok.example/a\npagerduty=https://x.example/SECRET1\n"
                       "https://hooks.slack.com/SECRET2\ngeneric=ftp://x.example/SECRET3\n"
                       "teams=http://x.example/SECRET4\n", "hooks.txt")
    text = str(err.value)
    for line, what in ((2, "'pagerduty' is not one of"), (3, "expected FORMAT=URL"), (4, "not http(s)"),
                       (5, "use https")):
        assert f"hooks.txt, line {line}: " in text and what in text
    assert "line 1" not in text and "SECRET" not in text


def test_destinations_from_config(tmp_path):
    hooks = tmp_path / "hooks.txt"
    hooks.write_text("slack=https://a.example/1\nslack=https://b.example/2\ngeneric=https://c.example/3\n")
    pw = tmp_path / "smtp.pw"
    pw.write_text("s3cret\n")
    dests = destinations_from_config(AlertsConfig(webhooks_file=str(hooks), smtp_host="mail.example",
                                                  smtp_user="alerts", smtp_password_file=str(pw),
                                                  mail_to="ops@desk, risk@desk"))
    assert [d.name for d in dests] == ["slack-1", "slack-2", "generic-1", "email"]
    assert all("https://" not in repr(d) for d in dests)  # a URL is a credential: never in a log line
    mail = dests[-1]
    assert isinstance(mail, MailDestination) and mail.mail_to == ["ops@desk", "risk@desk"]
    assert mail._password == "s3cret"
    assert destinations_from_config(AlertsConfig()) == []
    for bad, what in ((AlertsConfig(webhooks_file=str(tmp_path / "none.txt")), "cannot read"),
                      (AlertsConfig(smtp_host="mail.example"), "alerts.mail_to"),
                      (AlertsConfig(smtp_host="mail.example", mail_to="a@b", smtp_user="u"), "smtp_password_file"),
                      (AlertsConfig(smtp_host="mail.example", mail_to="a@b", smtp_user="u",
                                    smtp_password_file=str(pw), smtp_starttls=False), "in clear")):
        with pytest.raises(ConfigError, match=what):
            destinations_from_config(bad)


class Flaky:
    name = "flaky"

    def __init__(self, errors: list[DeliveryError]) -> None:
        self.errors = errors
        self.calls = 0

    def send(self, alert: Alert) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def test_deliver_retries_what_can_succeed_later_with_growing_waits():
    waits: list[float] = []
    dest = Flaky([DeliveryError("503"), DeliveryError("timeout"), DeliveryError("429", retry_after=7.0)])
    result = deliver(dest, ALERT, Retry(attempts=4, backoff_s=2.0), wait=lambda s: waits.append(s) or False)
    assert result.ok and result.attempts == 4 and waits == [2.0, 4.0, 7.0]


def test_deliver_gives_up_at_once_on_a_permanent_error_and_after_its_attempts_otherwise():
    dest = Flaky([DeliveryError("HTTP 404", permanent=True)])
    result = deliver(dest, ALERT, Retry(attempts=4, backoff_s=0.0))
    assert not result.ok and result.attempts == 1 and result.error == "HTTP 404"
    dest = Flaky([DeliveryError(f"e{i}") for i in range(10)])
    result = deliver(dest, ALERT, Retry(attempts=3, backoff_s=0.0))
    assert not result.ok and dest.calls == 3 and result.errors == ["e0", "e1", "e2"]
    dest = Flaky([DeliveryError(f"e{i}") for i in range(10)])
    result = deliver(dest, ALERT, Retry(attempts=3, backoff_s=1.0), wait=lambda s: True)  # asked to stop
    assert not result.ok and dest.calls == 1


def test_a_webhook_that_cannot_connect_is_a_retryable_error_naming_its_host_only():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    dest = WebhookDestination("generic", f"http://127.0.0.1:{port}/SECRET", "generic-1", timeout_s=5.0)
    with pytest.raises(DeliveryError) as err:
        dest.send(ALERT)
    assert not err.value.permanent and "127.0.0.1" in str(err.value) and "SECRET" not in str(err.value)
