"""PNG pictures of every finished frame (``bevdeploy.viz``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.sinks.base import RunRecord


class Renders:
    """A bird's-eye view and a camera mosaic per frame in ``directory``: boxes scoring at least
    ``score_threshold`` (``None``: every box; the threshold is in each picture's title), at
    most ``max_boxes`` (``None``: no limit), over a square view of half-width ``extent`` m.
    The pictures are written as frames finish (a picture is useful on its own)."""

    def __init__(self, directory: str | Path, *, extent: float, score_threshold: float | None,
                 max_boxes: int | None = None, points: bool = True) -> None:
        self.directory = Path(directory)
        self.extent = extent
        self.score_threshold = score_threshold
        self.max_boxes = max_boxes
        self.points = points  # the LiDAR points in the camera pictures
        self.pictures: list[Path] = []

    def write(self, frame: Frame, detections: Detections, timings: Mapping[str, float]) -> None:
        from bevdeploy.viz import render_frame

        self.pictures += render_frame(frame, detections, self.directory, extent=self.extent,
                                      score_threshold=self.score_threshold,
                                      max_boxes=self.max_boxes or len(detections),
                                      points=self.points)

    def close(self, run: RunRecord) -> list[Path]:
        """The pictures' folder, when any picture was drawn (``pictures`` lists them)."""
        return [self.directory] if self.pictures else []
