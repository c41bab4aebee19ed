"""Who may use the operator console (bridge/console/auth.py, csrf.py): password hashes, the users and token
files, the refusal to listen beyond loopback without credentials and TLS, bearer and Basic authentication,
the login form and its session cookie, and the CSRF guard of every POST."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the console needs the console extra: pip install nt8bridge[console]")

from fastapi.testclient import TestClient  # noqa: E402

from bridge.cli.main import main  # noqa: E402
from bridge.console import auth, csrf  # noqa: E402
from bridge.console.app import create_app  # noqa: E402
from bridge.core.config import ConfigError, ConsoleConfig, build_config  # noqa: E402

FAST = 1000  # iterations for hashes made in tests (the default, 600,000, costs half a second each)
HOST = "http://127.0.0.1:8080"


@pytest.fixture
def no_user_config(tmp_path, monkeypatch):
    """The command line as on a machine without a config file or NT8BRIDGE_* variables."""
    for k in list(os.environ):
        if k.startswith("NT8BRIDGE_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "no-config"))


# --------------------------------------------------------------------------- password hashes


def test_a_hash_verifies_its_password_only():
    encoded = auth.hash_password("correct horse", iterations=FAST)
    scheme, iterations, salt, digest = encoded.split("$")
    assert (scheme, iterations) == ("pbkdf2_sha256", str(FAST))
    # the hash is PBKDF2-HMAC-SHA256 of the password under that salt, nothing of our own
    assert digest == hashlib.pbkdf2_hmac("sha256", b"correct horse", bytes.fromhex(salt), FAST).hex()
    assert auth.verify_password("correct horse", encoded)
    assert not auth.verify_password("correct horse ", encoded)
    assert not auth.verify_password("", encoded)
    # a fresh salt each time: equal passwords do not give equal hashes
    assert auth.hash_password("correct horse", iterations=FAST) != encoded


@pytest.mark.parametrize("encoded", ["", "pbkdf2_sha256$1000$00$", "md5$1000$abcd$" + "00" * 32,
                                     "pbkdf2_sha256$x$abcd$" + "00" * 32, "pbkdf2_sha256$0$abcd$" + "00" * 32,
                                     "pbkdf2_sha256$99999999999$abcd$" + "00" * 32,
                                     "pbkdf2_sha256$1000$zz$" + "00" * 32])
def test_a_malformed_hash_verifies_nothing(encoded):
    assert not auth.verify_password("anything", encoded)


def test_a_tampered_hash_does_not_verify():
    encoded = auth.hash_password("pw-123456", iterations=FAST)
    head, digest = encoded.rsplit("$", 1)
    flipped = f"{head}${'0' if digest[0] != '0' else '1'}{digest[1:]}"
    assert not auth.verify_password("pw-123456", flipped)


def test_users_file_is_written_private_read_back_and_updated(tmp_path):
    path = tmp_path / "users.toml"
    assert auth.write_user(path, "alice", "first-password", iterations=FAST) is True
    assert auth.write_user(path, "bob", "bobs-password", iterations=FAST) is True
    assert auth.write_user(path, "alice", "second-password", iterations=FAST) is False  # changed, not added
    users = auth.read_users(path)
    assert sorted(users) == ["alice", "bob"]
    assert auth.verify_password("second-password", users["alice"])
    assert not auth.verify_password("first-password", users["alice"])
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("text, what", [
    ("[users\n", "not valid TOML"),
    ("[other]\nx = 1\n", r"no \[users\] table"),
    ('[users]\n"alice" = "plain-text-password"\n', "password hash of alice is not usable"),
    ('[users]\n"a b" = "pbkdf2_sha256$1000$00$' + "00" * 32 + '"\n', "user name 'a b'"),
])
def test_a_bad_users_file_is_refused_naming_the_file(tmp_path, text, what):
    path = tmp_path / "users.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=what) as info:
        auth.read_users(path)
    assert str(path) in str(info.value)


def test_token_file_takes_every_line_but_comments_and_refuses_short_tokens(tmp_path):
    path = tmp_path / "token"
    path.write_text("# console token\n\n" + "a" * 64 + "\n" + "b" * 32 + "\n", encoding="utf-8")
    assert auth.read_tokens(path) == ("a" * 64, "b" * 32)
    path.write_text("short\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="guessable"):
        auth.read_tokens(path)
    with pytest.raises(ConfigError, match="cannot read console.token_file"):
        auth.read_tokens(tmp_path / "missing")


def test_console_user_command_writes_a_hash_from_stdin(tmp_path, monkeypatch, capsys, no_user_config):
    path = tmp_path / "users.toml"
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    assert main(["console", "user", "carol", "--file", str(path), "--password-stdin"]) == 0
    assert "added carol" in capsys.readouterr().out
    assert auth.verify_password("a long enough password", auth.read_users(path)["carol"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["console", "user", "carol", "--file", str(path), "--password-stdin"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert auth.verify_password("a long enough password", auth.read_users(path)["carol"])  # unchanged


# --------------------------------------------------------------------------- where it may listen


@pytest.mark.parametrize("bind", ["127.0.0.1:8080", "localhost:9000", "[::1]:8080", "127.0.0.2:0"])
def test_loopback_needs_nothing(bind):
    assert auth.exposure_problem(ConsoleConfig(), bind) is None


BOTH = ("console bind 0.0.0.0:8080 is reachable from other machines and needs a credential (console.users_file, see "
        "`nt8bridge console user NAME --file FILE`, or console.token_file) and HTTPS (console.tls_cert and "
        "console.tls_key): set them, or bind 127.0.0.1:PORT (docs/console.md)")


def test_beyond_loopback_needs_a_credential_and_tls_said_in_one_line():
    bare = ConsoleConfig(bind="0.0.0.0:8080")
    assert auth.exposure_problem(bare) == BOTH
    users_only = replace(bare, users_file="users.toml")
    assert auth.exposure_problem(users_only) == (
        "console bind 0.0.0.0:8080 is reachable from other machines and needs HTTPS (console.tls_cert and "
        "console.tls_key): set them, or bind 127.0.0.1:PORT (docs/console.md)")
    tls_only = replace(bare, tls_cert="c.pem", tls_key="k.pem")
    assert auth.exposure_problem(tls_only) == (
        "console bind 0.0.0.0:8080 is reachable from other machines and needs a credential (console.users_file, "
        "see `nt8bridge console user NAME --file FILE`, or console.token_file): set them, or bind 127.0.0.1:PORT "
        "(docs/console.md)")
    assert auth.exposure_problem(replace(bare, tls_cert="c.pem")) is not None  # a certificate without its key
    assert auth.exposure_problem(replace(tls_only, token_file="token")) is None
    assert auth.exposure_problem(ConsoleConfig(), "192.168.1.20:8080") is not None
    assert auth.exposure_problem(ConsoleConfig(), "desk-pc:8080") is not None  # a host name may be anything


def test_the_console_command_refuses_to_listen_beyond_loopback_in_one_line(capsys, monkeypatch, no_user_config):
    assert main(["console", "--bind", "0.0.0.0:8080"]) == 2
    assert capsys.readouterr().err == f"nt8bridge: {BOTH}\n"
    # the same from the config, with a users file but no TLS
    monkeypatch.setenv("NT8BRIDGE_CONSOLE__BIND", "[::]:8443")
    monkeypatch.setenv("NT8BRIDGE_CONSOLE__USERS_FILE", "users.toml")
    assert main(["console"]) == 2
    assert capsys.readouterr().err == ("nt8bridge: console bind [::]:8443 is reachable from other machines and needs "
                                       "HTTPS (console.tls_cert and console.tls_key): set them, or bind "
                                       "127.0.0.1:PORT (docs/console.md)\n")


def test_without_the_console_extra_the_command_says_what_to_install(monkeypatch, capsys, no_user_config):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed: importing it fails
    assert main(["console"]) == 2
    assert capsys.readouterr().err == "nt8bridge: the console needs FastAPI and uvicorn: pip install nt8bridge[console]\n"


@pytest.mark.parametrize("bind", ["8080", "host:", ":8080", "127.0.0.1:99999", "127.0.0.1:http"])
def test_a_bind_that_is_not_host_port_is_refused(bind, capsys, no_user_config):
    with pytest.raises(ValueError, match="HOST:PORT"):
        auth.parse_bind(bind)
    assert main(["console", "--bind", bind]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err


# --------------------------------------------------------------------------- requests


def _app(tmp_path: Path, **console: str):
    config = build_config({"console": console}, env={})
    # an endpoint nobody listens on, and no background threads: these tests are about who may ask
    return create_app(config, db_url=f"sqlite:///{tmp_path / 'none.sqlite'}", control_endpoint="tcp://127.0.0.1:9",
                      events_endpoint="tcp://127.0.0.1:9", start_background=False)


def test_loopback_without_credentials_serves_and_refuses_foreign_hosts(tmp_path):
    with TestClient(_app(tmp_path), base_url=HOST) as c:
        r = c.get("/api/v1/status")
        assert r.status_code == 200
        assert r.json()["auth"] == "none" and r.json()["login_required"] is False
        assert r.json()["storage"]["readable"] is False  # no recording yet: said, not an error
        # DNS rebinding: a hostile name that resolves to 127.0.0.1 arrives with its own name as Host
        r = c.get("/api/v1/status", headers={"host": "attacker.example:8080"})
        assert r.status_code == 421 and "loopback" in r.json()["error"]
    assert not (tmp_path / "none.sqlite").exists()  # reading never creates the database


def test_bearer_token(tmp_path):
    token = "t" * 40
    (tmp_path / "token").write_text(f"# console\n{token}\n", encoding="utf-8")
    with TestClient(_app(tmp_path, token_file=str(tmp_path / "token")), base_url=HOST) as c:
        r = c.get("/api/v1/status")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "Bearer" in r.json()["error"]
        assert c.get("/api/v1/status", headers={"authorization": "Bearer " + "x" * 40}).status_code == 401
        r = c.get("/api/v1/status", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["auth"] == "bearer" and r.json()["user"] is None
        # the page itself and its files load without credentials (they hold no data); the page's own
        # requests get no Basic/Bearer challenge, so the browser shows the console's login instead of its own
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
        assert "www-authenticate" not in c.get("/api/v1/status", headers={"x-console-page": "1"}).headers
        # a bearer token is never attached by a browser on its own, so it needs no CSRF token: the command
        # goes through to the control channel (where nothing answers here: 503, not 403)
        r = c.post("/api/v1/kill", json={"operator": "ops-script", "reason": "test", "confirm": "KILL"},
                   headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 503 and "no answer" in r.json()["error"]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_and_the_logged_in_user_is_the_operator(tmp_path):
    users = tmp_path / "users.toml"
    auth.write_user(users, "erin", "erins-password", iterations=FAST)
    with TestClient(_app(tmp_path, users_file=str(users)), base_url=HOST) as c:
        r = c.get("/api/v1/status")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/api/v1/status", headers=_basic("erin", "wrong-password")).status_code == 401
        assert c.get("/api/v1/status", headers=_basic("nobody", "erins-password")).status_code == 401
        r = c.get("/api/v1/status", headers=_basic("erin", "erins-password"))
        assert r.status_code == 200 and (r.json()["auth"], r.json()["user"]) == ("basic", "erin")
        c.get("/")  # the CSRF cookie
        post = {**_basic("erin", "erins-password"), "x-csrf-token": c.cookies[csrf.COOKIE], "origin": HOST}
        r = c.post("/api/v1/kill", json={"operator": "mallory", "reason": "r", "confirm": "KILL"}, headers=post)
        assert r.status_code == 403 and "logged in as erin" in r.json()["error"]


def test_login_form_sets_a_session_cookie_and_guessing_is_slowed(tmp_path):
    users = tmp_path / "users.toml"
    auth.write_user(users, "frank", "franks-password", iterations=FAST)
    with TestClient(_app(tmp_path, users_file=str(users)), base_url=HOST) as c:
        c.get("/")
        headers = {"x-csrf-token": c.cookies[csrf.COOKIE], "origin": HOST}
        # the login form is a POST like any other: CSRF-checked
        assert c.post("/api/v1/login", json={"user": "frank", "password": "franks-password"}).status_code == 403
        r = c.post("/api/v1/login", json={"user": "frank", "password": "nope"}, headers=headers)
        assert r.status_code == 401 and r.json() == {"error": "wrong user name or password"}
        r = c.post("/api/v1/login", json={"user": "frank", "password": "franks-password"}, headers=headers)
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert auth.SESSION_COOKIE in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        r = c.get("/api/v1/status")
        assert (r.json()["auth"], r.json()["user"]) == ("session", "frank")
        # a cookie forged for another user (the signature no longer matches) is nobody
        c.cookies.set(auth.SESSION_COOKIE, base64.urlsafe_b64encode(b"root|9999999999|00").decode())
        assert c.get("/api/v1/status").status_code == 401
        c.cookies.delete(auth.SESSION_COOKIE)
        for _ in range(auth.FAILURES_ALLOWED):
            c.post("/api/v1/login", json={"user": "frank", "password": "guess"}, headers=headers)
        r = c.post("/api/v1/login", json={"user": "frank", "password": "franks-password"}, headers=headers)
        assert r.status_code == 429 and "too many failed logins" in r.json()["error"]


def test_csrf_guard_of_posts(tmp_path):
    with TestClient(_app(tmp_path), base_url=HOST) as c:
        body = {"operator": "gina", "reason": "r", "confirm": "KILL"}
        r = c.post("/api/v1/kill", json=body)
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["error"]
        page = c.get("/")
        assert "SameSite=strict" in page.headers["set-cookie"] or "samesite=strict" in page.headers["set-cookie"].lower()
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        token = c.cookies[csrf.COOKIE]
        r = c.post("/api/v1/kill", json=body, headers={"x-csrf-token": "x" + token[1:], "origin": HOST})
        assert r.status_code == 403
        r = c.post("/api/v1/kill", json=body, headers={"x-csrf-token": token})
        assert r.status_code == 403 and "neither Origin nor Referer" in r.json()["error"]
        r = c.post("/api/v1/kill", json=body, headers={"x-csrf-token": token, "origin": "http://evil.example"})
        assert r.status_code == 403 and "evil.example" in r.json()["error"]
        r = c.post("/api/v1/kill", json=body, headers={"x-csrf-token": token, "origin": "http://127.0.0.1:9999"})
        assert r.status_code == 403  # another port is another origin
        r = c.post("/api/v1/kill", json=body, headers={"x-csrf-token": token, "referer": f"{HOST}/#risk"})
        assert r.status_code == 503  # past the guard: nothing answers on the control endpoint of these tests


@pytest.mark.parametrize("url, host, ok", [
    ("http://127.0.0.1:8080", "127.0.0.1:8080", True), ("http://127.0.0.1:8080/x?y", "127.0.0.1:8080", True),
    ("http://localhost:8080", "127.0.0.1:8080", False), ("https://127.0.0.1:8080", "127.0.0.1:8080", False),
    ("http://127.0.0.1", "127.0.0.1:80", True), ("null", "127.0.0.1:8080", False), ("", "127.0.0.1:8080", False),
])
def test_same_origin(url, host, ok):
    assert csrf.same_origin(url, "http", host) is ok
