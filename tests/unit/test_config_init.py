"""``nt8bridge config init``: a commented config.toml that loads back with the values given."""

from __future__ import annotations

import tomllib

import pytest

from bridge.cli.main import main
from bridge.core.config import Config, load_config, to_toml


def test_the_written_file_loads_back_with_the_given_values_and_the_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NT8BRIDGE_SERVER__CONTROL_BIND", "tcp://127.0.0.1:7777")  # must not leak into the file
    out = tmp_path / "desk" / "config.toml"
    assert main(["config", "init", "--out", str(out), "--bind", "tcp://127.0.0.1:6001", "--db",
                 "postgresql://trader@db.local:5432/nt8", "--metrics-port", "9200", "--account", "Sim101"]) == 0
    assert str(out) in capsys.readouterr().out
    config = load_config(out, env={})
    assert config.server.bind == "tcp://127.0.0.1:6001"
    assert config.storage.url == "postgresql://trader@db.local:5432/nt8"
    assert config.metrics.port == 9200
    assert config.server.control_bind == Config().server.control_bind
    assert config.risk_limits == ({"scope": "account:Sim101", "max_order_quantity": Config().risk.max_order_quantity,
                                   "max_net": Config().risk.max_position},)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# nt8bridge configuration") and "# ZeroMQ endpoint the ROUTER socket binds" in text
    assert text.endswith(to_toml(config))  # every key with its comment, as `config show` prints it
    assert tomllib.loads(text)["risk_limits"][0]["scope"] == "account:Sim101"


def test_an_existing_file_is_kept_unless_forced_and_a_bad_value_writes_nothing(tmp_path, capsys):
    out = tmp_path / "config.toml"
    out.write_text("# mine\n", encoding="utf-8")
    assert main(["config", "init", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text(encoding="utf-8") == "# mine\n"
    assert main(["config", "init", "--out", str(out), "--metrics-port", "70000", "--force"]) == 2
    assert "metrics.port: must be <= 65535" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "# mine\n"
    assert main(["config", "init", "--out", str(out), "--force"]) == 0
    assert load_config(out, env={}) == Config()


def test_init_works_while_the_config_in_force_is_broken(tmp_path, monkeypatch):
    broken = tmp_path / "broken.toml"
    broken.write_text("[server]\nbind = 5\n", encoding="utf-8")
    monkeypatch.setenv("NT8BRIDGE_CONFIG", str(broken))
    out = tmp_path / "fixed.toml"
    assert main(["config", "init", "--out", str(out)]) == 0  # the way out of a broken config must not need one
    assert main(["--config", str(out), "config", "show"]) == 0


@pytest.mark.parametrize("account", ["", "  "])
def test_an_account_needs_a_name(tmp_path, account, capsys):
    assert main(["config", "init", "--out", str(tmp_path / "c.toml"), "--account", account]) == 2
    assert "--account needs the NT8 account's name" in capsys.readouterr().err
