"""``StageTimer``: the per-stage wall-clock times of one frame, shared by the pipeline, its
schedules and the benchmarks (a leaf module, so that none of them imports another for it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Wall-clock milliseconds per named stage of one frame (repeated names accumulate)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3
