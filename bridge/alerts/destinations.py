"""Where alerts go: webhooks (Slack, Microsoft Teams, generic JSON) and e-mail, each with timeouts, and
:func:`deliver`, which retries what can succeed later with exponential backoff.

Webhook URLs carry their credential in the path, so they live in a file of their own
(``alerts.webhooks_file``: one ``FORMAT=URL`` a line) and no message or log line ever shows one: a
destination is named ``slack-1``, ``teams-1``, ``generic-2`` (format and ordinal in the file) and its
host. Only the standard library talks HTTP and SMTP here.

The SMTP server's certificate is checked against the system's trust store; a desk with a private CA
points ``SSL_CERT_FILE`` at its bundle (OpenSSL's own variable).
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from bridge import __version__
from bridge.alerts.alert import Alert, Severity, iso_time
from bridge.core.config import AlertsConfig, ConfigError

__all__ = ["Delivery", "DeliveryError", "Destination", "MailDestination", "Retry", "WebhookDestination",
           "WEBHOOK_FORMATS", "deliver", "destinations_from_config", "generic_body", "mail_message",
           "parse_webhooks", "slack_body", "teams_body"]

log = logging.getLogger("nt8bridge.alerts")

WEBHOOK_FORMATS = ("slack", "teams", "generic")
_ICON = {Severity.CRITICAL: "\U0001F534", Severity.WARNING: "\U0001F7E0", Severity.INFO: "\U0001F7E2"}
_TEAMS_COLOR = {Severity.CRITICAL: "attention", Severity.WARNING: "warning", Severity.INFO: "good"}
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class DeliveryError(Exception):
    """One attempt failed. ``permanent``: retrying cannot help (a revoked webhook, a refused login);
    ``retry_after``: the receiver said when to come back (HTTP 429/503 Retry-After)."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class Destination(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """One attempt; raises DeliveryError."""


# --- message bodies -------------------------------------------------------------------------------

def _facts(alert: Alert) -> list[tuple[str, str]]:
    facts = [("severity", str(alert.severity)), ("kind", alert.kind), ("subject", alert.subject),
             ("time", iso_time(alert.ts_ns))]
    facts += [(k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))
              for k, v in alert.fields.items() if v is not None and v != ""]
    return facts


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(alert: Alert) -> dict[str, Any]:
    """Slack's incoming webhook: ``text`` is the notification (and what clients without blocks show);
    a header, the text, and one context line of severity, kind, subject and time."""
    head = f"{_ICON[alert.severity]} {alert.title}"
    context = " | ".join(f"*{k}*: {_slack_escape(v)}" for k, v in _facts(alert)[:4])
    return {"text": _slack_escape(f"{head}: {alert.text}")[:3000],
            "blocks": [{"type": "header", "text": {"type": "plain_text", "text": head[:150], "emoji": True}},
                       {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(alert.text)[:3000]}},
                       {"type": "context", "elements": [{"type": "mrkdwn", "text": context[:3000]}]}]}


def teams_body(alert: Alert) -> dict[str, Any]:
    """An Adaptive Card in a message envelope: what a Teams Workflows webhook ("post to a channel when a
    webhook request is received") takes, and what the older Office 365 connectors accept as well."""
    card = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
            "version": "1.4", "msteams": {"width": "Full"},
            "body": [{"type": "TextBlock", "text": alert.title, "weight": "Bolder", "size": "Medium", "wrap": True,
                      "color": _TEAMS_COLOR[alert.severity]},
                     {"type": "TextBlock", "text": alert.text, "wrap": True},
                     {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in _facts(alert)]}]}
    return {"type": "message", "summary": alert.title,
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
                             "content": card}]}


def generic_body(alert: Alert) -> dict[str, Any]:
    """The alert itself, for a receiver of one's own (a pager bridge, a ticketing system)."""
    return {"source": "nt8bridge", "version": __version__, **alert.to_dict()}


_BODIES: dict[str, Callable[[Alert], dict[str, Any]]] = {"slack": slack_body, "teams": teams_body,
                                                         "generic": generic_body}


def mail_message(alert: Alert, mail_from: str, mail_to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"[nt8bridge {str(alert.severity).upper()}] {alert.title}"
    msg["From"] = mail_from
    msg["To"] = ", ".join(mail_to)
    msg["Date"] = formatdate(alert.ts_ns / 1e9, localtime=False)
    msg["Message-ID"] = make_msgid("nt8bridge")
    msg["X-Nt8bridge-Kind"] = alert.kind
    msg["X-Nt8bridge-Severity"] = str(alert.severity)
    width = max(len(k) for k, _ in _facts(alert))
    msg.set_content(alert.text + "\n\n" + "\n".join(f"{k.ljust(width)}  {v}" for k, v in _facts(alert)) + "\n")
    return msg


# --- destinations ---------------------------------------------------------------------------------

class WebhookDestination:
    def __init__(self, fmt: str, url: str, name: str, timeout_s: float = 10.0) -> None:
        if fmt not in _BODIES:
            raise ValueError(f"webhook format {fmt!r} is not one of {', '.join(WEBHOOK_FORMATS)}")
        self.fmt = fmt
        self.url = url
        self.name = name
        self.host = urlsplit(url).hostname or "?"
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # never the URL: its path is the credential
        return f"WebhookDestination({self.name}, {self.host})"

    def send(self, alert: Alert) -> None:
        data = json.dumps(_BODIES[self.fmt](alert), default=str).encode("utf-8")
        req = urllib.request.Request(self.url, data=data, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "User-Agent": f"nt8bridge/{__version__}"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read(4096)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip() if exc.fp is not None else ""
            what = f"{self.host} answered HTTP {exc.code}" + (f": {detail}" if detail else "")
            transient = exc.code in (408, 425, 429) or exc.code >= 500
            raise DeliveryError(what, permanent=not transient,
                                retry_after=_retry_after(exc.headers.get("Retry-After") if exc.headers else None)) \
                from None
        except urllib.error.URLError as exc:
            raise DeliveryError(f"{self.host}: {exc.reason}") from None
        except (TimeoutError, OSError) as exc:  # a read timing out, a connection reset mid-answer
            raise DeliveryError(f"{self.host}: {exc!r}") from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: the backoff decides instead
        return None


class MailDestination:
    """One SMTP conversation per alert: STARTTLS (or implicit TLS on port 465), then login, then the message."""

    def __init__(self, host: str, port: int, mail_from: str, mail_to: list[str], *, starttls: bool = True,
                 user: str = "", password: str = "", timeout_s: float = 15.0,
                 ssl_context: ssl.SSLContext | None = None, name: str = "email") -> None:
        self.host, self.port = host, port
        self.mail_from, self.mail_to = mail_from, mail_to
        self.starttls, self.user, self._password = starttls, user, password
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self.name = name

    def __repr__(self) -> str:
        return f"MailDestination({self.name}, {self.host}:{self.port} -> {', '.join(self.mail_to)})"

    def send(self, alert: Alert) -> None:
        msg = mail_message(alert, self.mail_from, self.mail_to)
        ctx = self.ssl_context or ssl.create_default_context()
        try:
            if self.port == 465:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=ctx)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with smtp:
                smtp.ehlo()
                if self.starttls and self.port != 465:
                    smtp.starttls(context=ctx)
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self._password)
                smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"{self.host} refused the login of {self.user}: {exc.smtp_code} "
                                f"{_smtp_text(exc.smtp_error)}", permanent=True) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{self.host}: {exc} (STARTTLS or AUTH not offered)", permanent=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"{self.host} refused the recipients {', '.join(exc.recipients)}",
                                permanent=True) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{self.host}: {exc.smtp_code} {_smtp_text(exc.smtp_error)}",
                                permanent=exc.smtp_code >= 500) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"{self.host}: its certificate does not verify ({exc.verify_message}); a private "
                                "CA goes in SSL_CERT_FILE", permanent=True) from None
        except (smtplib.SMTPException, OSError) as exc:  # disconnected, refused, timed out, TLS failed
            raise DeliveryError(f"{self.host}:{self.port}: {exc!r}") from None


def _smtp_text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


# --- retries --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Retry:
    attempts: int = 4          # the first try and three more
    backoff_s: float = 2.0     # 2, 4, 8 s between them: a receiver restarting has time to come back
    max_backoff_s: float = 60.0


@dataclass
class Delivery:
    ok: bool
    attempts: int
    error: str = ""
    errors: list[str] = field(default_factory=list)


def deliver(destination: Destination, alert: Alert, retry: Retry = Retry(),
            wait: Callable[[float], bool] = lambda s: False) -> Delivery:
    """Send with retries; ``wait(seconds)`` sleeps between attempts and returns True when asked to stop
    (``threading.Event.wait``). Never raises for a delivery problem: the result says what happened."""
    errors: list[str] = []
    for attempt in range(1, retry.attempts + 1):
        try:
            destination.send(alert)
            return Delivery(True, attempt, "", errors)
        except DeliveryError as exc:
            errors.append(str(exc))
            if exc.permanent or attempt == retry.attempts:
                break
            delay = min(retry.max_backoff_s, exc.retry_after if exc.retry_after is not None
                        else retry.backoff_s * 2 ** (attempt - 1))
            log.info("alert %s to %s: attempt %d failed (%s); again in %.3g s", alert.kind, destination.name,
                     attempt, exc, delay)
            if wait(delay):
                break
    return Delivery(False, len(errors), errors[-1] if errors else "not sent", errors)


# --- configuration --------------------------------------------------------------------------------

def parse_webhooks(text: str, source: str) -> list[tuple[str, str]]:
    """``FORMAT=URL`` lines (blank lines and ``#`` comments skipped) as (format, url); every bad line is
    named in one ConfigError, without the URL (it is a credential)."""
    out: list[tuple[str, str]] = []
    errors: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fmt, eq, url = line.partition("=")
        fmt, url = fmt.strip().lower(), url.strip()
        where = f"alerts.webhooks_file {source}, line {n}"
        if not eq:
            errors.append(f"{where}: expected FORMAT=URL (FORMAT one of {', '.join(WEBHOOK_FORMATS)})")
            continue
        if fmt not in WEBHOOK_FORMATS:
            errors.append(f"{where}: format {fmt!r} is not one of {', '.join(WEBHOOK_FORMATS)}")
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append(f"{where}: the URL is not http(s)://HOST/...")
            continue
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            errors.append(f"{where}: plain http to {parts.hostname} would send the webhook's secret in clear: "
                          "use https")
            continue
        out.append((fmt, url))
    if errors:
        raise ConfigError("invalid webhooks file:\n  " + "\n  ".join(errors))
    return out


def _read(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def destinations_from_config(ac: AlertsConfig) -> list[Destination]:
    """The webhooks of ``alerts.webhooks_file`` and, with ``alerts.smtp_host``, the e-mail."""
    out: list[Destination] = []
    if ac.webhooks_file:
        counts: dict[str, int] = {}
        for fmt, url in parse_webhooks(_read(ac.webhooks_file, "alerts.webhooks_file"), ac.webhooks_file):
            counts[fmt] = counts.get(fmt, 0) + 1
            out.append(WebhookDestination(fmt, url, f"{fmt}-{counts[fmt]}"))
    if ac.smtp_host:
        to = [a.strip() for a in ac.mail_to.split(",") if a.strip()]
        if not to:
            raise ConfigError("alerts.mail_to: give the recipients (comma separated) of alert e-mails, or leave "
                              "alerts.smtp_host empty")
        password = ""
        if ac.smtp_user:
            if not ac.smtp_password_file:
                raise ConfigError("alerts.smtp_password_file: needed with alerts.smtp_user (a file holding the "
                                  "password; the configuration itself never holds a secret)")
            password = _read(ac.smtp_password_file, "alerts.smtp_password_file").rstrip("\r\n")
            if not ac.smtp_starttls and ac.smtp_port != 465 and ac.smtp_host not in _LOOPBACK:
                raise ConfigError("alerts.smtp_starttls: a login without STARTTLS would send the password in "
                                  f"clear to {ac.smtp_host}; turn it on (or use port 465)")
        out.append(MailDestination(ac.smtp_host, ac.smtp_port, ac.mail_from, to, starttls=ac.smtp_starttls,
                                   user=ac.smtp_user, password=password))
    return out
