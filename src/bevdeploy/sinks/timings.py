"""Stage times of a run's frames."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from pathlib import Path

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.sinks.base import RunRecord


class StageTimings:
    """Every finished frame's stage times (ms); ``medians`` over all or all but the first
    ``skip`` frames (the first frame pays for JIT compilation and the geometry plan)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, float]] = []

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        self.frames.append(dict(timings))

    def close(self, run: RunRecord) -> list[Path]:
        return []

    def medians(self, skip: int = 0) -> dict[str, float]:
        """Median ms per stage over the frames after the first ``skip`` (all frames when fewer
        remain), in the stage order of the first frame; empty when no frame finished."""
        kept = self.frames[skip:] or self.frames
        if not kept:
            return {}
        return {stage: statistics.median(t[stage] for t in kept if stage in t)
                for stage in kept[0]}

    def line(self, skip: int = 0) -> str:
        """``stage 1.2 | stage 3.4 | ...`` of ``medians(skip)``."""
        return " | ".join(f"{stage} {ms:.1f}" for stage, ms in self.medians(skip).items())
