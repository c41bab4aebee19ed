"""The research executors give the sequential answer, in item order, on local processes and on a Ray cluster
(a head started here on loopback, with its own temp dir, stopped by its process group)."""

from __future__ import annotations

import os
import sys


import numpy as np
import pytest

import tests
from tests.conftest import _free_loopback_port
from tests.integration.ray_support import needs_ray
from bridge.research.executors import (ExecutorUnavailable, ProcessExecutor, RayExecutor, SequentialExecutor,
                                       TaskError, make_executor)

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


@needs_ray
@pytest.mark.slow
def test_ray_cluster_agrees_with_sequential(ray_head: str) -> None:
    with RayExecutor(ray_head, ship=[tests]) as executor:
        assert executor.name == f"ray:{ray_head}"
        _check_all(executor, [])

