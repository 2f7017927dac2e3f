"""The pipeline's schedules: *in what order, on which threads and on which device* the stages
and runners of a frame run (``base``: what a schedule is and what it may use).

``sequential`` and ``branches`` (``host``), ``frames`` (``frames``: consecutive frames
overlapped by ``run_stream``) keep tensors on the host; ``CudaSchedule`` (``cuda``) keeps the
frame on a GPU, with the camera and LiDAR branches on two streams. Every host schedule computes
the same thing with the same kernels in the same order per tensor, so all give bit-identical
detections (tests/runtime/test_schedules.py). Custom schedules are functions of the same
signature.
"""

from __future__ import annotations

from bevdeploy.errors import ConfigError
from bevdeploy.runtime.schedules.base import (CameraInputs, Composition, DeviceSchedule,
                                              Schedule, numba_threads)
from bevdeploy.runtime.schedules.cuda import CudaSchedule
from bevdeploy.runtime.schedules.frames import STREAM_DEPTH, frame_pipelined
from bevdeploy.runtime.schedules.host import branches, sequential

__all__ = ["SCHEDULES", "STREAM_DEPTH", "CameraInputs", "Composition", "CudaSchedule",
           "DeviceSchedule", "Schedule", "branches", "frame_pipelined", "numba_threads",
           "resolve_schedule", "sequential"]

SCHEDULES: dict[str, Schedule] = {"sequential": sequential, "branches": branches,
                                  "frames": frame_pipelined}


def resolve_schedule(schedule: Schedule | str) -> Schedule:
    """A schedule function from its name (``SCHEDULES``) or itself."""
    if callable(schedule):
        return schedule
    try:
        return SCHEDULES[schedule]
    except KeyError:
        raise ConfigError(f"unknown schedule {schedule!r}; available: {list(SCHEDULES)}",
                          field="schedule") from None
