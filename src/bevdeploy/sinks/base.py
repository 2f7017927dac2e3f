"""The sink interface (``bevdeploy.sinks``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from bevdeploy.data.frame import Detections, Frame

# The frame loop's record of a run (``FrameLoop.to_dict``): status (complete, partial, stopped,
# interrupted), frame counts and every failure.
RunRecord = Mapping[str, Any]


class Sink(Protocol):
    """Consumes the frames of a run that finished, then writes its outputs once."""

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        """Take one finished frame (its detections and stage times in ms)."""

    def close(self, run: RunRecord) -> list[Path]:
        """Write the outputs for the frames taken so far; return the paths written."""


def ended_early(run: RunRecord) -> bool:
    """Whether the run was stopped by an error or interrupted (its results are incomplete
    without the policy having said so)."""
    return run["status"] in ("stopped", "interrupted")
