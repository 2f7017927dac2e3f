"""What a schedule is and what it arranges.

A schedule is a function ``schedule(pipeline, frame, timer) -> Detections``: it decides *in what
order, on which threads and on which device* the pipeline's pieces run, never *what* they
compute (that is the stages' and the runners'). ``Composition`` is the part of the ``Pipeline``
a schedule may use, declared here so that the schedules never import the pipeline module (which
imports them). ``DeviceSchedule`` is a schedule that wants some stages built on a torch device:
the pipeline reads ``device_stages`` once, when it builds its stages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numba
import numpy as np

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.presets import Preset
from bevdeploy.runtime.backends.base import Runner
from bevdeploy.runtime.devices import Precision
from bevdeploy.runtime.stages import (BevPoolStage, DecodeStage, DepthStage, GeometryStage,
                                      NormalizeStage, ScnStage, VoxelizeStage)
from bevdeploy.runtime.timing import StageTimer


@dataclass(frozen=True)
class CameraInputs:
    """What the camera branch needs before its first dense module: the normalized images
    ``(1, N, 3, H, W)``, the sparse depth ``(1, N, 1, H, W)``, the geometry plan and which
    cameras have data (``Frame.present``; bevpool weights the others zero)."""

    img: np.ndarray
    depth: np.ndarray
    plan: Any  # the geometry stage's plan, on its device
    present: np.ndarray | None = None  # (N,) bool; None: every camera


class Composition(Protocol):
    """The pipeline as its schedules see it: the stages, the dense-module runners and the
    pieces of a frame, which only meet at the fuser."""

    preset: Preset
    backend: str
    threads: int | None
    runners: dict[str, Runner]
    last_timings: dict[str, float]
    normalize: NormalizeStage
    depth: DepthStage
    geometry: GeometryStage
    bevpool: BevPoolStage
    voxelize: VoxelizeStage
    scn: ScnStage
    decode: DecodeStage

    def select_points(self, frame: Frame, timer: StageTimer) -> np.ndarray: ...

    def lidar_branch(self, points: np.ndarray, timer: StageTimer) -> np.ndarray: ...

    def camera_inputs(self, frame: Frame, points: np.ndarray,
                      timer: StageTimer) -> CameraInputs: ...

    def camera_features(self, inputs: CameraInputs, timer: StageTimer) -> np.ndarray: ...

    def camera_branch(self, frame: Frame, points: np.ndarray,
                      timer: StageTimer) -> np.ndarray: ...

    def detect(self, camera_bev: np.ndarray, lidar_bev: np.ndarray,
               timer: StageTimer) -> Detections: ...

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future: ...


Schedule = Callable[[Composition, Frame, StageTimer], Detections]


@runtime_checkable
class DeviceSchedule(Protocol):
    """A schedule that runs stages on a torch device. ``device_stages`` maps a stage's name to
    that device (``"cuda:0"``, or ``"cpu"`` for the CUDA kernels in Triton's interpreter); the
    pipeline builds those stages there, the others on the host. ``precision`` is the SCN's
    on the device."""

    device_stages: Mapping[str, str]
    precision: Precision

    def __call__(self, pipeline: Composition, frame: Frame, timer: StageTimer) -> Detections:
        ...


@contextmanager
def numba_threads(count: int | None) -> Iterator[None]:
    """Bound the numba kernels to ``count`` threads while the block runs (``None``: leave the
    setting alone). numba's thread count belongs to the calling thread, so it is restored
    afterwards rather than changed for the whole process."""
    if count is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
