"""Streaming frame sources: frames that can only be read front to back (a ROS 2 bag).

A ``FrameSource`` is indexable; a recording is a stream whose frames exist only once the
messages around them have been read. A ``FrameStream`` therefore yields ``FrameSlot``s in
order — a name known before loading, and a ``load`` that builds the frame (decoding, sync,
calibration), so a frame that fails is one failure under the run's error policy, exactly as
with an indexable source. Its ``len`` comes from the recording's index. ``InOrder`` presents a
stream to the frame loop as a source read strictly in order, which is how ``run_frames`` runs
both kinds with the same loop, record and Ctrl-C handling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bevdeploy.data.frame import Frame
from bevdeploy.errors import InputError


@dataclass(frozen=True)
class FrameSlot:
    """One frame of a stream: its name, and the work that loads it."""

    label: str
    load: Callable[[], Frame]


@runtime_checkable
class FrameStream(Protocol):
    """What a streaming source offers: ``len`` (from its index) and the slots, in order."""

    global_poses: bool

    def __len__(self) -> int: ...

    def slots(self) -> Iterator[FrameSlot]: ...


class InOrder:
    """A ``FrameStream`` as a ``FrameSource`` whose frames are asked for in increasing order
    (as the frame loop does). Exactly ``len(stream)`` frames: a stream that ends early gives
    failing frames for the rest, so the run record says what the index promised."""

    def __init__(self, stream: FrameStream) -> None:
        self.stream = stream
        self.global_poses = stream.global_poses
        self._slots: Iterator[FrameSlot] | None = None
        self._index = -1
        self._slot: FrameSlot | None = None

    def __len__(self) -> int:
        return len(self.stream)

    def _advance(self, index: int) -> FrameSlot:
        if index < self._index:
            raise IndexError(f"frame {index} of a stream already read past {self._index}")
        if self._slots is None:
            self._slots = iter(self.stream.slots())
        while self._index < index:
            self._index += 1
            self._slot = next(self._slots, None) or self._missing(self._index)
        assert self._slot is not None
        return self._slot

    def _missing(self, index: int) -> FrameSlot:
        def fail() -> Frame:
            raise InputError(f"the stream ended before frame {index + 1} of {len(self)} that "
                             "its index lists", field="frames")
        return FrameSlot(f"#{index + 1}", fail)

    def __getitem__(self, index: int) -> Frame:
        return self._advance(index).load()

    def label(self, index: int) -> str:
        if index == self._index and self._slot is not None:
            return self._slot.label
        return f"#{index + 1}"
