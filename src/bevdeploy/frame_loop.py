"""Multi-frame runs (``infer``, ``eval``, ``demo``, ``compare``): source → detector → sinks, one
frame at a time under an error policy, a record of what failed and why, and a clean end on
Ctrl-C (``run_frames`` is the flow; ``FrameLoop`` the policy and the record).

A fleet job over thousands of frames must neither die on one damaged file nor hide that it
skipped one. ``OnError.stop`` (the default) ends the run at the first bad frame, with that
error's exit code; ``OnError.skip`` reports the frame in one line, goes on, and lists every
failure in the run record (``FrameLoop.to_dict``) that the command writes into its outputs;
the command then exits with ``PARTIAL_EXIT``. Only a ``BevDeployError`` (a bad input, a damaged
file) is a per-frame failure: anything else is a bug and ends the run.

Ctrl-C ends the loop between or inside frames; the frames finished so far stay recorded, so
the command can flush them before exiting with ``INTERRUPTED_EXIT``. SIGTERM (``Terminated``,
raised by the CLI's handler) does the same, recorded as ``terminated``, exit ``TERMINATED_EXIT``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from rich.console import Console
from rich.markup import escape
from rich.progress import track

from bevdeploy.errors import (INTERRUPTED_EXIT, PARTIAL_EXIT, TERMINATED_EXIT, BevDeployError,
                              Terminated)

if TYPE_CHECKING:
    from bevdeploy.data.frame import Detections, Frame
    from bevdeploy.data.sources import FrameSource
    from bevdeploy.detector import Detector
    from bevdeploy.sinks import Sink

T = TypeVar("T")


class OnError(str, Enum):
    """What a multi-frame run does with a frame that fails."""

    stop = "stop"
    skip = "skip"


@dataclass(frozen=True)
class FrameFailure:
    """One frame that failed: its position, its name (sample token or file) and the error."""

    index: int
    frame: str
    error: BevDeployError

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "frame": self.frame, "error": type(self.error).__name__,
                "exit_code": self.error.exit_code, "path": self.error.path,
                "field": self.error.field, "message": str(self.error)}


class FrameLoop:
    """Runs ``total`` frames under ``on_error`` and records the outcome.

    ``label(index)`` names a frame in messages before it is loaded (a sample token, a file).
    Progress goes to ``console``: a progress bar on a terminal, one line per frame otherwise
    (a fleet job's log says how far it got).
    """

    def __init__(self, total: int, on_error: OnError = OnError.stop, *,
                 label: Callable[[int], str] = str, console: Console | None = None,
                 description: str = "frames") -> None:
        self.total = total
        self.on_error = OnError(on_error)
        self.label = label
        self.console = console
        self.description = description
        self.done = 0
        self.failures: list[FrameFailure] = []
        self.stopped: FrameFailure | None = None
        self.interrupted = False
        self.terminated = False  # the interrupt was SIGTERM (``errors.Terminated``)

    # ---- running -------------------------------------------------------------------------

    @property
    def ended_early(self) -> bool:
        return self.stopped is not None or self.interrupted

    @property
    def _interactive(self) -> bool:
        return self.console is not None and self.console.is_terminal

    def __iter__(self) -> Iterator[int]:
        """Frame indices, ending early after a stop or an interrupt."""
        indices: Any = range(self.total)
        if self._interactive:
            indices = track(indices, description=self.description, console=self.console)
        for index in indices:
            if self.ended_early:
                return
            yield index

    def attempt(self, index: int, work: Callable[[], T]) -> tuple[bool, T | None]:
        """``(True, work())``, or ``(False, None)`` when the frame failed (recorded under the
        policy) or Ctrl-C arrived while it ran."""
        t0 = time.perf_counter()
        try:
            result = work()
        except BevDeployError as exc:
            failure = FrameFailure(index, self.label(index), exc)
            if self.on_error is OnError.stop:
                self.stopped = failure
            else:
                self.failures.append(failure)
                self._say(f"[yellow]skipped[/yellow] {escape(self._where(index))}: "
                          f"({type(exc).__name__}) {escape(str(exc))}")
            return False, None
        except KeyboardInterrupt as exc:
            self._interrupt(exc)
            return False, None
        self.done += 1
        if not self._interactive:
            self._say(f"{escape(self._where(index))} done in "
                      f"{(time.perf_counter() - t0) * 1e3:.0f} ms")
        return True, result

    def run(self, work: Callable[[int], object]) -> None:
        """``work(index)`` for every frame; Ctrl-C anywhere in the loop ends it quietly (the
        caller writes what finished, then ``raise_if_ended``)."""
        try:
            for index in self:
                self.attempt(index, lambda: work(index))
        except KeyboardInterrupt as exc:
            self._interrupt(exc)

    def results(self, work: Callable[[int], T]) -> Iterator[T]:
        """``work(index)`` of every frame that succeeds; at the end, re-raise what ended the
        loop early, so that a consumer computing one result over the whole run (a metric)
        writes nothing for a stopped or interrupted run."""
        for index in self:
            ok, result = self.attempt(index, lambda: work(index))
            if ok:
                yield result  # type: ignore[misc]
        self.raise_if_ended()

    def _interrupt(self, exc: KeyboardInterrupt) -> None:
        self.interrupted = True
        self.terminated = self.terminated or isinstance(exc, Terminated)

    def raise_if_ended(self) -> None:
        """Re-raise the error that stopped the run, ``Terminated`` (SIGTERM) or
        ``KeyboardInterrupt``."""
        if self.stopped is not None:
            raise self.stopped.error
        if self.interrupted:
            raise Terminated() if self.terminated else KeyboardInterrupt

    # ---- reporting -----------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``complete``, ``partial`` (frames skipped), ``stopped``, ``interrupted`` (Ctrl-C) or
        ``terminated`` (SIGTERM)."""
        if self.interrupted:
            return "terminated" if self.terminated else "interrupted"
        if self.stopped is not None:
            return "stopped"
        return "partial" if self.failures else "complete"

    @property
    def exit_code(self) -> int:
        """0, ``PARTIAL_EXIT``, the stopping error's code, or ``INTERRUPTED_EXIT``."""
        if self.interrupted:
            return TERMINATED_EXIT if self.terminated else INTERRUPTED_EXIT
        if self.stopped is not None:
            return self.stopped.error.exit_code
        return PARTIAL_EXIT if self.failures else 0

    def to_dict(self) -> dict[str, Any]:
        """The run record written into a command's outputs."""
        failed = [*self.failures, *([self.stopped] if self.stopped else [])]
        return {"status": self.status, "on_error": self.on_error.value,
                "frames_total": self.total, "frames_done": self.done,
                "frames_failed": len(failed), "failures": [f.to_dict() for f in failed]}

    def summary(self) -> str:
        """One line: how many frames ran, and how many failed with which errors."""
        line = f"{self.done} of {self.total} frame(s) done"
        if self.failures:
            kinds = Counter(type(f.error).__name__ for f in self.failures)
            line += (f", {len(self.failures)} skipped ("
                     + ", ".join(f"{k} ×{n}" for k, n in kinds.items()) + ")")
        if self.stopped is not None:
            line += f", stopped at {self._where(self.stopped.index)}"
        if self.interrupted:
            line += ", terminated (SIGTERM)" if self.terminated else ", interrupted (Ctrl-C)"
        return line

    def _where(self, index: int) -> str:
        return f"frame {index + 1}/{self.total} {self.label(index)}"

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False, soft_wrap=True)


@runtime_checkable
class FramePool(Protocol):
    """Frames run by workers elsewhere (``bevdeploy.distributed.RayDetectorPool``), given to
    ``run_frames`` in place of a detector: ``result(index)`` waits for frame ``index`` and
    returns the frame as the sinks need it, its detections and stage times, or raises that
    frame's ``BevDeployError``; ``record()`` is what the pool adds to the run record (workers,
    retries). The loop, its policy and the sinks stay the same as in one process."""

    def result(self, index: int) -> tuple[Frame, Detections, Mapping[str, float]]: ...

    def record(self) -> dict[str, Any]: ...


def run_frames(source: FrameSource, detector: Detector | FramePool, sinks: Sequence[Sink], *,
               on_error: OnError = OnError.stop, console: Console | None = None,
               description: str = "frames",
               backend: Mapping[str, Any] | None = None) -> tuple[FrameLoop, list[Path]]:
    """The flow of every multi-frame command: each frame of ``source`` loaded, run through
    ``detector`` and handed to every sink, under ``on_error``; then every sink closed with the
    run record, whatever ended the run (so the finished frames are written), and the loop and
    the paths written returned. The caller ends the command with ``loop.raise_if_ended()``.
    A streaming source (``data.streams.FrameStream``, e.g. a ROS 2 bag) is read in order.
    Every camera a finished frame ran without (``Frame.dropped``) is listed in the run record
    under ``camera_dropouts``; ``backend`` (what ran the frames: name, inference precision,
    ``auto``'s reason; ``DetectorOptions.record``) under ``backend``."""
    from bevdeploy.data.streams import FrameStream, InOrder

    if isinstance(source, FrameStream):
        source = InOrder(source)
    loop = FrameLoop(len(source), on_error, label=source.label, console=console,
                     description=description)

    pool = detector if isinstance(detector, FramePool) else None
    dropouts: list[dict[str, Any]] = []

    def one_frame(index: int) -> None:
        if pool is not None:  # run elsewhere (bevdeploy.distributed), handed back in order
            frame, detections, timings = pool.result(index)
        else:
            frame = source[index]
            detections = detector(frame)
            timings = detector.last_timings
        for sink in sinks:
            sink.write(frame, detections, timings)
        dropouts.extend({"index": index, "frame": source.label(index), "camera": camera,
                         "reason": reason} for camera, reason in frame.dropped.items())

    loop.run(one_frame)
    record = {**loop.to_dict(), **({"backend": dict(backend)} if backend is not None else {}),
              **({"camera_dropouts": dropouts} if dropouts else {}),
              **(pool.record() if pool is not None else {})}
    return loop, [path for sink in sinks for path in sink.close(record)]
