"""deploy/postgres/*.conf are what `nt8bridge db drill` proves: the primary's settings there are the drill's, and
the archive and restore commands the drill writes read back intact from postgresql.conf's quoting."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.storage import replication as rep

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "postgres"


def settings(path: Path) -> dict[str, str]:
    """The uncommented ``name = value`` lines of a postgresql.conf snippet, quotes and comments removed."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*([a-z_]+)\s*=\s*('(?:[^']|'')*'|[^\s#]+)", line)
        if m:
            found[m.group(1)] = m.group(2).strip("'")
    return found


def test_primary_conf_has_the_settings_the_drill_proves():
    shipped = settings(DEPLOY / "primary.conf")
    assert {k: shipped.get(k) for k in rep.PRIMARY_SETTINGS} == rep.PRIMARY_SETTINGS
    assert "%p" in shipped["archive_command"] and "%f" in shipped["archive_command"]
    assert settings(DEPLOY / "standby.conf")["hot_standby"] == "on"
    recovery = settings(DEPLOY / "recovery.conf.example")
    assert {"restore_command", "recovery_target_time", "recovery_target_action"} <= set(recovery)


def _read_back(literal: str) -> str:
    """What PostgreSQL's configuration parser makes of a quoted value: backslash escapes, '' for a quote."""
    assert literal[0] == literal[-1] == "'"
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\":
            out.append(body[i + 1])
            i += 2
        elif body.startswith("''", i):
            out.append("'")
            i += 2
        else:
            assert body[i] != "'", "an unescaped quote ends the value early"
            out.append(body[i])
            i += 1
    return "".join(out)


def test_windows_paths_and_quotes_survive_postgresql_conf_quoting():
    for value in ('if not exist "D:\\pg-archive\\%f" copy "%p" "D:\\pg-archive\\%f"',
                  "test ! -f '/srv/pg archive/%f' && cp '%p' '/srv/pg archive/%f'", "C:\\new\\table"):
        assert _read_back(rep.conf_value(value)) == value
