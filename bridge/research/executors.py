"""Where independent research runs execute: in this process, in local processes, or on a Ray cluster.

A walk-forward study is many runs that share nothing but their input, so each executor has one verb,
``map(fn, items)``: the results come back in the items' order whatever order they finish in, which makes
every executor's answer identical to the sequential one for a deterministic ``fn``. ``fn`` is a module-level
function and the items (and results) are picklable, because they cross process and machine boundaries.

``shared``, when given, is the input every run reads (a ``TickStream``, arrays): it is sent once per worker
process, or put once in Ray's object store, instead of once per item; ``fn`` is then called as
``fn(shared, item)`` and must treat it as read-only (Ray hands out zero-copy, read-only numpy views of it).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from types import ModuleType, TracebackType
from typing import Any, Protocol, TypeVar

from bridge.core.errors import UserError

__all__ = ["Executor", "ExecutorUnavailable", "ProcessExecutor", "RayExecutor", "SequentialExecutor",
           "TaskError", "make_executor"]

R = TypeVar("R")
Progress = Callable[[int, int], None]

RAY_INSTALL_HINT = "pip install 'nt8bridge[ray]'"
RAY_HEAD_HINT = "start a head there with `ray start --head --port 6379`"
# A head started where ~/.ray/auth_token exists requires it, and a driver given an address does not send it
# unless told to.
RAY_TOKEN_HINT = "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to its token (`ray get-auth-token` on the head)"
# The project's top-level packages: shipped to Ray workers so they run the driver's code, not whatever
# version a node has installed (or none).
PROJECT_PACKAGES = ("bridge", "strategies", "ml", "reports")


class TaskError(RuntimeError):
    """One item's run raised; the message names the item's index, the original exception is the cause."""

    def __init__(self, index: int, total: int, error: BaseException) -> None:
        super().__init__(f"task {index} of {total} failed: {type(error).__name__}: {error}")
        self.index = index


class ExecutorUnavailable(UserError):
    """The executor asked for cannot run here (Ray missing, cluster unreachable); the message says what to do."""


class Executor(Protocol):
    name: str  # "sequential", "processes:N", "ray:ADDRESS"

    def map(self, fn: Callable[..., R], items: Sequence[Any], *, shared: Any = None,
            progress: Progress | None = None) -> list[R]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


class _ContextManaged:
    """``with make_executor(...) as ex:`` closes the workers (or the Ray connection) on the way out."""

    def close(self) -> None:
        pass

    def __enter__(self):  # noqa: ANN204 - returns the concrete executor
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SequentialExecutor(_ContextManaged):
    """In this process, in order: the reference every other executor's results must equal (and the one to
    debug under, since a breakpoint in ``fn`` works)."""

    name = "sequential"

    def map(self, fn: Callable[..., R], items: Sequence[Any], *, shared: Any = None,
            progress: Progress | None = None) -> list[R]:
        results: list[R] = []
        total = len(items)
        for index, item in enumerate(items):
            try:
                results.append(fn(item) if shared is None else fn(shared, item))
            except Exception as error:
                raise TaskError(index, total, error) from error
            if progress is not None:
                progress(index + 1, total)
        return results


# What a worker process was handed by the pool's initializer: the map's shared input.
_worker_shared: Any = None


def _set_worker_shared(shared: Any) -> None:
    global _worker_shared
    _worker_shared = shared


def _call_with_shared(fn: Callable[..., R], item: Any) -> R:
    return fn(_worker_shared, item)


class ProcessExecutor(_ContextManaged):
    """Local worker processes, started with ``spawn`` on every platform: the same start method as Windows,
    and no fork of a parent's threads (the sidecar's writer, BLAS pools) into the children.

    The pool lives across ``map`` calls (worker start-up and imports are paid once); a new ``shared`` object
    restarts it, because the shared input is handed to each worker once, when it starts."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a process pool needs at least 1 worker, not {workers}")
        self.workers = workers
        self.name = f"processes:{workers}"
        self._pool: ProcessPoolExecutor | None = None
        self._shared: Any = None

    def _pool_for(self, shared: Any) -> ProcessPoolExecutor:
        if self._pool is not None and shared is self._shared:
            return self._pool
        self.close()
        init: dict[str, Any] = {}
        if shared is not None:
            init = {"initializer": _set_worker_shared, "initargs": (shared,)}
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"), **init)
        self._shared = shared
        return self._pool

    def map(self, fn: Callable[..., R], items: Sequence[Any], *, shared: Any = None,
            progress: Progress | None = None) -> list[R]:
        pool = self._pool_for(shared)
        total = len(items)
        if shared is None:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        else:
            futures = {pool.submit(_call_with_shared, fn, item): i for i, item in enumerate(items)}
        results: list[Any] = [None] * total
        pending: set[Future] = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=futures.__getitem__):
                index = futures[future]
                try:
                    results[index] = future.result()
                except Exception as error:
                    for other in pending:
                        other.cancel()
                    if isinstance(error, BrokenProcessPool):  # a worker died: the next map starts afresh
                        self.close()
                    raise TaskError(index, total, error) from error
            if progress is not None:
                progress(total - len(pending), total)
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable(f"Ray is not installed: {RAY_INSTALL_HINT}") from None
    return ray


def _probe(address: str, timeout: float) -> None:
    """Fail in ``timeout`` seconds, with what to do, when nothing listens at a cluster's address: ``ray.init``
    itself retries an absent head for a minute or more before its own, less helpful, error."""
    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as error:
        raise ExecutorUnavailable(f"cannot reach a Ray cluster at {address} ({error}); {RAY_HEAD_HINT}, "
                                  f"then pass --ray HOST:6379") from None


def _package_dirs(names: Sequence[str]) -> list[str]:
    """The source folders of those of ``names`` this process can import (a git clone or an install)."""
    dirs = []
    for name in names:
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        paths = list(getattr(module, "__path__", []))
        if paths:
            dirs.append(paths[0])
    return dirs


class RayExecutor(_ContextManaged):
    """Tasks on a Ray cluster (``address`` "HOST:PORT"), or on a cluster started in this process ("local").

    The project's packages (and ``ship``, e.g. a notebook's helper package) go to the workers as the job's
    ``py_modules``, so every node runs the driver's code: a node needs Ray and the third-party dependencies
    (``pip install nt8bridge[ray]``), not this checkout. One connection per process: close one executor
    before opening another."""

    def __init__(self, address: str, *, ship: Sequence[ModuleType] = (), connect_timeout: float = 5.0,
                 runtime_env: dict[str, Any] | None = None) -> None:
        self._ray = _import_ray()
        self.address = address
        self.name = f"ray:{address}"
        if self._ray.is_initialized():
            raise ExecutorUnavailable("a Ray connection is already open in this process; close the other "
                                      "RayExecutor first")
        _probe(address, connect_timeout)
        env = dict(runtime_env or {})
        env.setdefault("py_modules", _package_dirs(PROJECT_PACKAGES) + [m.__path__[0] for m in ship])
        env.setdefault("excludes", ["__pycache__", "*.pyc"])
        try:
            self._ray.init(address=address, runtime_env=env, include_dashboard=False if address == "local" else None)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError, TimeoutError... by version
            raise ExecutorUnavailable(f"cannot connect to the Ray cluster at {address} ({error}); check that "
                                      f"this machine runs the cluster's Ray version and, if the cluster "
                                      f"uses token authentication, set {RAY_TOKEN_HINT}") from None
        self._open = True

    def map(self, fn: Callable[..., R], items: Sequence[Any], *, shared: Any = None,
            progress: Progress | None = None) -> list[R]:
        ray = self._ray
        remote = ray.remote(fn)
        total = len(items)
        if shared is None:
            refs = [remote.remote(item) for item in items]
        else:
            shared_ref = ray.put(shared)  # once; a top-level ref argument reaches fn as the value
            refs = [remote.remote(shared_ref, item) for item in items]
        index_of = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * total
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[index_of[ref]] = ray.get(ref)
                except Exception as error:
                    for other in pending:
                        ray.cancel(other)
                    cause = error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
                    raise TaskError(index_of[ref], total, cause or error) from error
            if progress is not None:
                progress(total - len(pending), total)
        return results

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._ray.shutdown()
            self._open = False


def make_executor(*, ray: str | None = None, processes: int | None = None) -> Executor:
    """The executor a command line asks for: ``ray`` (an address, or "local") wins over ``processes``;
    ``processes`` None means one per CPU, 0 or 1 means in this process."""
    if ray:
        return RayExecutor(ray)
    workers = (os.cpu_count() or 1) if processes is None else processes
    if workers <= 1:
        return SequentialExecutor()
    return ProcessExecutor(workers)
