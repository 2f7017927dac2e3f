"""The camera images of a frame with the 3D boxes projected into them, tiled into one PNG.

Boxes are projected with the frame's own ``lidar2image`` (the raw-image intrinsics), so what
the picture shows is where the boxes sit in the sensor images, independent of the network's
resize and crop. Edges that cross the camera plane are clipped at a near plane before the
perspective division, so a box beside or behind the camera never smears across the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.frame import Detections, Frame, GroundTruth
from bevdeploy.data.preprocess import lidar2image
from bevdeploy.io import atomic_file
from bevdeploy.viz.style import GT_COLOR, boxes_to_draw, class_color

NEAR_M = 0.1  # clip plane in front of the camera (metres of camera depth)

# The 12 edges of ``box_corners``' 8 corners: bottom face, top face, verticals.
EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7))


def project_edges(corners: np.ndarray, lidar_to_image: np.ndarray) -> list[tuple[float, ...]]:
    """Pixel segments ``(u0, v0, u1, v1)`` of one box's edges in one camera.

    ``corners`` (8, 3) LiDAR frame; ``lidar_to_image`` 4×4 maps to ``(u·z, v·z, z, 1)``. That
    map is linear, so an edge is clipped to ``z ≥ NEAR_M`` on the homogeneous coordinates and
    only then divided by z.
    """
    homog = np.concatenate([corners, np.ones((8, 1))], axis=1) @ lidar_to_image.T
    segments = []
    for i, j in EDGES:
        a, b = homog[i, :3], homog[j, :3]
        if a[2] < NEAR_M and b[2] < NEAR_M:
            continue
        if a[2] < NEAR_M or b[2] < NEAR_M:
            t = (NEAR_M - a[2]) / (b[2] - a[2])
            clipped = a + t * (b - a)
            a, b = (clipped, b) if a[2] < NEAR_M else (a, clipped)
        segments.append((a[0] / a[2], a[1] / a[2], b[0] / b[2], b[1] / b[2]))
    return segments


def render_cameras(frame: Frame, detections: Detections, path: str | Path, *,
                   gt: GroundTruth | None = None, score_threshold: float = 0.0,
                   max_boxes: int = 100, tile_width: int = 480, columns: int = 3) -> Path:
    """Write the frame's N camera images, each ``tile_width`` pixels wide, in a grid of
    ``columns`` with the detections (class colours) and ``gt`` (white) drawn in.

    Only the ``max_boxes`` best detections scoring at least ``score_threshold`` are drawn.
    Returns the path written.
    """
    shown = boxes_to_draw(detections, score_threshold, max_boxes)
    boxes = [(c, class_color(lbl)) for c, lbl in zip(box_corners(shown.boxes), shown.labels)]
    if gt is not None:
        boxes += [(c, GT_COLOR) for c in box_corners(gt.boxes)]
    projections = lidar2image(frame.calib).astype(np.float64)

    n, h0, w0 = frame.images.shape[:3]
    scale = tile_width / w0
    tile_h = round(h0 * scale)
    rows = -(-n // columns)
    canvas = Image.new("RGB", (columns * tile_width, rows * tile_h))
    for cam in range(n):
        tile = Image.fromarray(frame.images[cam]).resize((tile_width, tile_h), Image.BILINEAR)
        draw = ImageDraw.Draw(tile)
        for corners, color in boxes:
            for u0, v0, u1, v1 in project_edges(corners, projections[cam]):
                draw.line([(u0 * scale, v0 * scale), (u1 * scale, v1 * scale)], fill=color,
                          width=2)
        draw.text((6, 4), frame.calib.camera_names[cam], fill=(255, 255, 0))
        canvas.paste(tile, ((cam % columns) * tile_width, (cam // columns) * tile_h))
    out = Path(path)
    with atomic_file(out) as handle:
        canvas.save(handle, format="PNG")
    return out
