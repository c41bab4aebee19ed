"""Run one step of the Windows setup: the whole output goes to the setup log, its last lines to stdout.

    python logrun.py LOGFILE COMMAND [ARG...]

The setup (installer/nt8bridge.nsi) runs every command through this script. NSIS's nsExec keeps
at most 1024 characters of a command's output, enough for the message of a step that failed (the
lines printed here) but not for a pip install; the log keeps all of it, in UTF-8. The exit code is
the command's. Python opens the log itself rather than the setup redirecting a handle to it, which
also works where std handles on files misbehave (Wine).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys

TAIL_LINES = 12
TAIL_CHARS = 900
# the password of a database URL (postgresql://user:PASSWORD@host/db) stays out of the log
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s\"]*:)[^\s\"]*@")


def redact(text: str) -> str:
    return _PASSWORD.sub(r"\1***@", text)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python logrun.py LOGFILE COMMAND [ARG...]", file=sys.stderr)
        return 2
    log, cmd = argv[0], argv[1:]
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    started = datetime.datetime.now()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env)
        code, text = proc.returncode, proc.stdout.decode("utf-8", "replace")
    except OSError as exc:
        code, text = 127, f"could not run {cmd[0]}: {exc}\n"
    text = redact(text.replace("\r\n", "\n"))
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"[{started:%Y-%m-%d %H:%M:%S}] > {redact(subprocess.list2cmdline(cmd))}\n")
        f.write(text if text.endswith("\n") or not text else text + "\n")
        f.write(f"[exit code {code}, {(datetime.datetime.now() - started).total_seconds():.0f} s]\n")
    tail = "\n".join(text.strip().splitlines()[-TAIL_LINES:])
    sys.stdout.reconfigure(errors="replace")  # the setup reads it in the ANSI code page
    print(tail[-TAIL_CHARS:])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
