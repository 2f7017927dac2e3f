"""``Pipeline``: a deploy package + a ``Frame`` → ``Detections``, torch-free.

The pipeline owns the stages and the four dense-module runners and exposes the work as pieces
that only meet at the fuser: the LiDAR branch (range filter, voxelize, SCN), the camera inputs
(normalize, depth, geometry), the camera features (backbone, bevpool, vtransform), and
fuse-and-detect. *In what order and on which threads* those pieces run is a **schedule**:

``sequential``
    everything on the calling thread, LiDAR branch then camera branch, as CUDA-BEVFusion does on
    its single stream (spec/deploy.md §5.2).
``branches``
    the LiDAR branch on a worker thread while the calling thread runs the camera branch; they
    join before the fuser. Lowers one frame's latency when neither branch fills the cores.
``frames``
    a frame pipeline for ``run_stream``: a worker thread loads frame k+1 (iterates the caller's
    frames), runs its LiDAR branch and its camera inputs while the calling thread runs frame k's
    camera features, fuser, head and decode. Raises throughput, not single-frame latency; on
    one frame (``run``) it is ``sequential``.

A schedule is a function ``schedule(pipeline, frame, timer) -> Detections`` (``frames`` is one
too, for ``run``); custom ones can be passed to the constructor. Every schedule computes the
same thing with the same kernels in the same order per tensor, so all give bit-identical
detections (tests/runtime/test_schedules.py).

Every stage is timed (``last_timings``, milliseconds, plus ``total``), so a benchmark can
attribute latency without instrumenting anything. Under ``branches`` and ``frames`` stages of
different threads overlap, so their sum exceeds ``total``.

**Threads.** ``threads`` is the budget for each concurrent part: the ONNX sessions' intra-op
pools, the numba kernels (numba's thread count is per calling thread, so each worker sets its
own) and the SCN executor. The concurrent schedules do not split it: holding the worker
thread's kernels to one thread bought nothing on the 2-core development machine (tiny package,
6 interleaved rounds of 4 frames, machine shared: ``branches`` 3.71 frames/s split vs 3.65
full, ``frames`` 3.42 vs 3.61), since a part held to one core leaves the other idle whenever
the other part waits. What makes full budgets work is that idle threads sleep instead of
spinning: ONNX Runtime's (``RunnerOptions.spinning``) and OpenMP's (``kernels.cpu``). Every
kernel releases the GIL while it runs (numba ``nogil``, PIL's resampling, ONNX Runtime's
``run``), so the threads overlap for real; only the Python glue between kernels (the SCN
executor's per-layer loop, the stages' argument checks) holds it, briefly.

On 2 cores the concurrent schedules gain little when every stage already keeps both cores
busy: they win back only the serial stretches (voxelize, the geometry's counting sort, the
SCN's rulebook builds, Python glue) — 5–20% more frames/s on the tiny package in the rounds
above and in others. ``bevdeploy bench --schedule ...`` measures it on any machine.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.data.preprocess import lidar2image
from bevdeploy.errors import ConfigError, InputError
from bevdeploy.package import DeployPackage, load_package
from bevdeploy.presets import Preset
from bevdeploy.vocabulary import DENSE_MODULES
from bevdeploy.runtime.backends import Runner, RunnerOptions, create_runner
from bevdeploy.runtime.backends.base import OptimizationLevel
from bevdeploy.runtime.kernels import BevPoolPlan
from bevdeploy.runtime.stages import (
    BevPoolParams, BevPoolStage, DecodeParams, DecodeStage, DepthParams, DepthStage,
    GeometryParams, GeometryStage, NormalizeParams, NormalizeStage, ScnParams, ScnStage,
    VoxelizeParams, VoxelizeStage,
)


# Frames the ``frames`` schedule's worker may pull and prepare ahead of the one the consumer is
# working on: one keeps both threads busy; more would only add latency and memory.
STREAM_DEPTH = 1
_POLL_S = 0.05  # how often a blocked worker checks whether the consumer has gone


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


@dataclass(frozen=True)
class CameraInputs:
    """What the camera branch needs before its first dense module: the normalized images
    ``(1, N, 3, H, W)``, the sparse depth ``(1, N, 1, H, W)`` and the geometry plan."""

    img: np.ndarray
    depth: np.ndarray
    plan: BevPoolPlan


@dataclass(frozen=True)
class _Prepared:
    """The ``frames`` schedule's hand-over: one frame's work done by the worker thread."""

    frame: Frame
    lidar_bev: np.ndarray
    camera: CameraInputs
    timer: StageTimer
    start: float  # perf_counter when the worker began the frame


@dataclass(frozen=True)
class _Failed:
    """A frame the ``frames`` worker could not load or prepare."""

    label: str
    error: BaseException


_END = object()  # the frames iterable is exhausted


def sequential(pipeline: "Pipeline", frame: Frame, timer: StageTimer) -> Detections:
    """LiDAR branch, then camera branch, then fuser + head + decode, on the calling thread."""
    points = pipeline.select_points(frame, timer)
    lidar_bev = pipeline.lidar_branch(points, timer)
    camera_bev = pipeline.camera_branch(frame, points, timer)
    return pipeline.detect(camera_bev, lidar_bev, timer)


def branches(pipeline: "Pipeline", frame: Frame, timer: StageTimer) -> Detections:
    """The LiDAR branch on the pipeline's worker thread, the camera branch on the calling one;
    joined before the fuser. If either branch fails, the other is waited for (it must not run
    on into the next frame) and the first error is raised."""
    points = pipeline.select_points(frame, timer)
    lidar_timer = StageTimer()
    future = pipeline.submit(pipeline.lidar_branch, points, lidar_timer)
    try:
        camera_bev = pipeline.camera_branch(frame, points, timer)
    except BaseException:
        wait([future])
        raise
    lidar_bev = future.result()
    timer.ms.update(lidar_timer.ms)
    return pipeline.detect(camera_bev, lidar_bev, timer)


def frame_pipelined(pipeline: "Pipeline", frame: Frame, timer: StageTimer) -> Detections:
    """One frame under the frame-pipelined schedule: with nothing to overlap it with, the
    worker's part and the consumer's part run in turn on the calling thread. ``run_stream``
    overlaps consecutive frames."""
    points = pipeline.select_points(frame, timer)
    lidar_bev = pipeline.lidar_branch(points, timer)
    camera = pipeline.camera_inputs(frame, points, timer)
    return pipeline.detect(pipeline.camera_features(camera, timer), lidar_bev, timer)


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


def default_schedule(backend: str, options: RunnerOptions) -> Schedule | str:
    """``sequential``, or for a GPU backend on a CUDA device its ``CudaSchedule`` (two
    streams, the kernels on the device, the SCN in the runners' precision)."""
    from bevdeploy.runtime.backends.gpu import GPU_BACKENDS, GpuConfig, GpuOptions

    gpu = GpuOptions.of(options)
    if backend not in GPU_BACKENDS or gpu.device.split(":")[0] == "cpu":
        return "sequential"
    return GpuConfig(precision=gpu.precision, streams=True).schedule(gpu.device)


def check_frame(frame: Frame, preset: Preset) -> None:
    """Refuse a frame that does not fit the package's rig: camera names, count and order, raw
    image size, point features; then the frame's own consistency (``Frame.validate``)."""
    source = frame_label(frame)
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


def frame_label(frame: Frame) -> str:
    """How messages name a frame: its source file, else its sample token."""
    return frame.source or frame.token or "<frame>"


def _name_failure(error: BaseException, index: int, label: str) -> BaseException:
    """Add which frame of a stream failed to ``error``'s notes (its class, and so the CLI's
    exit code, stay as they were)."""
    if isinstance(error, Exception):
        error.add_note(f"while processing frame {index} of the stream ({label})")
    return error


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
        self.backend = backend
        self.threads = threads
        self.runners: dict[str, Runner] = {
            name: create_runner(backend, pkg.path(name), pkg.module(name), options)
            for name in DENSE_MODULES}
        # the default after the runners, whose errors say more (a missing TensorRT, no CUDA)
        self.schedule: Schedule = chosen if chosen is not None else resolve_schedule(
            default_schedule(backend, options))
        self.normalize = NormalizeStage(NormalizeParams.from_package(pkg))
        self.depth = DepthStage(DepthParams.from_package(pkg))
        self.geometry = GeometryStage(GeometryParams.from_package(pkg))
        self.bevpool = BevPoolStage(BevPoolParams.from_package(pkg))
        self.voxelize = VoxelizeStage(VoxelizeParams.from_package(pkg))
        self.scn = ScnStage(ScnParams.from_package(pkg), threads=threads)
        self.decode = DecodeStage(DecodeParams.from_package(pkg))
        self.last_timings: dict[str, float] = {}
        self._executor: ThreadPoolExecutor | None = None

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
            yield from self._pipelined(frames)
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
                raise _name_failure(exc, index, label)
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
        return CameraInputs(img, depth, plan)

    def camera_features(self, inputs: CameraInputs, timer: StageTimer) -> np.ndarray:
        """Camera inputs → camera BEV ``(1, C, X, Y)`` (backbone, bevpool, vtransform)."""
        with timer("camera.backbone"):
            out = self.runners["camera.backbone"].run({"img": inputs.img, "depth": inputs.depth})
        with timer(self.bevpool.name):
            bev = self.bevpool.run(out["camera_depth_weights"], out["camera_feature"],
                                   inputs.plan)
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

    # ---- the frame pipeline -----------------------------------------------------------------

    def _budgeted(self, fn: Callable[..., Any], *args: Any) -> Any:
        with numba_threads(self.threads):
            return fn(*args)

    def _prepare(self, frame: Frame) -> _Prepared:
        """The ``frames`` worker's part of one frame: checks, LiDAR branch, camera inputs."""
        start = time.perf_counter()
        timer = StageTimer()
        check_frame(frame, self.preset)
        points = self.select_points(frame, timer)
        lidar_bev = self.lidar_branch(points, timer)
        camera = self.camera_inputs(frame, points, timer)
        return _Prepared(frame, lidar_bev, camera, timer, start)

    def _produce(self, source: Iterator[Frame], out: queue.SimpleQueue,
                 slots: threading.Semaphore, stop: threading.Event) -> None:
        """Worker loop: for each free slot pull, prepare and hand over one frame, until the
        source ends, a frame fails (the failure is handed over instead) or the consumer sets
        ``stop``. Taking a slot before pulling keeps the worker at most ``STREAM_DEPTH`` frames
        ahead, so a frame is not prepared long before the consumer can take it (that would only
        add to its latency). Every exception ends the loop and is handed over, so the consumer
        never waits for a worker that is gone."""
        label = "while loading it"
        try:
            with numba_threads(self.threads):
                while True:
                    while not slots.acquire(timeout=_POLL_S):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    label = "while loading it"
                    try:
                        frame = next(source)
                    except StopIteration:
                        out.put(_END)
                        return
                    label = frame_label(frame)
                    out.put(self._prepare(frame))
        except BaseException as exc:  # handed to the consumer, which raises it
            out.put(_Failed(label, exc))

    def _pipelined(self, source: Iterable[Frame]) -> Iterator[Detections]:
        prepared: queue.SimpleQueue = queue.SimpleQueue()
        slots = threading.Semaphore(STREAM_DEPTH)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce,
                                  args=(iter(source), prepared, slots, stop),
                                  name="bevdeploy-frames", daemon=True)
        worker.start()
        try:
            index = 0
            while True:
                item = self._next_prepared(prepared, worker)
                slots.release()  # the worker may start on the next frame
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise _name_failure(item.error, index, item.label)
                assert isinstance(item, _Prepared)
                timer = item.timer
                try:
                    with numba_threads(self.threads):
                        camera_bev = self.camera_features(item.camera, timer)
                        detections = self.detect(camera_bev, item.lidar_bev, timer)
                except Exception as exc:
                    raise _name_failure(exc, index, frame_label(item.frame))
                timer.ms["total"] = (time.perf_counter() - item.start) * 1e3
                self.last_timings = timer.ms
                yield detections
                index += 1
        finally:
            stop.set()  # the worker ends after its current frame, or at once if it is waiting
            worker.join()

    @staticmethod
    def _next_prepared(prepared: queue.SimpleQueue, worker: threading.Thread) -> object:
        """The worker's next item; a worker that died without handing one over (which
        ``_produce`` rules out, short of the interpreter killing the thread) is an error, not a
        hang."""
        while True:
            try:
                return prepared.get(timeout=_POLL_S)
            except queue.Empty:
                if not worker.is_alive() and prepared.empty():
                    raise RuntimeError("the frames schedule's worker thread ended without "
                                       "handing over a frame or an error") from None
