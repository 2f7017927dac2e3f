"""The boxes a run reports: one selection shared by every sink behind it.

The decode keeps every proposal above the preset's ``head.score_threshold`` (0 for the shipped
presets: nuScenes' mAP integrates the whole score range), so a frame has ``num_proposals``
boxes down to scores near zero. A user reading ``detections.json``, the console and the
pictures wants the boxes the model believes in, and wants the three to agree: ``Selected``
filters each frame once, at ``threshold`` (inclusive) and to the ``max_boxes`` best, and hands
the same boxes to every sink it wraps. ``threshold=None`` is ``--keep-all``: every proposal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.presets import Preset
from bevdeploy.sinks.base import RunRecord, Sink


def report_threshold(preset: Preset, score_threshold: float | None, keep_all: bool) -> float | None:
    """The threshold a run reports boxes at: ``None`` with ``keep_all``, else the one given,
    else the preset's ``head.report_threshold``."""
    if keep_all:
        return None
    return preset.model.head.report_threshold if score_threshold is None else score_threshold


def select(detections: Detections, threshold: float | None,
           max_boxes: int | None = None) -> Detections:
    """The detections scoring at least ``threshold`` (all with ``None``), in the detector's
    order; with ``max_boxes``, the best ``max_boxes`` of them, best first."""
    keep = detections if threshold is None else detections.filter(detections.scores >= threshold)
    if max_boxes is None:
        return keep
    keep = keep.sorted()
    return keep.filter(np.arange(len(keep)) < max_boxes)


class Selected:
    """A sink that hands ``select(detections, threshold, max_boxes)`` of each frame to every
    sink in ``sinks`` and closes them in order."""

    def __init__(self, threshold: float | None, sinks: Sequence[Sink], *,
                 max_boxes: int | None = None) -> None:
        self.threshold = threshold
        self.max_boxes = max_boxes
        self.sinks = list(sinks)

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        kept = select(detections, self.threshold, self.max_boxes)
        for sink in self.sinks:
            sink.write(frame, kept, timings)

    def close(self, run: RunRecord) -> list[Path]:
        written: list[Path] = []
        for sink in self.sinks:
            written += sink.close(run)
        return written


class BoxCount:
    """The number of boxes each finished frame reported, for the console's summary line."""

    def __init__(self) -> None:
        self.per_frame: list[int] = []

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        self.per_frame.append(len(detections))

    def close(self, run: RunRecord) -> list[Path]:
        return []

    def line(self, threshold: float | None) -> str:
        """``12 boxes (score ≥ 0.30) over 3 frame(s)``."""
        which = "every proposal, --keep-all" if threshold is None else f"score ≥ {threshold:.2f}"
        return f"{sum(self.per_frame)} boxes ({which}) over {len(self.per_frame)} frame(s)"
