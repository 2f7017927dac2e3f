"""Bird's-eye-view picture of a frame: LiDAR points, predicted boxes and GT boxes, as a PNG.

Drawn with matplotlib's object API on an Agg canvas (no ``pyplot`` global state), so it works
headless and from worker threads. The view is the LiDAR frame seen from above: +x to the right,
+y up. Points are grey, brighter with height (−4…3 m: the ground under a roof-mounted LiDAR,
about −1.8 m, is dark), so the class colours of the boxes stand out. Each predicted box is its
footprint in its class colour with a line from the centre to the front edge (the heading) and
its score beside it; GT boxes are dashed white. Range rings every ``ring_step`` metres give the
scale; the title names the threshold the boxes passed (``style.picture_title``), also stored
as the PNG's ``Title`` so a test or a script can read it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Polygon

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.frame import Detections, Frame, GroundTruth
from bevdeploy.io import atomic_file
from bevdeploy.viz.style import GT_COLOR, boxes_to_draw, class_color, picture_title, to_unit

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


def _ring_step(half: float) -> float:
    """A round ring spacing giving three to six rings over the view's half-width."""
    return next(step for step in (5.0, 10.0, 20.0, 50.0, 100.0, 200.0) if half / step <= 6)


def _draw_rings(ax, half: float) -> None:
    step = _ring_step(half)
    for k in range(1, int(half * 1.42 // step) + 1):
        ax.add_patch(Circle((0.0, 0.0), k * step, fill=False, edgecolor=(0.35, 0.35, 0.35),
                            linewidth=0.6, linestyle=":"))
        if k * step < half:
            ax.text(k * step * 0.7071, k * step * 0.7071, f"{k * step:.0f} m", fontsize=7,
                    color=(0.6, 0.6, 0.6), ha="left", va="bottom")


def render_bev(frame: Frame, detections: Detections, path: str | Path, *,
               gt: GroundTruth | None = None, score_threshold: float | None = 0.0,
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
    _draw_rings(ax, half)
    _draw_boxes(ax, gt_boxes, [to_unit(GT_COLOR)] * len(gt_boxes), "--")
    _draw_boxes(ax, shown.boxes, [to_unit(class_color(lbl)) for lbl in shown.labels], "-")
    for box, score, lbl in zip(shown.boxes, shown.scores, shown.labels):
        ax.text(box[0] + 0.6 * max(box[3], box[4]), box[1], f"{score:.2f}", fontsize=7,
                color=to_unit(class_color(lbl)), va="center", clip_on=True)
    ax.plot([0.0], [0.0], marker="^", color="red", markersize=8)  # the sensor
    title = picture_title(frame.token, len(shown), score_threshold,
                          None if gt is None else len(gt_boxes))
    ax.text(0.01, 0.99, title, transform=ax.transAxes, va="top", ha="left", color="white",
            fontsize=9)
    handles = [Line2D([], [], color=to_unit(class_color(lbl)), linewidth=2.0,
                      label=shown.class_names[lbl]) for lbl in sorted(set(shown.labels.tolist()))]
    if gt is not None:
        handles.append(Line2D([], [], color=to_unit(GT_COLOR), linewidth=2.0, linestyle="--",
                              label="ground truth"))
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize=8, frameon=False,
                  labelcolor="white")
    out = Path(path)
    with atomic_file(out) as handle:
        fig.savefig(handle, format="png", facecolor=BACKGROUND, metadata={"Title": title})
    return out
