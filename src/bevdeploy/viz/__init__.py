"""PNG renders of frames and detections: a bird's-eye view and the camera images."""

from __future__ import annotations

from pathlib import Path

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.presets import Preset
from bevdeploy.viz.bev import render_bev
from bevdeploy.viz.cameras import render_cameras

__all__ = ["render_bev", "render_cameras", "render_frame", "view_extent"]


def view_extent(preset: Preset) -> float:
    """Half-width (m) of a square BEV view that holds the preset's whole point range."""
    r = preset.points.point_cloud_range
    return max(abs(v) for v in (r[0], r[1], r[3], r[4]))


def render_frame(frame: Frame, detections: Detections, out_dir: str | Path, *,
                 score_threshold: float | None = 0.0, max_boxes: int = 100,
                 extent: float | None = None, points: bool = True) -> list[Path]:
    """Both pictures of one frame, ``<token>_bev.png`` and ``<token>_cameras.png`` in
    ``out_dir``, with the frame's GT boxes when it has them (and, with ``points``, the LiDAR
    points in the camera picture); returns their paths."""
    out = Path(out_dir)
    stem = frame.token or "frame"
    common = {"gt": frame.gt, "score_threshold": score_threshold, "max_boxes": max_boxes}
    return [render_bev(frame, detections, out / f"{stem}_bev.png", extent=extent, **common),
            render_cameras(frame, detections, out / f"{stem}_cameras.png", points=points,
                           **common)]
