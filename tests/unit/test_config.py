"""Configuration: defaults, TOML, environment overrides and the errors a user sees."""

from __future__ import annotations

import pytest

from bridge.core.config import Config, ConfigError, build_config, load_config, to_toml


def test_defaults_are_valid_and_round_trip_through_show():
    config = build_config({}, env={})
    assert config == Config()
    import tomllib
    assert build_config(tomllib.loads(to_toml(config)), env={}) == config


def test_environment_overrides_the_file_and_is_type_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nbind = "tcp://127.0.0.1:6000"\nheartbeat_ms = 500\n')
    config = load_config(path, env={"NT8BRIDGE_SERVER__HEARTBEAT_MS": "750", "NT8BRIDGE_QUALITY__CHECK_SESSION_HOURS": "false"})
    assert config.server.bind == "tcp://127.0.0.1:6000"
    assert config.server.heartbeat_ms == 750
    assert config.quality.check_session_hours is False
    with pytest.raises(ConfigError, match="server.heartbeat_ms: expected int, got 'soon'"):
        load_config(path, env={"NT8BRIDGE_SERVER__HEARTBEAT_MS": "soon"})


def test_every_problem_is_named_at_once():
    with pytest.raises(ConfigError) as info:
        build_config({"server": {"heartbeat_ms": 1, "nope": 2}, "strategy": {"names": "momentum,martingale"},
                      "quality": {"jump_sigma": "high"}, "extra": {}}, env={})
    text = str(info.value)
    for expected in ("server.heartbeat_ms: must be >= 50", "server.nope: unknown key", "strategy.names: 'martingale' "
                     "is not one of momentum, reversion, spread, ml (or none)", "quality.jump_sigma: expected float", "extra: unknown section"):
        assert expected in text


def test_an_int_is_accepted_where_a_float_is_expected_but_a_bool_is_not_an_int():
    assert build_config({"quality": {"jump_sigma": 10}}, env={}).quality.jump_sigma == 10.0
    with pytest.raises(ConfigError, match="sizing.quantity: expected int"):
        build_config({"sizing": {"quantity": True}}, env={})


def test_missing_or_broken_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})


def test_session_limits_are_validated_documented_and_overridable():
    config = build_config({}, env={})
    assert (config.server.max_sessions, config.server.max_sessions_per_peer) == (64, 32)
    shown = to_toml(config)
    assert "max_sessions = 64" in shown and "max_sessions_per_peer = 32" in shown
    assert "SESSION_LIMIT_REACHED" in shown and "127.0.0.1" in shown  # each key's help text says what it does
    with pytest.raises(ConfigError) as info:
        build_config({"server": {"max_sessions": 0, "max_sessions_per_peer": "eight"}}, env={})
    assert "server.max_sessions: must be >= 1" in str(info.value)
    assert "server.max_sessions_per_peer: expected int" in str(info.value)
    config = build_config({"server": {"max_sessions": 4}}, env={"NT8BRIDGE_SERVER__MAX_SESSIONS_PER_PEER": "2"})
    assert (config.server.max_sessions, config.server.max_sessions_per_peer) == (4, 2)


def test_feed_sections_are_sub_tables_and_the_api_key_never_leaves():
    import tomllib

    from bridge.core.config import ConfigError, build_config, to_toml
    c = build_config({"feeds": {"enabled": "ib,alpha_vantage", "ib": {"port": 7497},
                                "alpha_vantage": {"api_key": "K3Y-SECRET"}}},
                     env={"NT8BRIDGE_FEEDS_IB__CLIENT_ID": "5"})
    assert (c.feeds.enabled, c.feeds_ib.port, c.feeds_ib.client_id) == ("ib,alpha_vantage", 7497, 5)
    assert c.feeds_alpha_vantage.api_key == "K3Y-SECRET"
    text = to_toml(c)
    assert "[feeds.ib]" in text and "[feeds.alpha_vantage]" in text and "K3Y-SECRET" not in text
    assert build_config(tomllib.loads(text), env={}).feeds_ib.port == 7497
    with pytest.raises(ConfigError) as exc:
        build_config({"feeds": {"ib": {"prot": 1}, "alpha_vantage": {"requests_per_day": 0}}}, env={})
    assert "feeds.ib.prot: unknown key" in str(exc.value)
    assert "feeds.alpha_vantage.requests_per_day: must be >= 1" in str(exc.value)
