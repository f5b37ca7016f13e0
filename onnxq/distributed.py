"""Scale-out on Ray (the ``[ray]`` extra, imported lazily): a pool of long-lived workers.

onnxq's parallel work (calibration shards, tuning trials, zoo models) all has one shape: a
worker is built once (it loads a model, opens a session, unpickles a metric) and then answers
many calls; the driver hands out calls in a fixed order and takes the answers back **in that
order**, so what it merges or decides never depends on which worker finished first. The workers
are Ray actors that Ray restarts if their process dies (``max_restarts``); the call that was
running is retried on the restarted worker (``max_task_retries``), so a killed worker costs time,
never a different result.

This module is the only one that imports ``ray``. Without the extra, asking for workers is a
clear error saying how to install it; everything else runs in one process as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from onnxq.errors import ConfigError, OnnxqError

__all__ = ["Cluster", "WorkerPool", "connected", "require_ray", "INSTALL_HINT"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'onnxq[ray]' (or: pip install ray==2.60.0)"
#: restarts of a dead worker process (and retries of the call it was running)
RETRIES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """Where parallel work runs: ``workers`` Ray workers, on the cluster at ``address``
    (``ray start --head`` prints it) or, without one, on a Ray instance started on this
    machine for the call. ``workers=1`` without an address means no Ray at all."""

    workers: int = 1
    address: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or \
                self.workers < 1:
            raise ConfigError(f"workers={self.workers!r} must be an integer >= 1")
        if self.address is not None and (not isinstance(self.address, str)
                                         or not self.address.strip()):
            raise ConfigError(f"ray address {self.address!r} must be a non-empty string "
                              "such as 127.0.0.1:6379 or auto")

    @property
    def parallel(self) -> bool:
        """Whether this asks for Ray (more than one worker, or a cluster)."""
        return self.workers > 1 or self.address is not None

    @classmethod
    def of(cls, workers: int | None, address: str | None) -> Cluster | None:
        """The cluster CLI flags ask for, or None for a plain one-process run."""
        cluster = cls(workers=1 if workers is None else workers, address=address)
        return cluster if cluster.parallel else None


def require_ray():
    """The ``ray`` module, or a clear error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError("parallel work (--workers N > 1, --ray-address) runs on Ray, which "
                          f"is not installed: {INSTALL_HINT}; without those flags onnxq runs "
                          "in one process") from None
    return ray


@contextlib.contextmanager
def connected(cluster: Cluster) -> Iterator[Any]:
    """Ray, connected: an instance already initialised by the caller is used as is; else
    onnxq joins ``cluster.address`` or starts a local instance, and leaves it at the end."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "logging_level": logging.ERROR}
    if cluster.address is None:
        options["num_cpus"] = max(cluster.workers, os.cpu_count() or 1)
    try:
        ray.init(address=cluster.address, **options)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
        where = f"the Ray cluster at {cluster.address!r}" if cluster.address else "Ray locally"
        raise ConfigError(f"cannot start or join {where}: {' '.join(str(exc).split())[:300]}; "
                          "start a cluster with `ray start --head` and pass the address it "
                          "prints (a cluster with token authentication also needs "
                          "RAY_AUTH_MODE=token here), or drop --ray-address to run on this "
                          "machine") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class _Host:
    """The actor body: builds the worker object on its first call, then forwards calls.

    The factory comes with every call as ``[ObjectRef]`` (a nested reference Ray does not
    resolve): a worker that Ray restarts after its process died builds itself again on the
    retried call, and the pool keeps the object alive meanwhile."""

    def __init__(self) -> None:
        self.obj: Any = None

    def call(self, make: list, method: str, *args: Any) -> Any:
        if self.obj is None:
            import ray

            self.obj = ray.get(make[0])()
        return getattr(self.obj, method)(*args)


def _error(exc: BaseException) -> BaseException:
    """The error a failed call stands for: the worker's own ``OnnxqError``, or one that
    names what happened."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, OnnxqError | KeyboardInterrupt):
            return cause
        return OnnxqError(f"a Ray worker failed: {type(cause).__name__}: {cause}")
    if isinstance(exc, RayActorError):
        return OnnxqError(f"a Ray worker died {RETRIES + 1} times (out of memory, or killed): "
                          f"{' '.join(str(exc).split())[:300]}; run with fewer --workers or "
                          "without them")
    return exc


class WorkerPool:
    """``workers`` actors, each holding ``make()``; ``imap`` calls a method on them in turn.

    ``make`` must be picklable (cloudpickle: closures and ``functools.partial`` work). Each
    worker asks for ``cpus`` CPUs of the cluster (a fraction is fine: more workers than CPUs
    share them)."""

    def __init__(self, ray, make: Callable[[], Any], workers: int, *,
                 cpus: float | None = None) -> None:
        total = float(ray.cluster_resources().get("CPU", 1.0))
        cpus = min(1.0, total / workers) if cpus is None else cpus
        remote = ray.remote(num_cpus=cpus, max_restarts=RETRIES,
                            max_task_retries=RETRIES)(_Host)
        self.ray = ray
        try:
            self.make = ray.put(make)
        except Exception as exc:  # noqa: BLE001 - pickling fails with many types
            raise ConfigError(f"the work cannot be sent to Ray workers: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}; a metric given to tune "
                              "must be picklable (no open sessions or files: open them "
                              "inside the call), or run without --workers") from None
        self.actors = [remote.remote() for _ in range(workers)]

    def imap(self, method: str, calls: Iterable[tuple], *, window: int | None = None,
             settle: bool = False) -> Iterator[Any]:
        """The answers to ``method(*args)`` for each ``args`` of ``calls``, in order.

        Calls go to the workers round-robin, at most ``window`` in flight (default: two per
        worker), so a long stream of inputs is never all in memory. A failed call raises
        its error (an ``OnnxqError`` as raised in the worker); with ``settle`` the error is
        yielded in its place and the other calls go on."""
        window = window or 2 * len(self.actors)
        pending: deque = deque()
        for i, args in enumerate(calls):
            actor = self.actors[i % len(self.actors)]
            pending.append(actor.call.remote([self.make], method, *args))
            if len(pending) >= window:
                yield self._get(pending.popleft(), settle)
        while pending:
            yield self._get(pending.popleft(), settle)

    def _get(self, ref, settle: bool) -> Any:
        try:
            return self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's error
            error = _error(exc)
            if settle:
                return error
            raise error from None

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
