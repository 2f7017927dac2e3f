"""Camera renderer: shaded, mutually occluding boxes over a ground-and-sky background.

Rendering is an exact per-pixel z-buffer rather than a painter's sort, because a sort by
distance gets long vehicles next to small objects wrong, and the visibility levels written to
``sample_annotation`` are measured from these renders. For each box, the faces turned toward the
camera are clipped against a near plane, projected, and rasterised in numpy over their pixel
bounding box; inverse depth is affine in (u, v) on a planar face, so the depth test is exact.
Pixel (row v, column u) samples the image point (u, v) of the pinhole model, the convention of
nuScenes intrinsics and of ``bevdeploy.data.preprocess.lidar2image``.

The background depends only on the camera (the ground is the plane z = 0),
so ``background_image`` tells exactly what a pixel looks like where no object is in view, before
JPEG compression (which moves flat colours by a few levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.synthetic.rig import CameraSpec, camera, yaw_matrix

NEAR_PLANE = 0.1  # metres in front of the camera
AMBIENT = 0.45  # share of a face's colour lit without the sun

# Background palette (RGB): asphalt near the car fading into haze at the horizon, sky from haze
# to a deeper blue overhead.
_GROUND_NEAR = np.array([88.0, 90.0, 96.0])
_HAZE = np.array([186.0, 196.0, 206.0])
_SKY_ZENITH = np.array([92.0, 142.0, 214.0])
_HAZE_DISTANCE = 70.0  # metres over which the ground fades into haze (1 − 1/e)

# Faces of ``bevdeploy.data.boxes.box_corners``: corner indices, and the outward normal in the
# box frame (x along the heading, y to its left).
_FACES = (
    ((0, 1, 5, 4), (1.0, 0.0, 0.0)),  # front
    ((2, 3, 7, 6), (-1.0, 0.0, 0.0)),  # rear
    ((3, 0, 4, 7), (0.0, 1.0, 0.0)),  # left
    ((1, 2, 6, 5), (0.0, -1.0, 0.0)),  # right
    ((4, 5, 6, 7), (0.0, 0.0, 1.0)),  # top
    ((0, 3, 2, 1), (0.0, 0.0, -1.0)),  # bottom
)


@lru_cache(maxsize=None)
def _background(cam: CameraSpec) -> np.ndarray:
    """Sky and ground as the camera at its mounting height sees them."""
    return _level_background(cam) if cam.level else _mounted_background(cam)


def _level_background(cam: CameraSpec) -> np.ndarray:
    """The background of a level camera: the horizon is an image row."""
    # Ray of each pixel in camera coordinates (x right, y down, z forward) is (x, y, 1); the
    # camera is level, so y is straight down and rows with y > 0 (below v = cy) see the ground.
    x = ((np.arange(cam.width) - cam.principal[0]) / cam.focal)[None, :]
    y = ((np.arange(cam.height) - cam.principal[1]) / cam.focal)[:, None]
    horizontal = np.sqrt(x * x + 1.0)  # (1, W)
    horizon = int(np.count_nonzero(y <= 0))  # first ground row
    sky_y, ground_y = y[:horizon], y[horizon:]
    fog = 1.0 - np.exp(-cam.translation[2] * horizontal / ground_y / _HAZE_DISTANCE)
    blend = np.clip(np.arctan2(-sky_y, horizontal) / 0.6, 0.0, 1.0)
    image = np.empty((cam.height, cam.width, 3), dtype=np.uint8)
    for ch in range(3):
        image[:horizon, :, ch] = np.round(_HAZE[ch] + (_SKY_ZENITH[ch] - _HAZE[ch]) * blend)
        image[horizon:, :, ch] = np.round(_GROUND_NEAR[ch] + (_HAZE[ch] - _GROUND_NEAR[ch]) * fog)
    image.setflags(write=False)
    return image


def _mounted_background(cam: CameraSpec) -> np.ndarray:
    """The background of a camera mounted with any rotation: the same sky and ground colours
    as ``_level_background`` (which this equals for a level camera, up to rounding), computed
    per pixel from its ray in the ego frame."""
    k = cam.intrinsics
    u = (np.arange(cam.width) - k[0, 2]) / k[0, 0]
    v = (np.arange(cam.height) - k[1, 2]) / k[1, 1]
    rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], 1.0), axis=-1) @ cam.rotation.T
    horizontal = np.hypot(rays[..., 0], rays[..., 1])
    down = -rays[..., 2]
    ground = down > 0
    fog = 1.0 - np.exp(-cam.translation[2] * horizontal / np.where(ground, down, 1.0)
                       / _HAZE_DISTANCE)
    blend = np.clip(np.arctan2(-down, horizontal) / 0.6, 0.0, 1.0)
    sky = _HAZE + (_SKY_ZENITH - _HAZE) * blend[..., None]
    floor = _GROUND_NEAR + (_HAZE - _GROUND_NEAR) * fog[..., None]
    image = np.round(np.where(ground[..., None], floor, sky)).astype(np.uint8)
    image.setflags(write=False)
    return image


def _spec(cam: str | CameraSpec) -> CameraSpec:
    return cam if isinstance(cam, CameraSpec) else camera(cam)


def background_image(cam: str | CameraSpec) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a camera (rig name or spec) with no object in view; read-only and
    cached."""
    return _background(_spec(cam))


def background_color(cam: str | CameraSpec, u: ArrayLike, v: ArrayLike) -> np.ndarray:
    """RGB uint8 (shape ``u.shape + (3,)``) of a camera's background at integer pixel column
    ``u`` and row ``v``: what its image shows there when no object is in front."""
    image = background_image(cam)
    return image[np.asarray(v, dtype=np.int64), np.asarray(u, dtype=np.int64)]


@dataclass(frozen=True)
class Render:
    """One rendered view."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    ids: np.ndarray  # (H, W) int32: index of the box seen at each pixel, −1 for background
    silhouette: np.ndarray  # (K,) pixels each box would cover in this image were it unoccluded

    def visible_pixels(self) -> np.ndarray:
        """(K,) pixels of each box that are actually seen."""
        seen = self.ids[self.ids >= 0]
        return np.bincount(seen, minlength=len(self.silhouette))


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland–Hodgman clip of a convex 3D polygon (n, 3) against z ≥ NEAR_PLANE."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        a_in, b_in = a[2] >= NEAR_PLANE, b[2] >= NEAR_PLANE
        if a_in:
            out.append(a)
        if a_in != b_in:
            f = (NEAR_PLANE - a[2]) / (b[2] - a[2])
            out.append(a + f * (b - a))
    return np.array(out).reshape(-1, 3)


def _rasterize(poly_uv: np.ndarray, width: int, height: int
               ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Pixels whose centres lie inside a convex polygon (n, 2): (row/col slices of its
    bounding box, boolean mask over that box), or None when it covers no pixel."""
    u0 = max(int(np.ceil(poly_uv[:, 0].min())), 0)
    u1 = min(int(np.floor(poly_uv[:, 0].max())), width - 1)
    v0 = max(int(np.ceil(poly_uv[:, 1].min())), 0)
    v1 = min(int(np.floor(poly_uv[:, 1].max())), height - 1)
    if u0 > u1 or v0 > v1:
        return None
    u = np.arange(u0, u1 + 1, dtype=np.float64)[None, :]
    v = np.arange(v0, v1 + 1, dtype=np.float64)[:, None]
    area2 = np.sum(poly_uv[:, 0] * np.roll(poly_uv[:, 1], -1) - np.roll(poly_uv[:, 0], -1)
                   * poly_uv[:, 1])
    if abs(area2) < 1e-9:
        return None
    sign = np.sign(area2)
    mask = np.ones((v1 - v0 + 1, u1 - u0 + 1), dtype=bool)
    for a, b in zip(poly_uv, np.roll(poly_uv, -1, axis=0)):
        mask &= sign * ((b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0])) >= 0
    return (slice(v0, v1 + 1), slice(u0, u1 + 1)), mask


def render(cam: CameraSpec, camera2global: np.ndarray, bodies: np.ndarray, colours: np.ndarray,
           sun: np.ndarray) -> Render:
    """Render boxes ``bodies`` (K, 7) ``[x, y, z, l, w, h, yaw]`` (global frame, z = centre) with
    face colours ``colours`` (K, 3) as seen by ``cam`` at pose ``camera2global``.

    A face is lit by ``AMBIENT + (1 − AMBIENT)·max(0, n·sun)``.
    """
    global2camera = np.linalg.inv(camera2global)
    rot, trans = global2camera[:3, :3], global2camera[:3, 3]
    k = cam.intrinsics
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    image = background_image(cam).copy()
    inv_depth = np.zeros((cam.height, cam.width))  # 0 = infinitely far
    ids = np.full((cam.height, cam.width), -1, dtype=np.int32)
    silhouette = np.zeros(len(bodies), dtype=np.int64)
    corners = box_corners(np.concatenate([bodies, np.zeros((len(bodies), 2))], axis=1))
    corners_cam = corners @ rot.T + trans
    for i, body in enumerate(bodies):
        if not _may_be_in_view(corners_cam[i], cam):
            continue
        box_rot = yaw_matrix(body[6])
        covered: list[tuple[tuple[slice, slice], np.ndarray]] = []
        for face, normal_box in _FACES:
            normal_global = box_rot @ np.asarray(normal_box)
            normal = rot @ normal_global
            poly = corners_cam[i, list(face)]
            offset = float(normal @ poly[0])  # plane: normal · X = offset; < 0 faces the camera
            if offset >= 0:
                continue
            poly = _clip_near(poly)
            if len(poly) < 3:
                continue
            uv = np.stack([fx * poly[:, 0] / poly[:, 2] + cx, fy * poly[:, 1] / poly[:, 2] + cy], 1)
            raster = _rasterize(uv, cam.width, cam.height)
            if raster is None:
                continue
            (rows, cols), mask = raster
            # 1/z on the face's plane is affine in the pixel coordinates.
            u = np.arange(cols.start, cols.stop, dtype=np.float64)[None, :]
            v = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None]
            inv_z = (normal[0] * (u - cx) / fx + normal[1] * (v - cy) / fy + normal[2]) / offset
            depth_view = inv_depth[rows, cols]  # views: assignments below write through
            win = mask & (inv_z > depth_view)
            shade = AMBIENT + (1.0 - AMBIENT) * max(0.0, float(normal_global @ sun))
            depth_view[win] = inv_z[win]
            ids[rows, cols][win] = i
            image[rows, cols][win] = np.round(np.clip(colours[i] * shade, 0, 255))
            covered.append(((rows, cols), mask))
        silhouette[i] = _union_area(covered)
    return Render(image=image, ids=ids, silhouette=silhouette)


def _may_be_in_view(corners: np.ndarray, cam: CameraSpec) -> bool:
    """False when a box (8 corners, camera frame) is certainly outside the view: wholly behind
    the near plane, or wholly in front of it and off one side of the image."""
    z = corners[:, 2]
    if (z < NEAR_PLANE).all():
        return False
    if (z < NEAR_PLANE).any():
        return True
    k = cam.intrinsics
    u = k[0, 0] * corners[:, 0] / z + k[0, 2]
    v = k[1, 1] * corners[:, 1] / z + k[1, 2]
    return not ((u < 0).all() or (u > cam.width - 1).all() or (v < 0).all()
                or (v > cam.height - 1).all())


def _union_area(pieces: list[tuple[tuple[slice, slice], np.ndarray]]) -> int:
    """Pixels covered by the union of masks given over their own bounding boxes."""
    if not pieces:
        return 0
    r0 = min(p[0][0].start for p in pieces)
    r1 = max(p[0][0].stop for p in pieces)
    c0 = min(p[0][1].start for p in pieces)
    c1 = max(p[0][1].stop for p in pieces)
    union = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for (rows, cols), mask in pieces:
        union[rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0] |= mask
    return int(union.sum())
