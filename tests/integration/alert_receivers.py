"""Real receivers for the notifier's tests, all on loopback: a webhook server (``http.server``), an SMTP server
(aiosmtpd) that insists on STARTTLS and a login, with a self-signed certificate made here with
``cryptography``, and :class:`PublishingSidecar`: the sidecar's own EventPublisher on a real socket,
publishing a snapshot every SNAPSHOT_INTERVAL_S as the sidecar does, and whatever rows a test hands it."""

from __future__ import annotations

import datetime
import ipaddress
import json
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import zmq

from bridge.transport.events import SNAPSHOT_INTERVAL_S, EventPublisher
from tests.integration.test_server import free_port  # noqa: E402,F401 - shared with the tests that import it from here
from tests.integration.test_server import wait_until as shared_wait_until  # noqa: E402


def wait_until(condition, what: str, timeout_s: float = 60.0) -> None:
    """test_server's wait, with the longer default these end-to-end runs need."""
    shared_wait_until(condition, what, timeout_s)


# --- webhooks -------------------------------------------------------------------------------------

@dataclass
class Post:
    path: str
    body: Any
    content_type: str


class WebhookReceiver:
    """Records every POST; a path listed in ``status`` answers that status (503: a dead webhook)."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.status: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw
                with receiver.lock:
                    receiver.posts.append(Post(self.path, body, self.headers.get("Content-Type", "")))
                    code = receiver.status.get(self.path, 200)
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"service unavailable")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Any]:
        with self.lock:
            return [p.body for p in self.posts if p.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- SMTP -----------------------------------------------------------------------------------------

def self_signed_cert(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (its own CA: the client trusts it through SSL_CERT_FILE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nt8bridge test SMTP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=True,
                                         content_commitment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    tls: bool
    login: str | None
    message: Any  # email.message.EmailMessage


class Mailbox:
    """aiosmtpd on a free loopback port: STARTTLS required before anything, then AUTH as USER/PASSWORD."""

    USER = "alerts"
    PASSWORD = "correct horse battery staple"

    def __init__(self, folder: Path) -> None:
        import email
        from email import policy

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.cert, key = self_signed_cert(folder)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.mails: list[Mail] = []
        self.refused_logins = 0
        box = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
                box.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), session.ssl is not None, login,
                                      email.message_from_bytes(envelope.original_content, policy=policy.default)))
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            ok = (isinstance(auth_data, LoginPassword) and auth_data.login == self.USER.encode()
                  and auth_data.password == self.PASSWORD.encode())
            if not ok:
                box.refused_logins += 1
            return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=ctx,
                                     require_starttls=True, auth_required=True, auth_require_tls=True,
                                     authenticator=authenticator, ready_timeout=30.0)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()


# --- the sidecar's event stream -------------------------------------------------------------------

@dataclass
class SnapshotState:
    trading_state: str = "ACTIVE"
    sessions: list[dict[str, Any]] = field(default_factory=list)


class PublishingSidecar:
    """An EventPublisher in a thread of its own (it is single-threaded, as in the sidecar): a snapshot every
    SNAPSHOT_INTERVAL_S, and the rows and updates tests put in ``send``, in order."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*") -> None:
        self.ctx = zmq.Context()
        self.publisher = EventPublisher(self.ctx, endpoint)
        self.endpoint = self.publisher.endpoint
        self.state = SnapshotState()
        self._todo: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_snapshot = 0.0
        while True:
            try:
                item = self._todo.get(timeout=0.02)
            except queue.Empty:
                item = ("tick", None)
            if item is None:
                break
            kind, arg = item
            if kind == "row":
                self.publisher.row(*arg)
            elif kind == "update":
                table, key, values = arg
                self.publisher.publish("update." + table, {"table": table, "key": key, "values": values})
            if time.monotonic() >= next_snapshot:
                self.publisher.publish("snapshot", {"state": {"sidecar": {"trading_state": self.state.trading_state},
                                                              "sessions": self.state.sessions}})
                next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL_S
        self.publisher.close()
        self._done.set()

    def row(self, table: str, row: tuple) -> None:
        self._todo.put(("row", (table, row)))

    def update(self, table: str, key: Any, values: dict[str, Any]) -> None:
        self._todo.put(("update", (table, key, values)))

    def close(self) -> None:
        self._todo.put(None)
        self._done.wait(10)
        self.ctx.term()


class RowSink:
    """A storage writer stand-in for a Recorder whose rows only need to reach the event stream."""

    def __init__(self, sidecar: PublishingSidecar) -> None:
        self.sidecar = sidecar

    def write(self, table: str, row: tuple) -> None:
        self.sidecar.row(table, row)

    def update(self, table: str, key: Any, values: dict[str, Any]) -> None:
        self.sidecar.update(table, key, values)
