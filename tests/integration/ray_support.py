"""A Ray head for the tests, started on loopback with its own temp dir and stopped by its process group."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _free_loopback_port

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install 'nt8bridge[ray]'")


@pytest.fixture
def ray_head(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Ray head on loopback with its own temp dir; torn down by killing the process group it started in
    (``ray stop`` would stop every Ray on the machine, other sessions' included)."""
    ray_cli = Path(sys.executable).parent / ("ray.exe" if os.name == "nt" else "ray")
    port = _free_loopback_port()
    # short: Ray's Unix socket paths under it must fit in 107 bytes
    temp = tempfile.mkdtemp(prefix="rt", dir=None if os.name == "nt" else "/tmp")
    args = [str(ray_cli), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
            "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp]
    # No PYTHONPATH and another cwd for the head: the workers get the project from the driver (its sys.path
    # on this node; the executor's py_modules, on a node without this checkout).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Authentication off on both sides, explicitly: a head would otherwise require the user's
    # ~/.ray/auth_token when one exists, and Ray reads the driver's mode once per process, when first used,
    # so token mode could not be switched on here after another test imported Ray.
    env["RAY_AUTH_MODE"] = "disabled"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    if os.name == "nt":
        group = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    else:
        group = {"start_new_session": True}
    started = subprocess.Popen(args, env=env, cwd=temp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, **group)
    try:
        output, _ = started.communicate(timeout=180)
        assert started.returncode == 0, output
        yield f"127.0.0.1:{port}"
    finally:
        if os.name == "nt":  # no process group to kill: ray stop is the only handle (it stops all of them)
            subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=120)
        else:
            # `ray start` has exited, but the daemons it spawned stay in the group it led
            os.killpg(started.pid, signal.SIGKILL)
        _remove_tree(temp)


def _remove_tree(path: str) -> None:
    for _ in range(5):  # the killed daemons may still hold files for a moment
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.5)
