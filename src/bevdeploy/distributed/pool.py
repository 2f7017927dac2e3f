"""A pool of Ray actors that runs the frames of a dataset split for the frame loop
(``frame_loop.run_frames`` takes it in place of a detector: it is a ``frame_loop.FramePool``).

The loop asks for frame 0, 1, 2, … in order (``result``); the pool keeps up to
``in_flight`` frames submitted ahead of it, to the least-loaded live worker, and hands each back
when the loop reaches it, so the sinks see the frames in order, the loop's error policy,
progress and Ctrl-C apply unchanged, and memory stays bounded however long the split.

A worker that dies (its process killed, its node lost) fails the frames it held with a
``RayActorError``; the pool starts a replacement (at most ``max_retries`` × workers in a run)
and resubmits those frames, each at most ``max_retries`` times before it is a failed frame
(``WorkerLost``). Every retry is named in the run record (``record``). ``close`` kills the
workers, which cancels whatever they still held (Ctrl-C, a stopped run).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.distributed.cluster import RayOptions, import_ray
from bevdeploy.distributed.worker import FrameOutcome, FrameWorker, SourceSpec, WorkerFacts
from bevdeploy.errors import BevDeployError, ConfigError, PackageError

STARTUP_TIMEOUT_S = 600.0  # a worker loading a large package on a slow node
MAX_RETRIES = 2


class WorkerLost(BevDeployError):
    """A frame whose workers kept dying: it was retried ``max_retries`` times."""


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


class RayDetectorPool:
    """``options.workers`` actors, each running ``FrameWorker(model, open_kwargs, source)``.

    ``source`` is the driver's ``DatasetSource`` (its length and labels; workers open the same
    split from its root, which every node must read). ``model`` is a package directory or a
    preset; ``expected`` the facts every worker must report (default: the driver's own).
    Use as a context manager, or ``close`` it."""

    def __init__(self, source: Any, model: Any, open_kwargs: Mapping[str, Any],
                 options: RayOptions, *, keep_sensors: bool = False,
                 in_flight: int | None = None, max_retries: int = MAX_RETRIES,
                 expected: WorkerFacts | None = None) -> None:
        self.ray = import_ray()
        self.options = options
        self.total = len(source)
        self.label = source.label
        self.max_retries = max_retries
        self.window = in_flight or 2 * options.workers
        self.expected = expected or WorkerFacts.of(model)
        if isinstance(model, Path):
            model = str(model.resolve())
        check_resources(self.ray, options)
        self._actor_class = self.ray.remote(FrameWorker).options(
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker,
            max_restarts=0, max_task_retries=0)
        self._args = (model, dict(open_kwargs), SourceSpec.of(source))
        self._keep_sensors = keep_sensors
        self.workers: dict[int, Any] = {}  # worker id → actor handle
        self.where: dict[int, str] = {}  # worker id → host and pid
        self.pids: dict[int, int] = {}
        self._next_id = 0
        self._replacements_left = max_retries * options.workers
        self._pending: dict[int, tuple[Any, int]] = {}  # frame → (object ref, worker id)
        self._lost: dict[int, WorkerLost] = {}
        self._attempts: Counter[int] = Counter()
        self._submitted = 0
        self.retries: list[dict[str, Any]] = []
        self.result_bytes: list[int] = []
        self.t_start: float | None = None
        self.t_last: float | None = None
        try:
            self._start([self._spawn() for _ in range(options.workers)])
        except BaseException:
            self.close()
            raise

    # ---- workers ---------------------------------------------------------------------------

    def _spawn(self) -> int:
        wid = self._next_id
        self._next_id += 1
        self.workers[wid] = self._actor_class.remote(*self._args,
                                                     keep_sensors=self._keep_sensors)
        return wid

    def _start(self, ids: list[int]) -> None:
        admit(self.ray, {w: self.workers[w] for w in ids}, self.expected, self.options,
              self.where, self.pids)

    def _least_loaded(self) -> int:
        load = Counter({wid: 0 for wid in self.workers})
        load.update(w for _, w in self._pending.values())
        return min(load, key=lambda w: (load[w], w))

    def _submit(self, index: int) -> None:
        wid = self._least_loaded()
        self._pending[index] = (self.workers[wid].run.remote(index), wid)

    def _fill(self, upto: int) -> None:
        if self.t_start is None:
            self.t_start = time.perf_counter()
        while self._submitted < min(self.total, upto):
            self._submit(self._submitted)
            self._submitted += 1

    def _worker_died(self, wid: int, exc: Exception) -> None:
        """Replace dead worker ``wid`` and resubmit the frames it held."""
        if wid not in self.workers:
            return
        del self.workers[wid]
        reason = type(exc).__name__
        if self._replacements_left > 0:
            self._replacements_left -= 1
            self._start([self._spawn()])
        orphans = sorted(i for i, (_, w) in self._pending.items() if w == wid)
        for index in orphans:
            del self._pending[index]
            self._attempts[index] += 1
            self.retries.append({"index": index, "frame": self.label(index), "worker": wid,
                                 "where": self.where.get(wid, "?"), "error": reason,
                                 "attempt": self._attempts[index]})
            if self._attempts[index] > self.max_retries or not self.workers:
                self._lost[index] = WorkerLost(
                    f"the worker(s) running it died {self._attempts[index]} time(s) ({reason})",
                    path=self.label(index), field="--ray")
            else:
                self._submit(index)

    def warm_up(self, index: int = 0) -> None:
        """Frame ``index`` once on every worker, results dropped: the first frame of a process
        pays one-off costs (kernel compilation, session set-up) that a benchmark leaves out."""
        self.ray.get([actor.run.remote(index) for actor in self.workers.values()])

    # ---- the frame loop's side (frame_loop.FramePool) ----------------------------------------

    def result(self, index: int) -> tuple[Frame, Detections, Mapping[str, float]]:
        """Frame ``index``'s slim frame, detections and stage times, waiting for it; its
        ``BevDeployError`` is raised here, in the driver, under the loop's policy."""
        ray = self.ray
        self._fill(index + self.window)
        while index not in self._lost:
            ref, wid = self._pending[index]
            try:
                outcome: FrameOutcome = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._worker_died(wid, exc)
                continue
            del self._pending[index]
            self.t_last = time.perf_counter()
            self.result_bytes.append(outcome.result_bytes)
            if outcome.error is not None:
                raise outcome.error
            assert outcome.frame is not None and outcome.detections is not None
            return outcome.frame, outcome.detections, outcome.timings
        raise self._lost.pop(index)

    def record(self) -> dict[str, Any]:
        """What the run record says about the cluster: workers, retries, bytes moved."""
        frames = len(self.result_bytes)
        wall = (self.t_last - self.t_start) if self.t_start and self.t_last else None
        return {"ray": {
            "address": self.options.address, "workers": self.options.workers,
            "cpus_per_worker": self.options.cpus_per_worker,
            "gpus_per_worker": self.options.gpus_per_worker,
            "worker_hosts": sorted(set(self.where.values())),
            "retries": list(self.retries),
            "result_bytes_per_frame": round(sum(self.result_bytes) / frames) if frames else None,
            "frames_per_s": round(frames / wall, 3) if wall else None}}

    # ---- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every worker; frames they still held are cancelled."""
        for actor in self.workers.values():
            self.ray.kill(actor, no_restart=True)
        self.workers.clear()
        self._pending.clear()

    def __enter__(self) -> "RayDetectorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
