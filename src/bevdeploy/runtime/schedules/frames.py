"""The ``frames`` schedule: a frame pipeline for ``Pipeline.run_stream``.

A worker thread loads frame k+1 (iterates the caller's frames), runs its LiDAR branch and its
camera inputs while the calling thread runs frame k's camera features, fuser, head and decode.
It raises throughput, not single-frame latency; on one frame (``Pipeline.run``) it is
``sequential`` in effect (``frame_pipelined``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.runtime.frame_checks import check_frame, frame_label, name_failure
from bevdeploy.runtime.fp_env import flush_subnormals
from bevdeploy.runtime.schedules.base import CameraInputs, Composition, numba_threads
from bevdeploy.runtime.timing import StageTimer

# Frames the ``frames`` schedule's worker may pull and prepare ahead of the one the consumer is
# working on: one keeps both threads busy; more would only add latency and memory.
STREAM_DEPTH = 1
_POLL_S = 0.05  # how often a blocked worker checks whether the consumer has gone


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


def frame_pipelined(pipeline: Composition, frame: Frame, timer: StageTimer) -> Detections:
    """One frame under the frame-pipelined schedule: with nothing to overlap it with, the
    worker's part and the consumer's part run in turn on the calling thread. ``run_stream``
    overlaps consecutive frames (``stream``)."""
    points = pipeline.select_points(frame, timer)
    lidar_bev = pipeline.lidar_branch(points, timer)
    camera = pipeline.camera_inputs(frame, points, timer)
    return pipeline.detect(pipeline.camera_features(camera, timer), lidar_bev, timer)


def stream(pipeline: Composition, source: Iterable[Frame]) -> Iterator[Detections]:
    """The detections of every frame of ``source``, in order: the frames are pulled (loaded)
    and prepared on a worker thread at most ``STREAM_DEPTH`` ahead of the consumer. After each
    yield ``pipeline.last_timings`` holds that frame's stage times, ``total`` its latency from
    the moment its preparation began. A failing frame ends the stream with its error, a note
    naming the frame; closing the generator early stops the worker after its current frame."""
    prepared: queue.SimpleQueue = queue.SimpleQueue()
    slots = threading.Semaphore(STREAM_DEPTH)
    stop = threading.Event()
    worker = threading.Thread(target=_produce,
                              args=(pipeline, iter(source), prepared, slots, stop),
                              name="bevdeploy-frames", daemon=True)
    worker.start()
    try:
        index = 0
        while True:
            item = _next_prepared(prepared, worker)
            slots.release()  # the worker may start on the next frame
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise name_failure(item.error, index, item.label)
            assert isinstance(item, _Prepared)
            timer = item.timer
            try:
                with numba_threads(pipeline.threads), flush_subnormals():
                    camera_bev = pipeline.camera_features(item.camera, timer)
                    detections = pipeline.detect(camera_bev, item.lidar_bev, timer)
            except Exception as exc:
                raise name_failure(exc, index, frame_label(item.frame))
            timer.ms["total"] = (time.perf_counter() - item.start) * 1e3
            pipeline.last_timings = timer.ms
            yield detections
            index += 1
    finally:
        stop.set()  # the worker ends after its current frame, or at once if it is waiting
        worker.join()


def _prepare(pipeline: Composition, frame: Frame) -> _Prepared:
    """The worker's part of one frame: checks, LiDAR branch, camera inputs."""
    start = time.perf_counter()
    timer = StageTimer()
    check_frame(frame, pipeline.preset)
    points = pipeline.select_points(frame, timer)
    lidar_bev = pipeline.lidar_branch(points, timer)
    camera = pipeline.camera_inputs(frame, points, timer)
    return _Prepared(frame, lidar_bev, camera, timer, start)


def _produce(pipeline: Composition, source: Iterator[Frame], out: queue.SimpleQueue,
             slots: threading.Semaphore, stop: threading.Event) -> None:
    """Worker loop: for each free slot pull, prepare and hand over one frame, until the
    source ends, a frame fails (the failure is handed over instead) or the consumer sets
    ``stop``. Taking a slot before pulling keeps the worker at most ``STREAM_DEPTH`` frames
    ahead, so a frame is not prepared long before the consumer can take it (that would only
    add to its latency). Every exception ends the loop and is handed over, so the consumer
    never waits for a worker that is gone."""
    label = "while loading it"
    try:
        with numba_threads(pipeline.threads), flush_subnormals():
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
                out.put(_prepare(pipeline, frame))
    except BaseException as exc:  # handed to the consumer, which raises it
        out.put(_Failed(label, exc))


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
