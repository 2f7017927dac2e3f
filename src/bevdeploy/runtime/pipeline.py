"""``Pipeline``: a deploy package + a ``Frame`` → ``Detections``, torch-free.

The pipeline owns the stages and the four dense-module runners and exposes the work as pieces
that only meet at the fuser: the LiDAR branch (range filter, voxelize, SCN), the camera inputs
(normalize, depth, geometry), the camera features (backbone, bevpool, vtransform), and
fuse-and-detect. *In what order, on which threads and on which device* those pieces run is a
**schedule** (``runtime.schedules``: ``sequential``, ``branches``, ``frames``, and
``CudaSchedule`` for the GPU backends); the pipeline is the one composition they all arrange.
A ``DeviceSchedule`` names the stages it wants on a torch device, and the pipeline builds them
there: each stage picks its kernel set once, when it is built.

Every stage is timed (``last_timings``, milliseconds, plus ``total``), so a benchmark can
attribute latency without instrumenting anything. Under ``branches`` and ``frames`` stages of
different threads overlap, so their sum exceeds ``total``.

**Threads.** ``threads`` is the budget for each concurrent part: the ONNX sessions' intra-op pools,
the numba kernels (numba's thread count is per calling thread, so each worker sets its own) and the
SCN executor. The concurrent schedules do not split it: holding the worker thread's kernels to one
thread bought nothing where it was measured
(docs/bench/notes.md#concurrent-schedules-and-thread-budgets), since a part held to one core leaves
the other idle whenever the other part waits. What makes full budgets work is that idle threads
sleep instead of spinning: ONNX Runtime's (``RunnerOptions.spinning``) and OpenMP's
(``kernels.cpu``). Every kernel releases the GIL while it runs (numba ``nogil``, PIL's resampling,
ONNX Runtime's ``run``), so the threads overlap for real; only the Python glue between kernels (the
SCN executor's per-layer loop, the stages' argument checks) holds it, briefly.

On 2 cores the concurrent schedules gain little when every stage already keeps both cores
busy: they win back only the serial stretches (voxelize, the geometry's counting sort, the
SCN's rulebook builds, Python glue; the gain measured on 2 cores is in the same note).
``bevdeploy bench --schedule ...`` measures it on any machine.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numba
import numpy as np

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.data.preprocess import lidar2image
from bevdeploy.errors import ConfigError
from bevdeploy.package import DeployPackage, load_package
from bevdeploy.presets import Preset
from bevdeploy.runtime.backends import Runner, RunnerOptions, create_runner
from bevdeploy.runtime.backends.auto import AUTO, choose_for_package
from bevdeploy.runtime.backends.base import OptimizationLevel
from bevdeploy.runtime.backends.gpu import GPU_BACKENDS, GpuConfig, GpuOptions
from bevdeploy.runtime.devices import Precision
from bevdeploy.runtime.fp_env import flush_subnormals
from bevdeploy.runtime.frame_checks import check_frame, frame_label, name_failure
from bevdeploy.runtime.schedules import (CameraInputs, DeviceSchedule, Schedule, frame_pipelined,
                                         numba_threads, resolve_schedule)
from bevdeploy.runtime.schedules import frames as frame_schedule
from bevdeploy.runtime.stages import (
    BevPoolParams, BevPoolStage, DecodeParams, DecodeStage, DepthParams, DepthStage,
    GeometryParams, GeometryStage, NormalizeParams, NormalizeStage, ScnParams, ScnStage,
    VoxelizeParams, VoxelizeStage,
)
from bevdeploy.runtime.timing import StageTimer
from bevdeploy.vocabulary import DENSE_MODULES


def default_schedule(backend: str, options: RunnerOptions) -> Schedule | str:
    """``sequential``, or for a GPU backend on a CUDA device its ``CudaSchedule`` (two
    streams, the kernels on the device, the SCN in the runners' precision)."""
    gpu = GpuOptions.of(options)
    if backend not in GPU_BACKENDS or gpu.device.split(":")[0] == "cpu":
        return "sequential"
    return GpuConfig(precision=gpu.precision, streams=True).schedule(gpu.device)


def _runner_options(given: RunnerOptions | None, *, threads: int | None,
                    optimization: OptimizationLevel, spinning: bool) -> RunnerOptions:
    """``given``, or the options the pipeline's own arguments make. Next to ``given``, an
    argument set away from its default to a value ``given`` does not hold is refused: which of
    the two the caller meant cannot be told (``threads`` contradicts only a ``given.threads``
    that is set too)."""
    if given is None:
        return RunnerOptions(threads=threads, optimization=optimization, spinning=spinning)
    for name, mine, default in (("threads", threads, None), ("optimization", optimization, "all"),
                                ("spinning", spinning, False)):
        theirs = getattr(given, name)
        if mine != default and theirs != mine and not (name == "threads" and theirs is None):
            raise ConfigError(f"{name}={mine!r} contradicts runner_options.{name}={theirs!r}; "
                              f"set it in one place", field="runner_options")
    return given


class Pipeline:
    """The deploy runtime for one package.

    ``threads`` bounds the threads of the ONNX sessions (intra-op), of the sparse-conv executor
    and of the numba kernels; ``None`` lets each use every core. ``optimization`` is the ONNX
    graph optimisation level; ``spinning`` lets ONNX Runtime's idle workers busy-wait (off: see
    ``backends.onnxruntime``). ``runner_options``, when given, are exactly the options every
    runner gets instead of those three (e.g. a ``GpuOptions`` with the GPU switches, which the
    three cannot express); ``threads`` still bounds numba and the SCN executor, and any of the
    three that contradicts ``runner_options`` is refused rather than silently dropped.
    ``schedule`` is a name of ``SCHEDULES`` or a schedule function (a ``CudaSchedule`` for a GPU
    backend); by default ``sequential``, and for a GPU backend on a CUDA device the
    ``CudaSchedule`` of its options (two streams, the frame's kernels on the device), so that
    the fast path is the one a plain ``Pipeline(pkg, backend="torch-cuda")`` takes.
    ``backend="auto"`` picks ONNX Runtime or OpenVINO for the package on this CPU
    (``backends.auto``): ``backend`` then names the one picked and ``backend_choice`` says why.
    Not thread-safe: one frame (or one stream) at a time per instance (the geometry cache and
    the timings are per instance). ``close`` (or a ``with`` block) stops the worker thread of
    ``branches``; it is also stopped when the pipeline is garbage-collected.
    """

    def __init__(self, package: str | Path | DeployPackage, *, backend: str = "onnxruntime",
                 threads: int | None = None, optimization: OptimizationLevel = "all",
                 schedule: Schedule | str | None = None, spinning: bool = False,
                 runner_options: RunnerOptions | None = None) -> None:
        limit = numba.config.NUMBA_NUM_THREADS
        if threads is not None and not 1 <= threads <= limit:
            raise ConfigError(f"must be in 1..{limit} (the CPU threads available), got {threads}",
                              field="threads")
        options = _runner_options(runner_options, threads=threads, optimization=optimization,
                                  spinning=spinning)
        chosen = None if schedule is None else resolve_schedule(schedule)  # before any loading
        self.package = package if isinstance(package, DeployPackage) else load_package(package)
        pkg = self.package
        self.preset: Preset = pkg.preset
        self.backend_choice: str | None = None
        if backend == AUTO:
            choice = choose_for_package(pkg, options.inference_precision)
            backend, self.backend_choice = choice.backend, choice.reason
        self.backend = backend
        self.threads = threads
        self.runners: dict[str, Runner] = {
            name: create_runner(backend, pkg.path(name), pkg.module(name), options)
            for name in DENSE_MODULES}
        # the default after the runners, whose errors say more (a missing TensorRT, no CUDA)
        self.schedule: Schedule = chosen if chosen is not None else resolve_schedule(
            default_schedule(backend, options))
        # each stage on the host, or on the device a DeviceSchedule names for it
        place: dict[str, str] = {}
        # ``bf16`` inference precision is the CPU's own precision for every float GEMM: the host
        # SCN's wide convs too (runtime/scn/bf16.py, docs/bench/notes.md#scn-in-bf16)
        scn_precision: Precision = options.inference_precision
        if isinstance(self.schedule, DeviceSchedule):
            place, scn_precision = dict(self.schedule.device_stages), self.schedule.precision
        self.normalize = NormalizeStage(NormalizeParams.from_package(pkg),
                                        device=place.get("normalize"))
        self.depth = DepthStage(DepthParams.from_package(pkg), device=place.get("depth"))
        self.geometry = GeometryStage(GeometryParams.from_package(pkg),
                                      device=place.get("geometry"))
        self.bevpool = BevPoolStage(BevPoolParams.from_package(pkg), device=place.get("bevpool"))
        self.voxelize = VoxelizeStage(VoxelizeParams.from_package(pkg),
                                      device=place.get("voxelize"))
        self.scn = ScnStage(ScnParams.from_package(pkg), threads=threads,
                            device=place.get("scn"), precision=scn_precision)
        self.decode = DecodeStage(DecodeParams.from_package(pkg), device=place.get("decode"))
        self.last_timings: dict[str, float] = {}
        self._executor: ThreadPoolExecutor | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.preset.classes)

    def run(self, frame: Frame) -> Detections:
        """Detect objects in one frame; ``last_timings`` then holds its per-stage times (ms)."""
        check_frame(frame, self.preset)
        timer = StageTimer()
        with numba_threads(self.threads), flush_subnormals(), timer("total"):
            detections = self.schedule(self, frame, timer)
        self.last_timings = timer.ms
        return detections

    def run_stream(self, frames: Iterable[Frame]) -> Iterator[Detections]:
        """Detections of every frame of ``frames``, in order, as each is ready.

        Under the ``frames`` schedule the frames are pulled (loaded) and prepared on a worker
        thread, at most ``STREAM_DEPTH`` ahead of the consumer; otherwise each is ``run`` in
        turn. After each yield ``last_timings`` holds that frame's stage times; ``total`` is its
        latency from the moment its preparation began. An error in any frame (loading it,
        checking it, running it) ends the stream and propagates to the caller with a note
        naming the frame; the worker stops. Closing the generator early (``break``) stops the
        worker too, after the frame it is working on.
        """
        if self.schedule is frame_pipelined:
            yield from frame_schedule.stream(self, frames)
            return
        source = iter(frames)
        for index in itertools.count():
            label = "while loading it"
            try:
                frame = next(source)
                label = frame_label(frame)
                detections = self.run(frame)
            except StopIteration:
                return
            except Exception as exc:
                raise name_failure(exc, index, label)
            yield detections

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the pipeline's worker thread, under the numba thread budget."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="bevdeploy-branch")
            weakref.finalize(self, self._executor.shutdown, wait=False)
        return self._executor.submit(self._budgeted, fn, *args)

    def close(self) -> None:
        """Stop the worker thread (idempotent; the pipeline can still ``run`` afterwards)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the pieces a schedule arranges ---------------------------------------------------

    def select_points(self, frame: Frame, timer: StageTimer) -> np.ndarray:
        """The frame's points inside the package's range (both branches use them)."""
        with timer("points"):
            return self.voxelize.select(frame.points, source=frame_label(frame))

    def lidar_branch(self, points: np.ndarray, timer: StageTimer) -> np.ndarray:
        """In-range points → LiDAR BEV ``(1, C·Z, X, Y)``."""
        with timer(self.voxelize.name):
            voxels = self.voxelize.run(points)
        with timer(self.scn.name):
            return self.scn.run(voxels.feats, voxels.coords)

    def camera_inputs(self, frame: Frame, points: np.ndarray, timer: StageTimer) -> CameraInputs:
        """Images, in-range points and calibration → the camera branch's kernel-side inputs."""
        with timer(self.normalize.name):
            img = self.normalize.run(frame.images)
        with timer(self.depth.name):
            depth = self.depth.run(points, lidar2image(frame.calib))
        with timer(self.geometry.name):
            plan = self.geometry.run(frame.calib)
        return CameraInputs(img, depth, plan, frame.present)

    def camera_features(self, inputs: CameraInputs, timer: StageTimer) -> np.ndarray:
        """Camera inputs → camera BEV ``(1, C, X, Y)`` (backbone, bevpool, vtransform)."""
        with timer("camera.backbone"):
            out = self.runners["camera.backbone"].run({"img": inputs.img, "depth": inputs.depth})
        with timer(self.bevpool.name):
            bev = self.bevpool.run(out["camera_depth_weights"], out["camera_feature"],
                                   inputs.plan, present=inputs.present)
        with timer("camera.vtransform"):
            return self.runners["camera.vtransform"].run({"feat_in": bev})["feat_out"]

    def camera_branch(self, frame: Frame, points: np.ndarray, timer: StageTimer) -> np.ndarray:
        """Images + in-range points + calibration → camera BEV ``(1, C, X, Y)``."""
        return self.camera_features(self.camera_inputs(frame, points, timer), timer)

    def detect(self, camera_bev: np.ndarray, lidar_bev: np.ndarray,
               timer: StageTimer) -> Detections:
        """Both BEV maps → fuser → head → decoded boxes."""
        with timer("fuser"):
            middle = self.runners["fuser"].run({"camera": camera_bev, "lidar": lidar_bev})["middle"]
        with timer("head.bbox"):
            outputs = self.runners["head.bbox"].run({"middle": middle})
        with timer(self.decode.name):
            return self.decode.run(outputs)

    def _budgeted(self, fn: Callable[..., Any], *args: Any) -> Any:
        with numba_threads(self.threads), flush_subnormals():
            return fn(*args)
