"""Throughput of a Ray pool against its number of workers (``bevdeploy bench-ray``).

For each worker count a fresh pool runs every frame of the split once, after each worker has
run one frame untimed (its one-off kernel compilation and session set-up); frames/s is the
frames over the wall time from the first submission to the last result, as the driver sees it.
The same frames in this process (the plain detector, the threads of one worker) give the
baseline each row is compared with. ``result_bytes_per_frame`` is what each frame's result
weighs pickled on its worker — the payload that crosses Ray's object store; the request is a
frame index. Startup (actors loading the package) is reported apart: a long run amortises it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bevdeploy.distributed.cluster import RayOptions
from bevdeploy.distributed.pool import RayDetectorPool


@dataclass(frozen=True)
class ThroughputRow:
    """One measured configuration; ``workers == 0`` is this process without Ray."""

    workers: int
    frames: int
    seconds: float
    startup_s: float
    result_bytes_per_frame: int | None

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "frames": self.frames, "seconds": round(self.seconds, 3),
                "frames_per_s": round(self.frames_per_s, 3), "startup_s": round(self.startup_s, 2),
                "result_bytes_per_frame": self.result_bytes_per_frame}


def in_process(source: Any, package: Path, threads: int) -> ThroughputRow:
    """The baseline: every frame through ``detector.open(package)`` here, first frame untimed."""
    from bevdeploy import detector

    t0 = time.perf_counter()
    with detector.open(package, threads=threads) as model:
        model(source[0])
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        for index in range(len(source)):
            model(source[index])
        return ThroughputRow(0, len(source), time.perf_counter() - t1, startup, None)


def with_workers(source: Any, package: Path, options: RayOptions, threads: int) -> ThroughputRow:
    """Every frame through a fresh pool of ``options.workers`` workers (already connected)."""
    t0 = time.perf_counter()
    with RayDetectorPool(source, package, {"threads": threads}, options) as pool:
        pool.warm_up()
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        for index in range(len(source)):
            pool.result(index)
        seconds = time.perf_counter() - t1
        moved = pool.record()["ray"]["result_bytes_per_frame"]
    return ThroughputRow(options.workers, len(source), seconds, startup, moved)


def measure(source: Any, package: Path, options: RayOptions, counts: Sequence[int], *,
            progress: Callable[[str], None] = lambda _: None) -> list[ThroughputRow]:
    """The baseline, then one row per worker count in ``counts`` (connected to the cluster)."""
    threads = max(1, math.ceil(options.cpus_per_worker))
    progress(f"in process ({threads} thread(s))")
    rows = [in_process(source, package, threads)]
    for n in counts:
        progress(f"{n} worker(s) on {options.address}")
        rows.append(with_workers(source, package, replace(options, workers=n), threads))
    return rows
