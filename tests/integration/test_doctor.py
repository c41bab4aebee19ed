"""``nt8bridge doctor``: each check failing with its advice, and a desk where everything is in place (a
running sidecar with a live NT8 session, an NT8 folder with the NinjaScript installed)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.cli import doctor
from bridge.cli.main import main
from bridge.core.config import build_config, to_toml
from bridge.nt8.client import Nt8Client
from bridge.nt8.deploy import install_ninjascript
from bridge.protocol import codec
from bridge.protocol.messages import Heartbeat, Hello, InstrumentDecl, PROTOCOL_VERSION, Welcome

CLI = [sys.executable, "-m", "bridge.cli"]
ES = InstrumentDecl("ES 06-18", 0.25, 50.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, *, bind_port: int | None = None, db: str | None = None, metrics: bool = False,
                 metrics_port: int | None = None) -> tuple[Path, dict[str, int]]:
    """A config on ports of its own (never the defaults: other runs on this machine may hold them)."""
    ports = {"bind": bind_port or free_port(), "control": free_port(), "metrics": metrics_port or free_port()}
    values = {"server": {"bind": f"tcp://127.0.0.1:{ports['bind']}",
                         "control_bind": f"tcp://127.0.0.1:{ports['control']}"},
              "storage": {"url": db or f"sqlite:///{tmp_path / 'desk.sqlite'}"},
              "metrics": {"enabled": metrics, "port": ports["metrics"]}}
    path = tmp_path / "config.toml"
    path.write_text(to_toml(build_config(values, env={})), encoding="utf-8")
    return path, ports


def nt8_dir(tmp_path: Path, installed: bool = True) -> Path:
    user = tmp_path / "NinjaTrader 8"
    (user / "bin" / "Custom" / "Strategies").mkdir(parents=True)
    if installed:
        install_ninjascript(user / "bin" / "Custom")
    return user


def run(capsys, config: Path, nt8: Path, *extra: str) -> tuple[int, dict[str, dict], str]:
    """Doctor in this process (so checks can be steered); exit code, checks by name, and the text output."""
    code = main(["--config", str(config), "doctor", "--nt8-dir", str(nt8), *extra])
    out = capsys.readouterr().out
    if "--json" in extra:
        return code, {c["name"]: c for c in json.loads(out)["checks"]}, out
    return code, {}, out


def only_failure(checks: dict[str, dict]) -> list[str]:
    return [name for name, c in checks.items() if c["status"] == "FAIL"]


def test_a_bad_config_fails_with_the_loader_message_and_the_way_to_a_fresh_one(tmp_path, capsys):
    config, _ = write_config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8").replace("heartbeat_ms = 1000", "heartbeat_ms = 10"),
                      encoding="utf-8")
    code, checks, _ = run(capsys, config, nt8_dir(tmp_path), "--json")
    assert code == 1 and only_failure(checks) == ["config"]
    assert "server.heartbeat_ms: must be >= 50" in checks["config"]["detail"]
    assert f'nt8bridge config init --out "{config}" --force' in checks["config"]["advice"]


def test_a_port_taken_by_another_program_fails_and_says_how_to_find_it(tmp_path, capsys):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        config, _ = write_config(tmp_path, bind_port=port)
        user = nt8_dir(tmp_path)
        code, _, text = run(capsys, config, user)
        assert code == 1
        code, checks, _ = run(capsys, config, user, "--json")
    assert code == 1 and only_failure(checks) == ["port server.bind"]
    assert checks["port server.bind"]["detail"] == f"tcp://127.0.0.1:{port} is taken by another program"
    assert f":{port}" in checks["port server.bind"]["advice"] and "Sidecar endpoint of the NT8 strategy" in \
        checks["port server.bind"]["advice"]
    assert "FAIL  port server.bind" in text and "-> find it with" in text and "doctor: 1 FAIL" in text


def test_a_missing_nt8_folder_fails(tmp_path, capsys):
    config, _ = write_config(tmp_path)
    code, checks, _ = run(capsys, config, tmp_path / "no-such-folder", "--json")
    assert code == 1 and only_failure(checks) == ["nt8 folder"]
    assert "is not NT8's user folder" in checks["nt8 folder"]["detail"]
    assert "start it once" in checks["nt8 folder"]["advice"]
    assert checks["ninjascript"]["status"] == "WARN"  # nothing to check it in


def test_missing_ninjascript_fails_with_the_install_command(tmp_path, capsys):
    config, _ = write_config(tmp_path)
    code, checks, _ = run(capsys, config, nt8_dir(tmp_path, installed=False), "--json")
    assert code == 1 and only_failure(checks) == ["ninjascript"]
    assert "is not installed in" in checks["ninjascript"]["detail"]
    assert "nt8bridge ninjascript install" in checks["ninjascript"]["advice"]


def test_ninjascript_of_another_protocol_version_fails(tmp_path, capsys):
    config, _ = write_config(tmp_path)
    user = nt8_dir(tmp_path)
    protocol = user / "bin" / "Custom" / "AddOns" / "Nt8Bridge" / "Protocol.cs"
    protocol.write_text(protocol.read_text(encoding="utf-8").replace(
        f"public const byte Version = {PROTOCOL_VERSION};", f"public const byte Version = {PROTOCOL_VERSION + 1};"),
        encoding="utf-8")
    code, checks, _ = run(capsys, config, user, "--json")
    assert code == 1 and only_failure(checks) == ["ninjascript"]
    assert (f"speaks wire protocol v{PROTOCOL_VERSION + 1}, this sidecar v{PROTOCOL_VERSION}"
            in checks["ninjascript"]["detail"])
    assert "nt8bridge ninjascript install" in checks["ninjascript"]["advice"]


@pytest.mark.parametrize("db, says", [
    ("sqlite:///{tmp}/no/such/folder/desk.sqlite", "does not exist: create it"),
    ("postgresql://trader@127.0.0.1:{port}/desk", "cannot reach PostgreSQL"),
])
def test_an_unreachable_database_fails(tmp_path, capsys, db, says):
    config, _ = write_config(tmp_path, db=db.format(tmp=tmp_path, port=free_port()))  # a port nothing listens on
    code, checks, _ = run(capsys, config, nt8_dir(tmp_path), "--json")
    assert code == 1 and only_failure(checks) == ["database"]
    assert says in checks["database"]["detail"] and "storage.url" in checks["database"]["advice"]


def test_an_old_python_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(doctor, "_python_version", lambda: (3, 10, 12))
    config, _ = write_config(tmp_path)
    code, checks, _ = run(capsys, config, nt8_dir(tmp_path), "--json")
    assert code == 1 and only_failure(checks) == ["python"]
    assert "Python 3.10.12" in checks["python"]["detail"] and "needs 3.11 or newer" in checks["python"]["detail"]


def test_outside_a_virtual_environment_is_a_warning_and_a_stale_install_a_failure(tmp_path, capsys, monkeypatch):
    config, _ = write_config(tmp_path)
    user = nt8_dir(tmp_path)
    monkeypatch.setattr(doctor, "_environment", lambda: ("/usr", "/usr", doctor.__version__))
    code, checks, _ = run(capsys, config, user, "--json")
    assert code == 0 and checks["environment"]["status"] == "WARN"
    assert "not a virtual environment" in checks["environment"]["detail"]
    monkeypatch.setattr(doctor, "_environment", lambda: ("/venv", "/usr", "0.0.1"))
    code, checks, _ = run(capsys, config, user, "--json")
    assert code == 1 and only_failure(checks) == ["environment"]
    assert "nt8bridge 0.0.1 installed" in checks["environment"]["detail"]


def doctor_json(config: Path, nt8: Path) -> tuple[int, dict[str, dict]]:
    out = subprocess.run([*CLI, "--config", str(config), "doctor", "--nt8-dir", str(nt8), "--json"],
                         capture_output=True, text=True, timeout=120)
    return out.returncode, {c["name"]: c for c in json.loads(out.stdout)["checks"]}


def skewed_session(endpoint: str, behind_ns: int):
    """A session whose NT8 clock runs ``behind_ns`` behind the sidecar's: HELLO, then one HEARTBEAT so stamped."""
    import zmq
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart(codec.encode(Hello("skewed", "Sim102", 0, 1000, time.time_ns(), "test", [ES]), 1,
                                     time.time_ns()))
    assert sock.poll(10_000) and isinstance(codec.decode(sock.recv_multipart())[1], Welcome)
    sock.send_multipart(codec.encode(Heartbeat(0), 2, time.time_ns() - behind_ns))
    return sock


def test_a_desk_in_order_is_all_ok_and_a_skewed_nt8_clock_only_warns(tmp_path):
    config, ports = write_config(tmp_path, metrics=True)
    user = nt8_dir(tmp_path)
    ready = tmp_path / "ready"
    log = open(tmp_path / "sidecar.log", "wb")
    sidecar = subprocess.Popen([*CLI, "--config", str(config), "serve", "--ready-file", str(ready)], stdout=log,
                               stderr=subprocess.STDOUT)
    client = skewed = None
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert sidecar.poll() is None and time.monotonic() < deadline, (tmp_path / "sidecar.log").read_text()
            time.sleep(0.05)
        client = Nt8Client(ready.read_text(encoding="utf-8"), instance_id="desk", account="Sim101", instruments=[ES])
        client.connect()
        client.step(Heartbeat(0))  # the first message after HELLO: the clock is sampled

        code, checks = doctor_json(config, user)
        assert code == 0, checks
        statuses = {name: c["status"] for name, c in checks.items()}
        in_venv = sys.prefix != sys.base_prefix
        assert statuses.pop("environment") == ("OK" if in_venv else "WARN")
        assert statuses.pop("clock desk") in ("OK", "WARN")  # its size is the machine's business, not the test's
        assert set(statuses.values()) == {"OK"}, checks
        for key in ("server.bind", "server.control_bind", "metrics.port"):
            assert f"held by our own sidecar (pid {sidecar.pid})" in checks[f"port {key}"]["detail"], checks
        assert "NT8 (Sim101) sends stamps" in checks["clock desk"]["detail"]
        assert f"wire protocol v{PROTOCOL_VERSION}" in checks["ninjascript"]["detail"]
        assert "schema at" in checks["database"]["detail"]

        skewed = skewed_session(ready.read_text(encoding="utf-8"), 5_000_000_000)
        deadline = time.monotonic() + 30
        while True:  # the heartbeat is handled between two polls of the sidecar's loop
            code, checks = doctor_json(config, user)
            sampled = "sends stamps" in checks.get("clock skewed", {}).get("detail", "")
            if sampled or time.monotonic() > deadline:
                break
        assert code == 0 and checks["clock skewed"]["status"] == "WARN", checks
        offset_ms = float(re.search(r"sends stamps ([-+][\d.]+) ms", checks["clock skewed"]["detail"]).group(1))
        assert offset_ms <= -5000  # 5 s behind, and the latency only adds to it
        assert "w32tm /resync" in checks["clock skewed"]["advice"]
    finally:
        if client is not None:
            client.close(reason=None)
        if skewed is not None:
            skewed.close()
        stop = subprocess.run([*CLI, "--config", str(config), "stop", "--wait", "60"], capture_output=True, text=True,
                              timeout=120)
        code = sidecar.wait(60)
        log.close()
    assert stop.returncode == 0 and code == 0, stop.stdout + stop.stderr


def test_remote_mode_is_checked_as_the_sidecar_would_start(tmp_path, capsys):
    """A bind beyond loopback without a secret is what `nt8bridge serve` refuses: doctor says so first;
    with the secret file it is remote mode, reported without a word of the secret."""
    from bridge.transport.security import new_secret_file, read_secret_file

    config, ports = write_config(tmp_path)
    exposed = config.read_text(encoding="utf-8").replace(f"tcp://127.0.0.1:{ports['bind']}",
                                                         f"tcp://0.0.0.0:{ports['bind']}")
    config.write_text(exposed, encoding="utf-8")
    user = nt8_dir(tmp_path)
    code, checks, _ = run(capsys, config, user, "--json")
    assert code == 1 and only_failure(checks) == ["security"]
    assert "nt8bridge secret new" in checks["security"]["detail"]
    secret = new_secret_file(tmp_path / "secret.hex")
    config.write_text(exposed.replace('secret_file = ""', f'secret_file = "{secret.as_posix()}"'), encoding="utf-8")
    code, checks, _ = run(capsys, config, user, "--json")
    assert code == 0 and checks["security"]["status"] == "WARN"  # no allowlist, no operator keys: said, not refused
    assert "remote mode: 1 secret" in checks["security"]["detail"]
    assert read_secret_file(secret)[0].hex() not in json.dumps(checks)
