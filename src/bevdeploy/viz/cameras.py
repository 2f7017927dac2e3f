"""The camera images of a frame with the 3D boxes projected into them, tiled into one PNG.

Boxes are projected with the frame's own ``lidar2image`` (the raw-image intrinsics), so what
the picture shows is where the boxes sit in the sensor images, independent of the network's
resize and crop. Edges that cross the camera plane are clipped at a near plane before the
perspective division, so a box beside or behind the camera never smears across the image.

The LiDAR points are projected too (``points=True``), coloured by camera depth (``turbo``,
near red to far blue, up to ``DEPTH_MAX_M``): if the calibration is right they lie on the
objects and the ground in the image; a wrong extrinsic shows at once as points beside the
objects. A strip under the tiles carries the title (the boxes drawn and the threshold they
passed, ``style.picture_title``, also the PNG's ``Title``) and the legend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.frame import Detections, Frame, GroundTruth
from bevdeploy.data.preprocess import lidar2image
from bevdeploy.io import atomic_file
from bevdeploy.viz.style import GT_COLOR, boxes_to_draw, class_color, picture_title

NEAR_M = 0.1  # clip plane in front of the camera (metres of camera depth)
DEPTH_MAX_M = 60.0  # the far end of the points' colour scale
STRIP_PX = 22  # height of the title and legend strip under the tiles

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


def project_points(points: np.ndarray, lidar_to_image: np.ndarray, width: int,
                   height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(M, 2)`` and camera depths ``(M,)`` of the points (LiDAR frame)
    that land in a ``width`` × ``height`` image in front of the camera."""
    homog = points[:, :3].astype(np.float64) @ lidar_to_image[:3, :3].T + lidar_to_image[:3, 3]
    depth = homog[:, 2]
    front = depth > NEAR_M
    uv = homog[front, :2] / depth[front, None]
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    return uv[inside], depth[front][inside]


def key_sweep(points: np.ndarray) -> np.ndarray:
    """The points of the key sweep alone (time lag 0 in column 4 when there is one): earlier
    sweeps were taken from other poses and would smear over moving objects."""
    return points[points[:, 4] == 0] if points.shape[1] >= 5 else points


def _paint_points(tile: Image.Image, uv: np.ndarray, depth: np.ndarray) -> Image.Image:
    """The points as 2×2-pixel dots coloured by depth (one pixel vanishes in a mosaic tile),
    far ones first so near ones stay on top."""
    pixels = np.asarray(tile).copy()
    order = np.argsort(-depth)
    colors = (colormaps["turbo_r"](np.clip(depth[order] / DEPTH_MAX_M, 0.0, 1.0))[:, :3]
              * 255).astype(np.uint8)
    h, w = pixels.shape[:2]
    u, v = uv[order, 0].astype(np.int64), uv[order, 1].astype(np.int64)
    for du in (0, 1):
        for dv in (0, 1):
            pixels[np.minimum(v + dv, h - 1), np.minimum(u + du, w - 1)] = colors
    return Image.fromarray(pixels)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans from matplotlib (PIL's default bitmap font has no ≥)."""
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default()


def _legend(draw: ImageDraw.ImageDraw, top: int, title: str, points: bool) -> None:
    draw.font = _font(12)
    draw.text((6, top + 4), title, fill=(255, 255, 255))
    x = 6 + int(draw.textlength(title)) + 24
    draw.line([(x, top + 11), (x + 18, top + 11)], fill=class_color(0), width=2)
    draw.text((x + 22, top + 4), "predictions (class colour)", fill=(255, 255, 255))
    x += 22 + int(draw.textlength("predictions (class colour)")) + 16
    draw.line([(x, top + 11), (x + 18, top + 11)], fill=GT_COLOR, width=2)
    draw.text((x + 22, top + 4), "ground truth", fill=(255, 255, 255))
    if points:
        x += 22 + int(draw.textlength("ground truth")) + 16
        draw.text((x, top + 4), "LiDAR depth 0 m", fill=(255, 255, 255))
        x += int(draw.textlength("LiDAR depth 0 m")) + 4
        ramp = (colormaps["turbo_r"](np.linspace(0, 1, 80))[:, :3] * 255).astype(int)
        for i, (r, g, b) in enumerate(ramp):
            draw.line([(x + i, top + 6), (x + i, top + 16)], fill=(r, g, b))
        draw.text((x + 84, top + 4), f"{DEPTH_MAX_M:.0f} m", fill=(255, 255, 255))


def render_cameras(frame: Frame, detections: Detections, path: str | Path, *,
                   gt: GroundTruth | None = None, score_threshold: float | None = 0.0,
                   max_boxes: int = 100, tile_width: int = 480, columns: int = 3,
                   points: bool = True) -> Path:
    """Write the frame's N camera images, each ``tile_width`` pixels wide, in a grid of
    ``columns`` with the detections (class colours), ``gt`` (white) and, with ``points``,
    the LiDAR points coloured by depth drawn in.

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
    canvas = Image.new("RGB", (columns * tile_width, rows * tile_h + STRIP_PX))
    for cam in range(n):
        tile = Image.fromarray(frame.images[cam]).resize((tile_width, tile_h), Image.BILINEAR)
        if points and len(frame.points):
            uv, depth = project_points(key_sweep(frame.points), projections[cam], w0, h0)
            tile = _paint_points(tile, uv * scale, depth)
        draw = ImageDraw.Draw(tile)
        for corners, color in boxes:
            for u0, v0, u1, v1 in project_edges(corners, projections[cam]):
                draw.line([(u0 * scale, v0 * scale), (u1 * scale, v1 * scale)], fill=color,
                          width=2)
        draw.text((6, 4), frame.calib.camera_names[cam], fill=(255, 255, 0))
        canvas.paste(tile, ((cam % columns) * tile_width, (cam // columns) * tile_h))
    title = picture_title(frame.token, len(shown), score_threshold,
                          None if gt is None else len(gt.boxes))
    _legend(ImageDraw.Draw(canvas), rows * tile_h, title, points and len(frame.points) > 0)
    info = PngInfo()
    info.add_text("Title", title)
    out = Path(path)
    with atomic_file(out) as handle:
        canvas.save(handle, format="PNG", pnginfo=info)
    return out
