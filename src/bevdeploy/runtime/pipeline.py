"""``Pipeline``: a deploy package + a ``Frame`` → ``Detections``, torch-free.

The pipeline owns the stages and the four dense-module runners and exposes the work as three
pieces that only meet at the fuser: the LiDAR branch, the camera branch, and fuse-and-detect.
*In what order and on which threads* those pieces run is a **schedule**, a plain function
``schedule(pipeline, frame, timer) -> Detections`` passed to the constructor. ``sequential``
(below) runs them one after another on the calling thread, as CUDA-BEVFusion does on its
single stream (spec/deploy.md §5.2); branch-parallel and frame-pipelined schedules can be
swapped in without touching the stages.

Every stage is timed (``last_timings``, milliseconds, plus ``total``), so a benchmark can
attribute latency without instrumenting anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.data.preprocess import lidar2image
from bevdeploy.errors import ConfigError, InputError
from bevdeploy.package import DeployPackage, load_package
from bevdeploy.presets import Preset
from bevdeploy.runtime.backends import Runner, RunnerOptions, create_runner
from bevdeploy.runtime.backends.base import OptimizationLevel
from bevdeploy.runtime.stages import (
    BevPoolParams, BevPoolStage, DecodeParams, DecodeStage, DepthParams, DepthStage,
    GeometryParams, GeometryStage, NormalizeParams, NormalizeStage, ScnParams, ScnStage,
    VoxelizeParams, VoxelizeStage,
)

# The modules an ONNX backend runs; the SCN module goes to the sparse-conv executor.
DENSE_MODULES: tuple[str, ...] = ("camera.backbone", "camera.vtransform", "fuser", "head.bbox")


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


Schedule = Callable[["Pipeline", Frame, StageTimer], Detections]


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


def sequential(pipeline: "Pipeline", frame: Frame, timer: StageTimer) -> Detections:
    """LiDAR branch, then camera branch, then fuser + head + decode, on the calling thread."""
    points = pipeline.select_points(frame, timer)
    lidar_bev = pipeline.lidar_branch(points, timer)
    camera_bev = pipeline.camera_branch(frame, points, timer)
    return pipeline.detect(camera_bev, lidar_bev, timer)


def check_frame(frame: Frame, preset: Preset) -> None:
    """Refuse a frame that does not fit the package's rig: camera names, count and order, raw
    image size, point features; then the frame's own consistency (``Frame.validate``)."""
    source = frame.source or frame.token or "<frame>"
    names = tuple(frame.calib.camera_names)
    if names != preset.cameras.names:
        raise InputError(f"the frame has cameras {list(names)} but the package expects "
                         f"{preset.cameras.num_cameras} in the order "
                         f"{list(preset.cameras.names)}", path=source, field="calib.camera_names")
    frame.validate(num_features=preset.points.num_features)
    raw = tuple(frame.images.shape[1:3])
    if raw != tuple(preset.cameras.raw_size):
        raise InputError(f"images are {raw[0]}×{raw[1]} (H×W) but the package expects "
                         f"{preset.cameras.raw_size[0]}×{preset.cameras.raw_size[1]}: its resize "
                         f"and crop assume that raw size", path=source, field="images")


class Pipeline:
    """The deploy runtime for one package.

    ``threads`` bounds the threads of the ONNX sessions (intra-op), of the sparse-conv executor
    and of the numba kernels; ``None`` lets each use every core. ``optimization`` is the ONNX
    graph optimisation level. Not thread-safe: one frame at a time per instance (the geometry
    cache and the timings are per instance).
    """

    def __init__(self, package: str | Path | DeployPackage, *, backend: str = "onnxruntime",
                 threads: int | None = None, optimization: OptimizationLevel = "all",
                 schedule: Schedule = sequential) -> None:
        limit = numba.config.NUMBA_NUM_THREADS
        if threads is not None and not 1 <= threads <= limit:
            raise ConfigError(f"must be in 1..{limit} (the CPU threads available), got {threads}",
                              field="threads")
        self.package = package if isinstance(package, DeployPackage) else load_package(package)
        pkg = self.package
        self.preset: Preset = pkg.preset
        self.backend = backend
        self.threads = threads
        self.schedule = schedule
        options = RunnerOptions(threads=threads, optimization=optimization)
        self.runners: dict[str, Runner] = {
            name: create_runner(backend, pkg.path(name), pkg.module(name), options)
            for name in DENSE_MODULES}
        self.normalize = NormalizeStage(NormalizeParams.from_package(pkg))
        self.depth = DepthStage(DepthParams.from_package(pkg))
        self.geometry = GeometryStage(GeometryParams.from_package(pkg))
        self.bevpool = BevPoolStage(BevPoolParams.from_package(pkg))
        self.voxelize = VoxelizeStage(VoxelizeParams.from_package(pkg))
        self.scn = ScnStage(ScnParams.from_package(pkg), threads=threads)
        self.decode = DecodeStage(DecodeParams.from_package(pkg))
        self.last_timings: dict[str, float] = {}

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.preset.classes)

    def run(self, frame: Frame) -> Detections:
        """Detect objects in one frame; ``last_timings`` then holds its per-stage times (ms)."""
        check_frame(frame, self.preset)
        timer = StageTimer()
        with numba_threads(self.threads), timer("total"):
            detections = self.schedule(self, frame, timer)
        self.last_timings = timer.ms
        return detections

    # ---- the pieces a schedule arranges ---------------------------------------------------

    def select_points(self, frame: Frame, timer: StageTimer) -> np.ndarray:
        """The frame's points inside the package's range (both branches use them)."""
        with timer("points"):
            return self.voxelize.select(frame.points,
                                        source=frame.source or frame.token or "<frame>")

    def lidar_branch(self, points: np.ndarray, timer: StageTimer) -> np.ndarray:
        """In-range points → LiDAR BEV ``(1, C·Z, X, Y)``."""
        with timer(self.voxelize.name):
            voxels = self.voxelize.run(points)
        with timer(self.scn.name):
            return self.scn.run(voxels.feats, voxels.coords)

    def camera_branch(self, frame: Frame, points: np.ndarray, timer: StageTimer) -> np.ndarray:
        """Images + in-range points + calibration → camera BEV ``(1, C, X, Y)``."""
        with timer(self.normalize.name):
            img = self.normalize.run(frame.images)
        with timer(self.depth.name):
            depth = self.depth.run(points, lidar2image(frame.calib))
        with timer("camera.backbone"):
            out = self.runners["camera.backbone"].run({"img": img, "depth": depth})
        with timer(self.geometry.name):
            plan = self.geometry.run(frame.calib)
        with timer(self.bevpool.name):
            bev = self.bevpool.run(out["camera_depth_weights"], out["camera_feature"], plan)
        with timer("camera.vtransform"):
            return self.runners["camera.vtransform"].run({"feat_in": bev})["feat_out"]

    def detect(self, camera_bev: np.ndarray, lidar_bev: np.ndarray,
               timer: StageTimer) -> Detections:
        """Both BEV maps → fuser → head → decoded boxes."""
        with timer("fuser"):
            middle = self.runners["fuser"].run({"camera": camera_bev, "lidar": lidar_bev})["middle"]
        with timer("head.bbox"):
            outputs = self.runners["head.bbox"].run({"middle": middle})
        with timer(self.decode.name):
            return self.decode.run(outputs)
