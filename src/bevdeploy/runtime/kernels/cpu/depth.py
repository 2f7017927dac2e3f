"""The sparse LiDAR depth image on the CPU: every point projected into every camera.

Semantics of the reference's ``depth_map`` (docs/reference.md#sparse-depth-image,
``DepthLSSTransform.depth_map``): camera z from the third row of ``lidar2image``, clamped to [1e-5,
1e5] and stored as the depth; (u, v) divided by the clamped z; the image augmentation applied to
(u, v, z); the point kept when ``0 ≤ u' < W`` and ``0 ≤ v' < H`` (float test) and written at
``(trunc v', trunc u')``. Where several points hit one pixel, the point latest in point order
wins — the rule the reference fixes, where CUDA-BEVFusion's kernel has a write race
(docs/reference.md#depth-kernel). The LiDAR augmentation is the identity at test time and is not
applied.

The projection runs in float64. Which pixel a point lands on is a truncation, so a float32
evaluation flips a point to the neighbouring pixel whenever rounding crosses a pixel edge, and
where that happens depends on the BLAS build's operation order; float64 makes the kernel agree
with the reference evaluated on float64 matrices pixel for pixel, on every machine.
Threads split the work by camera: each owns its image, so the tie rule needs no atomics. Per
camera, a branch-free (vectorised) pass finds every point's pixel, and a second pass in point
order writes them, so the tie rule holds by construction.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import ArrayLike

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import as_array, check_projection, source

_KERNEL = "depth_map"
_MIN_DEPTH = 1e-5
_MAX_DEPTH = 1e5


@numba.njit(parallel=True, cache=True, nogil=True)
def _depth_map(xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, lidar2image: np.ndarray,
               img_aug: np.ndarray, height: int, width: int, out: np.ndarray) -> None:
    num_points = xs.shape[0]
    for n in numba.prange(lidar2image.shape[0]):
        m, a = lidar2image[n], img_aug[n]
        m00, m01, m02, m03 = m[0, 0], m[0, 1], m[0, 2], m[0, 3]
        m10, m11, m12, m13 = m[1, 0], m[1, 1], m[1, 2], m[1, 3]
        m20, m21, m22, m23 = m[2, 0], m[2, 1], m[2, 2], m[2, 3]
        a00, a01, a02, a03 = a[0, 0], a[0, 1], a[0, 2], a[0, 3]
        a10, a11, a12, a13 = a[1, 0], a[1, 1], a[1, 2], a[1, 3]
        # Pass 1, branch-free so that it vectorises: the pixel of every point, or −1.
        pixel = np.empty(num_points, dtype=np.int64)
        value = np.empty(num_points, dtype=np.float32)
        for i in range(num_points):
            x, y, z = xs[i], ys[i], zs[i]
            depth = m20 * x + m21 * y + m22 * z + m23
            # the clamp; a NaN depth (non-finite point) becomes 1e-5, its u, v stay NaN and
            # fail the on-image test, so such a point is dropped as by the reference
            depth = depth if depth > _MIN_DEPTH else _MIN_DEPTH
            depth = depth if depth < _MAX_DEPTH else _MAX_DEPTH
            u = (m00 * x + m01 * y + m02 * z + m03) / depth
            v = (m10 * x + m11 * y + m12 * z + m13) / depth
            col = a00 * u + a01 * v + a02 * depth + a03
            row = a10 * u + a11 * v + a12 * depth + a13
            on_image = (col >= 0.0) & (col < width) & (row >= 0.0) & (row < height)
            col = col if on_image else 0.0  # keep the int conversion below defined
            row = row if on_image else 0.0
            pixel[i] = np.int64(row) * width + np.int64(col) if on_image else -1
            value[i] = np.float32(depth)
        # Pass 2, in point order: the latest point on a pixel overwrites the earlier ones.
        image = out[n].reshape(-1)
        for i in range(num_points):
            if pixel[i] >= 0:
                image[pixel[i]] = value[i]


def depth_map(points: ArrayLike, lidar2image: ArrayLike, img_aug: ArrayLike,
              image_size: tuple[int, int]) -> np.ndarray:
    """(N, 1, H, W) float32 metric camera depth at the pixels the points project to, else 0.

    Args:
        points: (P, F) with x, y, z in columns 0..2 (P = 0 gives an all-zero image).
        lidar2image: (N, 4, 4) homogeneous LiDAR point → (u·z, v·z, z) in raw-image pixels.
        img_aug: (N, 4, 4) raw-image pixel → network-image pixel, one per camera.
        image_size: (H, W) of the network image.
    """
    pts = as_array(points, _KERNEL, "points", np.float32, (None, None))
    if pts.shape[1] < 3:
        raise InputError(f"expected (P, F >= 3) points, got {pts.shape}", path=source(_KERNEL),
                         field="points")
    l2i, aug, (height, width) = check_projection(lidar2image, img_aug, image_size)
    n = l2i.shape[0]
    out = np.zeros((n, 1, height, width), dtype=np.float32)
    xs, ys, zs = (pts[:, axis].astype(np.float64) for axis in range(3))
    _depth_map(xs, ys, zs, l2i, aug, height, width, out)
    return out
