"""``optimize --sensitivity-map --ray``: the groups' mAP probes scored in parallel by Ray actors.

Each probe is one devkit mAP of the whole FP32 pipeline with one module swapped — seconds per
group on the tiny package, minutes on a real one — and probes are independent of each other,
so they are the unit spread over the cluster. Each worker (``ProbeWorker``) builds the FP32
package's ``MapProbe`` once, from the package and dataset **paths** (as the infer/eval workers
do: both must be readable on every node), and is admitted by the pool's checks
(``pool.admit``: bevdeploy version and package manifest SHA-256 equal to the driver's, package
and frames opened); it must also load the driver's evaluation frames (same sample tokens) and
find the same FP32 mAP as the other workers.

The driver keeps the quantization (it holds the calibration ranges) and sends each group's
quantized module as its serialized ONNX bytes through the object store — ``ray.put`` once per
probe, so a retry moves nothing new — and a float comes back. The bytes are the ones the
single-process probe turns into its ONNX Runtime session, on the same frames, so the mAPs are
the single-process ones exactly. A worker that dies is replaced and its probes are scored again
on the others, each at most ``max_retries`` times (``WorkerLost`` after that); every retry is
in ``describe()``'s ``ray`` record, with the bytes each probe moved.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from bevdeploy.distributed.cluster import RayOptions
from bevdeploy.distributed.actors import MAX_RETRIES, ActorPool, WorkerLost
from bevdeploy.distributed.worker import WorkerFacts, where
from bevdeploy.errors import BevDeployError, ConfigError
from bevdeploy.optimize.sensitivity import EvalFrames, MapProbe, eval_frames
from bevdeploy.package import DeployPackage, load_package


@dataclass(frozen=True)
class EvalSpec:
    """How a worker loads the driver's evaluation frames: the same split, the same count
    (``frame_indices`` then picks the same frames; the tokens are compared to be sure)."""

    data: str
    version: str
    split: str
    frames: int

    @classmethod
    def of(cls, frames: EvalFrames) -> "EvalSpec":
        return cls(str(Path(frames.data).resolve()), frames.version, frames.split,
                   len(frames.frames))


class ProbeWorker:
    """One worker: the FP32 package's ``MapProbe`` on the evaluation frames, built once. A
    failure to open is kept and reported by ``facts`` (the pool's admission refuses it by
    name)."""

    def __init__(self, package: str, frames: EvalSpec, threads: int) -> None:
        self.where = where()
        self.facts_ = WorkerFacts.of(package)
        self.open_error: BevDeployError | None = None
        try:
            pkg = load_package(package)
            loaded = eval_frames(pkg, Path(frames.data), version=frames.version,
                                 split=frames.split, frames=frames.frames, calibrated=())
            self.probe = MapProbe(pkg, loaded, threads=threads)
        except BevDeployError as exc:
            self.open_error = exc

    def facts(self) -> tuple[WorkerFacts, str, int, BevDeployError | None]:
        return self.facts_, self.where, os.getpid(), self.open_error

    def baseline(self) -> tuple[float, list[str | None]]:
        """The FP32 mAP and the sample tokens this worker scores."""
        return self.probe.fp32_map, [f.token for f in self.probe.frames.frames]

    def score(self, modules: tuple[str, ...], *models: bytes) -> float:
        """mAP with ``modules`` swapped for ``models`` (top-level arguments, so Ray hands
        over the bytes rather than their object references)."""
        return self.probe.score(dict(zip(modules, models)))


class RayMapProbe(ActorPool):
    """``MapProbe``'s interface (``optimize.sensitivity.MapScorer``) over ``options.workers``
    Ray actors; the caller is connected (``cluster.connect``). At most 2 probes per worker are
    in flight. Use as a context manager, or ``close`` it."""

    def __init__(self, package: DeployPackage, frames: EvalFrames, options: RayOptions, *,
                 threads: int | None = None, max_retries: int = MAX_RETRIES,
                 expected: WorkerFacts | None = None) -> None:
        self.frames = frames
        self.window = 2 * options.workers
        super().__init__(options, ProbeWorker,
                         (str(package.root.resolve()), EvalSpec.of(frames),
                          threads or max(1, math.ceil(options.cpus_per_worker))),
                         expected=expected or WorkerFacts.of(package.root),
                         max_retries=max_retries)
        self.fp32_map = math.nan  # the first admitted worker's
        self._payload: dict[int, tuple[tuple[str, ...], list[Any]]] = {}  # probe → models
        self.model_bytes: list[int] = []  # per probe, what went into the object store
        self._open()

    # ---- workers ---------------------------------------------------------------------------

    def _start(self, ids: list[int]) -> None:
        """Admit the workers ``ids`` (the pool's checks), then refuse any that scores other
        frames than the driver's or finds another FP32 mAP than the first worker."""
        super()._start(ids)
        mine = [f.token for f in self.frames.frames]
        baselines = self.ray.get([self.workers[w].baseline.remote() for w in ids])
        for wid, (fp32, tokens) in zip(ids, baselines):
            if tokens != mine:
                raise ConfigError(f"worker {wid} on {self.where[wid]} loaded the evaluation "
                                  f"frames {tokens}, the driver {mine}: not the same dataset "
                                  "on that node", field="--ray")
            if math.isnan(self.fp32_map):
                self.fp32_map = fp32
            elif fp32 != self.fp32_map:
                raise ConfigError(f"worker {wid} on {self.where[wid]} scores the FP32 package "
                                  f"{fp32!r}, another worker {self.fp32_map!r}; refused",
                                  field="--ray")

    def _call(self, actor: Any, task: int) -> Any:
        modules, refs = self._payload[task]
        return actor.score.remote(modules, *refs)

    def _retry_entry(self, task: int) -> dict[str, Any]:
        return {"probe": task, "modules": list(self._payload[task][0])}

    def _lost_error(self, task: int, attempts: int, reason: str) -> WorkerLost:
        return WorkerLost(f"probe {task} ({', '.join(self._payload[task][0])} swapped): the "
                          f"worker(s) scoring it died {attempts} time(s) ({reason})",
                          field="--ray")

    # ---- the scorer (optimize.sensitivity.MapScorer) ---------------------------------------

    def scores(self, swaps: Iterable[Mapping[str, onnx.ModelProto]]) -> Iterator[float]:
        """Each swap's mAP, in order. Swaps are drawn from ``swaps`` (a generator quantizing
        them, typically) only while fewer than 2 per worker are in flight."""
        items = iter(swaps)
        order: deque[int] = deque()
        more = True
        while True:
            while more and len(order) < self.window:
                swap = next(items, None)
                if swap is None:
                    more = False
                else:
                    order.append(self._put(swap))
            if not order:
                return
            yield self._result(order.popleft())

    def score(self, swaps: Mapping[str, onnx.ModelProto]) -> float:
        return next(self.scores([swaps]))

    def _put(self, swap: Mapping[str, onnx.ModelProto]) -> int:
        probe = len(self.model_bytes)
        blobs = [model.SerializeToString() for model in swap.values()]
        self.model_bytes.append(sum(len(b) for b in blobs))
        self._payload[probe] = (tuple(swap), [self.ray.put(b) for b in blobs])
        self._submit(probe)
        return probe

    def _result(self, probe: int) -> float:
        try:
            value: float = self._wait(probe)
        except self.ray.exceptions.RayTaskError as exc:  # the worker's own error, as itself
            raise exc.cause if isinstance(exc.cause, BevDeployError) else exc
        del self._payload[probe]  # frees the models in the store
        return value

    def describe(self) -> dict[str, Any]:
        """The frames scored (``EvalFrames.describe``) and the cluster's record: workers,
        retries, and the bytes each probe put into the object store."""
        moved = self.model_bytes
        return {**self.frames.describe(), "ray": {
            "address": self.options.address, "workers": self.options.workers,
            "cpus_per_worker": self.options.cpus_per_worker,
            "worker_hosts": sorted(set(self.where.values())), "retries": list(self.retries),
            "probes": len(moved),
            "model_bytes_per_probe": round(sum(moved) / len(moved)) if moved else None,
            "model_bytes_max": max(moved, default=None)}}

    # ---- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every worker; probes they still held are cancelled, their models freed."""
        super().close()
        self._payload.clear()
