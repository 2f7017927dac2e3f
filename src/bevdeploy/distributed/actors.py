"""What every bevdeploy pool of Ray actors does the same way: start the actors and admit them
(``admit``), send each task to the least-loaded live actor, and when an actor dies,
replace it (at most ``max_retries`` × workers in a run) and resubmit the tasks it held, each at
most ``max_retries`` times before the task is lost (``WorkerLost``), every retry recorded.

Two pools build on it: ``pool.RayDetectorPool`` (a task is a frame of the run) and
``probe.RayMapProbe`` (a task is one mAP probe of ``optimize --sensitivity-map``). They differ
only in what a task sends to its actor and how a retry and a lost task are named. The
admission checks (``check_resources``, ``admit``) live here too, for both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from bevdeploy.distributed.cluster import RayOptions, import_ray
from bevdeploy.distributed.worker import WorkerFacts
from bevdeploy.errors import BevDeployError, ConfigError, PackageError

STARTUP_TIMEOUT_S = 600.0  # a worker loading a large package on a slow node
MAX_RETRIES = 2


class WorkerLost(BevDeployError):
    """A task (a frame, a probe) whose workers kept dying: it was retried ``max_retries`` times."""


def check_resources(ray: ModuleType, options: RayOptions) -> None:
    """Refuse, naming the flag, more workers than the cluster has CPUs or GPUs for (Ray would
    otherwise wait for them forever)."""
    have = ray.cluster_resources()
    for key, per, flag in (("CPU", options.cpus_per_worker, "--workers"),
                           ("GPU", options.gpus_per_worker, "--gpus-per-worker")):
        need = per * options.workers
        if need > have.get(key, 0) + 1e-9:
            raise ConfigError(f"{options.workers} worker(s) × {per:g} {key} need {need:g} "
                              f"{key}s; the cluster at {options.address} has "
                              f"{have.get(key, 0):g}", field=flag)


def admit(ray: ModuleType, actors: Mapping[int, Any], expected: WorkerFacts,
          options: RayOptions, where: dict[int, str], pids: dict[int, int]) -> None:
    """Wait for ``actors`` (worker id → an actor whose ``facts()`` returns ``(WorkerFacts,
    host, pid, open error)``) to open, record each one's host and pid in ``where`` and
    ``pids``, and refuse, naming it, any that differs from the driver's ``expected`` facts or
    could not open its package or dataset: results from another version or package would be
    silently different."""
    refs = [actor.facts.remote() for actor in actors.values()]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=STARTUP_TIMEOUT_S)
    if len(ready) < len(refs):
        raise ConfigError(f"workers did not start within {STARTUP_TIMEOUT_S:.0f} s on the "
                          f"cluster at {options.address}", field="--ray")
    for wid, ref in zip(actors, refs):
        facts, where[wid], pids[wid], error = ray.get(ref)
        if error is not None:
            raise type(error)(f"worker {wid} on {where[wid]} could not open: {error}",
                              field="--ray")
        differs = facts.mismatch(expected)
        if differs is not None:
            cls = PackageError if facts.version == expected.version else ConfigError
            raise cls(f"worker {wid} on {where[wid]} {differs}; refused", field="--ray")


class ActorPool:
    """``options.workers`` actors of class ``actor`` built with ``args``/``kwargs``, admitted
    against ``expected``; tasks are keyed by an int. Subclasses say what a task calls
    (``_call``), how its retry is recorded (``_retry_entry``) and how its loss reads
    (``_lost_error``), and call ``_open`` at the end of their ``__init__``. Use as a context
    manager, or ``close`` it."""

    def __init__(self, options: RayOptions, actor: type, args: tuple[Any, ...], *,
                 expected: WorkerFacts, max_retries: int,
                 kwargs: Mapping[str, Any] | None = None) -> None:
        self.ray = import_ray()
        self.options = options
        self.expected = expected
        self.max_retries = max_retries
        check_resources(self.ray, options)
        self._actor_class = self.ray.remote(actor).options(
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker,
            max_restarts=0, max_task_retries=0)
        self._args = args
        self._kwargs = dict(kwargs or {})
        self.workers: dict[int, Any] = {}  # worker id → actor handle
        self.where: dict[int, str] = {}  # worker id → host and pid
        self.pids: dict[int, int] = {}
        self._next_id = 0
        self._replacements_left = max_retries * options.workers
        self._pending: dict[int, tuple[Any, int]] = {}  # task → (object ref, worker id)
        self._lost: dict[int, WorkerLost] = {}
        self._attempts: Counter[int] = Counter()
        self.retries: list[dict[str, Any]] = []

    # ---- the subclass's part -------------------------------------------------------------

    def _call(self, actor: Any, task: int) -> Any:
        """Submit ``task`` to ``actor``; returns the object ref."""
        raise NotImplementedError

    def _retry_entry(self, task: int) -> dict[str, Any]:
        """What names ``task`` in a retry record (the worker, host, error and attempt follow)."""
        raise NotImplementedError

    def _lost_error(self, task: int, attempts: int, reason: str) -> WorkerLost:
        """The error of a task whose workers died ``attempts`` times."""
        raise NotImplementedError

    # ---- workers -------------------------------------------------------------------------

    def _open(self) -> None:
        """Start and admit the first workers; anything that fails kills what started."""
        try:
            self._start([self._spawn() for _ in range(self.options.workers)])
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> int:
        wid = self._next_id
        self._next_id += 1
        self.workers[wid] = self._actor_class.remote(*self._args, **self._kwargs)
        return wid

    def _start(self, ids: list[int]) -> None:
        """Admit the workers ``ids``: the checks of ``admit``."""
        admit(self.ray, {w: self.workers[w] for w in ids}, self.expected, self.options,
              self.where, self.pids)

    def _least_loaded(self) -> int:
        load = Counter({wid: 0 for wid in self.workers})
        load.update(w for _, w in self._pending.values())
        return min(load, key=lambda w: (load[w], w))

    def _submit(self, task: int) -> None:
        wid = self._least_loaded()
        self._pending[task] = (self._call(self.workers[wid], task), wid)

    def _worker_died(self, wid: int, exc: Exception) -> None:
        """Replace dead worker ``wid`` and resubmit the tasks it held."""
        if wid not in self.workers:
            return
        del self.workers[wid]
        reason = type(exc).__name__
        if self._replacements_left > 0:
            self._replacements_left -= 1
            self._start([self._spawn()])
        for task in sorted(t for t, (_, w) in self._pending.items() if w == wid):
            del self._pending[task]
            self._attempts[task] += 1
            self.retries.append({**self._retry_entry(task), "worker": wid,
                                 "where": self.where.get(wid, "?"), "error": reason,
                                 "attempt": self._attempts[task]})
            if self._attempts[task] > self.max_retries or not self.workers:
                self._lost[task] = self._lost_error(task, self._attempts[task], reason)
            else:
                self._submit(task)

    def _wait(self, task: int) -> Any:
        """``task``'s value, waiting for it; a worker dying on the way is replaced and the task
        resubmitted, and a task lost for good raises its ``WorkerLost``."""
        ray = self.ray
        while task not in self._lost:
            ref, wid = self._pending[task]
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._worker_died(wid, exc)
                continue
            del self._pending[task]
            return value
        raise self._lost.pop(task)

    # ---- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every worker; tasks they still held are cancelled."""
        for actor in self.workers.values():
            self.ray.kill(actor, no_restart=True)
        self.workers.clear()
        self._pending.clear()

    def __enter__(self) -> "ActorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
