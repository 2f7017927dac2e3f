"""Bird's-eye-view picture of a frame: LiDAR points, predicted boxes and GT boxes, as a PNG.

Drawn with matplotlib's object API on an Agg canvas (no ``pyplot`` global state), so it works
headless and from worker threads. The view is the LiDAR frame seen from above: +x to the right,
+y up. Points are grey, brighter with height (−4…3 m: the ground under a roof-mounted LiDAR,
about −1.8 m, is dark), so the class colours of the boxes stand out. Each predicted box is its
footprint in its class colour with a line from the centre to the front edge (the heading); GT
boxes are dashed white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.frame import Detections, Frame, GroundTruth
from bevdeploy.io import atomic_file
from bevdeploy.viz.style import GT_COLOR, boxes_to_draw, class_color, to_unit

BACKGROUND = "black"
MIN_EXTENT_M = 10.0


def _extent(points: np.ndarray, boxes: list[np.ndarray]) -> float:
    """Half-width of a square view holding 99.5 % of the points and every box centre."""
    reach = [MIN_EXTENT_M]
    if len(points):
        reach.append(float(np.percentile(np.abs(points[:, :2]), 99.5)))
    reach += [float(np.abs(b[:, :2]).max()) + 2.0 for b in boxes if len(b)]
    return max(reach)


def _draw_boxes(ax, boxes: np.ndarray, colors: list[tuple[float, float, float]],
                linestyle: str) -> None:
    for corners, box, color in zip(box_corners(boxes), boxes, colors):
        ax.add_patch(Polygon(corners[:4, :2], closed=True, fill=False, edgecolor=color,
                             linewidth=2.0, linestyle=linestyle))
        front = corners[[0, 1], :2].mean(axis=0)
        ax.add_line(Line2D([box[0], front[0]], [box[1], front[1]], color=color, linewidth=2.0,
                           linestyle=linestyle))


def render_bev(frame: Frame, detections: Detections, path: str | Path, *,
               gt: GroundTruth | None = None, score_threshold: float = 0.0,
               max_boxes: int = 100, extent: float | None = None, size_px: int = 800) -> Path:
    """Write a top-down PNG of ``frame``'s points with ``detections`` (and ``gt`` if given).

    Only the ``max_boxes`` best detections scoring at least ``score_threshold`` are drawn.
    ``extent`` is the half-width of the square view in metres (default: fitted to the data).
    Returns the path written.
    """
    shown = boxes_to_draw(detections, score_threshold, max_boxes)
    gt_boxes = gt.boxes if gt is not None else np.zeros((0, 9), dtype=np.float32)
    half = extent if extent is not None else _extent(frame.points, [shown.boxes, gt_boxes])

    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi, facecolor=BACKGROUND)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0), facecolor=BACKGROUND)
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.set_aspect("equal")
    ax.set_axis_off()
    pts = frame.points
    if len(pts):
        ax.scatter(pts[:, 0], pts[:, 1], c=pts[:, 2], s=1.0, cmap="gray", vmin=-4.0,
                   vmax=3.0, linewidths=0, rasterized=True)
    _draw_boxes(ax, gt_boxes, [to_unit(GT_COLOR)] * len(gt_boxes), "--")
    _draw_boxes(ax, shown.boxes, [to_unit(class_color(lbl)) for lbl in shown.labels], "-")
    ax.plot([0.0], [0.0], marker="^", color="red", markersize=8)  # the sensor
    ax.text(0.01, 0.99, f"{frame.token or 'frame'}: {len(shown)} boxes"
            + (f", {len(gt_boxes)} GT (dashed)" if gt is not None else ""),
            transform=ax.transAxes, va="top", ha="left", color="white", fontsize=9)
    labels = sorted(set(shown.labels.tolist()))
    if labels:
        handles = [Line2D([], [], color=to_unit(class_color(lbl)), linewidth=2.0,
                          label=shown.class_names[lbl]) for lbl in labels]
        ax.legend(handles=handles, loc="lower left", fontsize=8, frameon=False,
                  labelcolor="white")
    out = Path(path)
    with atomic_file(out) as handle:
        fig.savefig(handle, format="png", facecolor=BACKGROUND)
    return out
