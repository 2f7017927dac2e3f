"""A pool of Ray actors that runs the frames of a dataset split for the frame loop
(``frame_loop.run_frames`` takes it in place of a detector: it is a ``frame_loop.FramePool``).

The loop asks for frame 0, 1, 2, … in order (``result``); the pool keeps up to
``in_flight`` frames submitted ahead of it, to the least-loaded live worker, and hands each back
when the loop reaches it, so the sinks see the frames in order, the loop's error policy,
progress and Ctrl-C apply unchanged, and memory stays bounded however long the split.

A worker that dies (its process killed, its node lost) fails the frames it held with a
``RayActorError``; the pool starts a replacement (at most ``max_retries`` × workers in a run)
and resubmits those frames, each at most ``max_retries`` times before it is a failed frame
(``WorkerLost``): ``actors.ActorPool``'s machinery, shared with ``optimize``'s map probes.
Every retry is named in the run record (``record``). ``close`` kills the workers, which cancels
whatever they still held (Ctrl-C, a stopped run).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.distributed.actors import MAX_RETRIES, ActorPool, WorkerLost
from bevdeploy.distributed.cluster import RayOptions
from bevdeploy.distributed.worker import FrameOutcome, FrameWorker, SourceSpec, WorkerFacts


class RayDetectorPool(ActorPool):
    """``options.workers`` actors, each running ``FrameWorker(model, open_kwargs, source)``.

    ``source`` is the driver's ``DatasetSource`` (its length and labels; workers open the same
    split from its root, which every node must read). ``model`` is a package directory or a
    preset; ``expected`` the facts every worker must report (default: the driver's own).
    Use as a context manager, or ``close`` it."""

    def __init__(self, source: Any, model: Any, open_kwargs: Mapping[str, Any],
                 options: RayOptions, *, keep_sensors: bool = False,
                 in_flight: int | None = None, max_retries: int = MAX_RETRIES,
                 expected: WorkerFacts | None = None) -> None:
        self.total = len(source)
        self.label = source.label
        self.window = in_flight or 2 * options.workers
        expected = expected or WorkerFacts.of(model)
        if isinstance(model, Path):
            model = str(model.resolve())
        super().__init__(options, FrameWorker, (model, dict(open_kwargs), SourceSpec.of(source)),
                         expected=expected, max_retries=max_retries,
                         kwargs={"keep_sensors": keep_sensors})
        self._submitted = 0
        self.result_bytes: list[int] = []
        self.t_start: float | None = None
        self.t_last: float | None = None
        self._open()

    # ---- tasks: frames -------------------------------------------------------------------

    def _call(self, actor: Any, task: int) -> Any:
        return actor.run.remote(task)

    def _retry_entry(self, task: int) -> dict[str, Any]:
        return {"index": task, "frame": self.label(task)}

    def _lost_error(self, task: int, attempts: int, reason: str) -> WorkerLost:
        return WorkerLost(f"the worker(s) running it died {attempts} time(s) ({reason})",
                          path=self.label(task), field="--ray")

    def _fill(self, upto: int) -> None:
        if self.t_start is None:
            self.t_start = time.perf_counter()
        while self._submitted < min(self.total, upto):
            self._submit(self._submitted)
            self._submitted += 1

    def warm_up(self, index: int = 0) -> None:
        """Frame ``index`` once on every worker, results dropped: the first frame of a process
        pays one-off costs (kernel compilation, session set-up) that a benchmark leaves out."""
        self.ray.get([actor.run.remote(index) for actor in self.workers.values()])

    # ---- the frame loop's side (frame_loop.FramePool) ----------------------------------------

    def result(self, index: int) -> tuple[Frame, Detections, Mapping[str, float]]:
        """Frame ``index``'s slim frame, detections and stage times, waiting for it; its
        ``BevDeployError`` is raised here, in the driver, under the loop's policy."""
        self._fill(index + self.window)
        outcome: FrameOutcome = self._wait(index)
        self.t_last = time.perf_counter()
        self.result_bytes.append(outcome.result_bytes)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.frame is not None and outcome.detections is not None
        return outcome.frame, outcome.detections, outcome.timings

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
