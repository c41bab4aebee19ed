"""Which console signals the sidecar listens to and a parent sends, per platform
(bridge/transport/sidecar.py). Off Windows this proves the choice only: the Windows constants are
stand-ins here, and that Ctrl+Break reaches a child's process group is for a Windows run to show. The
stop that works everywhere, ``shutdown`` on the control channel, is tested for real in
tests/integration/test_stop.py."""

from __future__ import annotations

import signal
import subprocess
import sys

from bridge.transport import sidecar


def test_posix_stops_on_sigint_and_sigterm_and_a_parent_sends_sigint(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert sidecar.stop_signals() == [signal.SIGINT, signal.SIGTERM]
    assert sidecar.interrupt_signal() == signal.SIGINT
    assert sidecar.child_creationflags() == 0


def test_windows_also_stops_on_ctrl_break_sent_to_a_child_in_its_own_process_group(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(signal, "SIGBREAK", 21, raising=False)
    monkeypatch.setattr(signal, "CTRL_BREAK_EVENT", 1, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    assert sidecar.stop_signals() == [signal.SIGINT, signal.SIGTERM, 21]
    assert sidecar.interrupt_signal() == 1
    assert sidecar.child_creationflags() == 0x200
