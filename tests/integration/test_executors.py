"""The research executors give the sequential answer, in item order, on local processes and on a Ray cluster
(a head started here on loopback, with its own temp dir, stopped by its process group)."""

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

import numpy as np
import pytest

import tests
from tests.conftest import _free_loopback_port
from bridge.research.executors import (ExecutorUnavailable, ProcessExecutor, RayExecutor, SequentialExecutor,
                                       TaskError, make_executor)

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install 'nt8bridge[ray]'")
ITEMS = list(range(7))


def seeded_stats(item: int) -> tuple[int, float, float]:
    """A small deterministic computation: the same item gives the same floats in any process."""
    draws = np.random.default_rng(1000 + item).normal(size=2_000).cumsum()
    return item, float(draws.mean()), float(np.percentile(draws, 90))


def window_sum(shared: np.ndarray, item: int) -> float:
    return float(shared[item * 10:(item + 1) * 10].sum())


def fails_on_three(item: int) -> int:
    if item == 3:
        raise ValueError("bad window")
    return item


def _check_all(executor, progress: list[tuple[int, int]]) -> None:
    expected = SequentialExecutor().map(seeded_stats, ITEMS)
    assert executor.map(seeded_stats, ITEMS, progress=lambda d, t: progress.append((d, t))) == expected
    assert progress[-1] == (len(ITEMS), len(ITEMS))
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    shared = np.arange(100, dtype=np.float64)
    assert executor.map(window_sum, ITEMS, shared=shared) == SequentialExecutor().map(window_sum, ITEMS,
                                                                                      shared=shared)
    with pytest.raises(TaskError, match=r"task 3 of 7 failed: ValueError: bad window"):
        executor.map(fails_on_three, ITEMS)


def test_sequential_and_processes_agree() -> None:
    progress: list[tuple[int, int]] = []
    _check_all(SequentialExecutor(), progress)
    assert progress == [(i, 7) for i in range(1, 8)]
    with ProcessExecutor(2) as executor:
        assert executor.name == "processes:2"
        _check_all(executor, [])


def test_make_executor_choices() -> None:
    assert make_executor(processes=0).name == "sequential"
    assert make_executor(processes=1).name == "sequential"
    with make_executor(processes=2) as executor:
        assert executor.name == "processes:2"
    with make_executor() as executor:
        assert executor.name in ("sequential", f"processes:{os.cpu_count()}")


@needs_ray
def test_unreachable_ray_address_says_how_to_start_a_head() -> None:
    address = f"127.0.0.1:{_free_loopback_port()}"  # nothing listens there
    with pytest.raises(ExecutorUnavailable, match=rf"{address}.*ray start --head --port 6379"):
        RayExecutor(address, connect_timeout=2.0)


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when Ray is absent
    with pytest.raises(ExecutorUnavailable, match=r"pip install 'nt8bridge\[ray\]'"):
        make_executor(ray="127.0.0.1:6379")


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


@needs_ray
@pytest.mark.slow
def test_ray_cluster_agrees_with_sequential(ray_head: str) -> None:
    with RayExecutor(ray_head, ship=[tests]) as executor:
        assert executor.name == f"ray:{ray_head}"
        _check_all(executor, [])

