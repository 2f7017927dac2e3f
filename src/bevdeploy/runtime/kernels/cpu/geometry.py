"""Frustum geometry on the CPU: the calibration → a ``BevPoolPlan`` (computed once per rig).

Every frustum point (camera n, depth bin d, feature row h, column w) is placed in the LiDAR
frame exactly as the reference's ``get_geometry`` does
(docs/reference.md#frustum, #camera-geometry): undo the image augmentation, scale (u, v) by the
depth, apply ``R·K⁻¹`` and ``t`` of ``camera2lidar``, then the LiDAR augmentation. Its BEV cell is
``(p − (bx − dx/2)) / dx`` truncated toward zero, with ``bx`` and ``dx`` rounded to float32 as the
reference stores them, and it is kept when the cell lies inside the grid on all three axes.

The plan differs from CUDA-BEVFusion's ``Geometry::update`` (docs/reference.md#geometry-precompute)
on every latent issue listed there: dropped points are *excluded* from ``indices`` (no rank-0
sentinel shared with cell (0, 0, 0)), each camera keeps its own ``img_aug``, the flat cell uses the
y extent as the row stride (rectangular grids work), the last interval ends at the last kept
point, and the interval arrays hold one entry per occupied cell.

The positions are computed in float64: the cell is a truncation, so float32 rounding moves the
points that lie within an ulp of a cell face to the neighbouring cell, at places that depend on
the BLAS build. The frustum itself is float32, the reference's ``linspace`` values rounded
once (torch's vectorised float32 ``linspace`` may differ from them by an ulp).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from numpy.typing import ArrayLike

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import cell_count, check_calibration, positive_ints, source

_KERNEL = "geometry"


@dataclass(frozen=True, eq=False)
class BevPoolPlan:
    """Which frustum points pool into which BEV cell, grouped by cell.

    ``indices[interval_starts[i]:interval_ends[i]]`` are the flat frustum indices (order
    ``(n, d, h, w)``, the layout of the depth weights) of the points in cell ``cells[i]``, in
    frustum order. ``cells[i] = (z·nx + x)·ny + y`` indexes the ``(nz, nx, ny)`` grid; channel
    c of that cell is written to output channel ``z·C + c`` (the reference's channel order),
    row x, column y. Cells are increasing and unique; dropped points appear nowhere.
    """

    indices: np.ndarray  # (num_points,) int32
    interval_starts: np.ndarray  # (num_intervals,) int32
    interval_ends: np.ndarray  # (num_intervals,) int32, exclusive
    cells: np.ndarray  # (num_intervals,) int64
    bev_size: tuple[int, int, int]  # (nx, ny, nz)
    frustum_shape: tuple[int, int, int, int]  # (N, D, h, w): the depth weights it pools

    def __post_init__(self) -> None:
        """Check the invariants ``bev_pool`` relies on: its compiled loop reads memory at these
        indices without bounds checks, so a plan built or loaded elsewhere must not be able to
        make it read out of bounds or write one cell from two threads."""
        def fail(field: str, message: str) -> InputError:
            return InputError(message, path=source("bev_pool"), field=f"plan.{field}")

        for name, dtype in (("indices", np.int32), ("interval_starts", np.int32),
                            ("interval_ends", np.int32), ("cells", np.int64)):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != 1 \
                    or not value.flags.c_contiguous:
                raise fail(name, f"expected a contiguous 1-D {np.dtype(dtype).name} array")
        starts, ends, cells = self.interval_starts, self.interval_ends, self.cells
        if not starts.shape == ends.shape == cells.shape:
            raise fail("cells", "interval_starts, interval_ends and cells differ in length")
        if starts.size and (starts.min() < 0 or np.any(ends < starts)
                            or ends.max() > self.indices.size):
            raise fail("interval_ends", "intervals must lie within indices")
        if self.indices.size and (self.indices.min() < 0
                                  or self.indices.max() >= np.prod(self.frustum_shape)):
            raise fail("indices", f"indices must lie in the {self.frustum_shape} frustum")
        if cells.size and (cells[0] < 0 or cells[-1] >= np.prod(self.bev_size)
                           or np.any(np.diff(cells) <= 0)):
            raise fail("cells", f"cells must strictly increase inside the {self.bev_size} grid")

    @property
    def num_points(self) -> int:
        """Frustum points that land inside the grid."""
        return int(self.indices.shape[0])

    @property
    def num_intervals(self) -> int:
        """Occupied BEV cells."""
        return int(self.cells.shape[0])


def frustum(image_size: tuple[int, int], feature_size: tuple[int, int],
            dbound: Sequence[float]) -> np.ndarray:
    """(D, h, w, 3) float32 ``(x_img, y_img, depth)`` of every frustum point.

    Feature cells sit on ``linspace(0, W − 1, w)`` × ``linspace(0, H − 1, h)`` of the network
    image (not on pixel centres) and depths on the lower edge of each bin,
    ``dbound[0] + k·dbound[2]`` in float32, as the reference's ``create_frustum``.
    """
    (ih, iw) = positive_ints(image_size, 2, _KERNEL, "image_size")
    (fh, fw) = positive_ints(feature_size, 2, _KERNEL, "feature_size")
    d = cell_count(dbound, _KERNEL, "dbound")
    depths = np.float32(dbound[0]) + np.float32(dbound[2]) * np.arange(d, dtype=np.float32)
    xs = np.linspace(0.0, iw - 1, fw).astype(np.float32)
    ys = np.linspace(0.0, ih - 1, fh).astype(np.float32)
    out = np.empty((d, fh, fw, 3), dtype=np.float32)
    out[..., 0] = xs[None, None, :]
    out[..., 1] = ys[None, :, None]
    out[..., 2] = depths[:, None, None]
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _frustum_cells(points: np.ndarray, aug_inv: np.ndarray, aug_t: np.ndarray,
                   cam_rot: np.ndarray, cam_t: np.ndarray, lidar_rot: np.ndarray,
                   lidar_t: np.ndarray, lower: np.ndarray, step: np.ndarray,
                   size: np.ndarray) -> np.ndarray:
    """Flat ``(z·nx + x)·ny + y`` cell of every frustum point of every camera, −1 if dropped."""
    per_camera = points.shape[0]
    num_cameras = aug_inv.shape[0]
    nx, ny, nz = size[0], size[1], size[2]
    cells = np.empty(num_cameras * per_camera, dtype=np.int64)
    for t in numba.prange(num_cameras * per_camera):
        n = t // per_camera
        r = t - n * per_camera
        # undo the image augmentation
        px = np.float64(points[r, 0]) - aug_t[n, 0]
        py = np.float64(points[r, 1]) - aug_t[n, 1]
        pd = np.float64(points[r, 2]) - aug_t[n, 2]
        a = aug_inv[n]
        qx = a[0, 0] * px + a[0, 1] * py + a[0, 2] * pd
        qy = a[1, 0] * px + a[1, 1] * py + a[1, 2] * pd
        qd = a[2, 0] * px + a[2, 1] * py + a[2, 2] * pd
        qx *= qd
        qy *= qd
        # camera → LiDAR, then the LiDAR augmentation
        c = cam_rot[n]
        gx = c[0, 0] * qx + c[0, 1] * qy + c[0, 2] * qd + cam_t[n, 0]
        gy = c[1, 0] * qx + c[1, 1] * qy + c[1, 2] * qd + cam_t[n, 1]
        gz = c[2, 0] * qx + c[2, 1] * qy + c[2, 2] * qd + cam_t[n, 2]
        fx = (lidar_rot[0, 0] * gx + lidar_rot[0, 1] * gy + lidar_rot[0, 2] * gz + lidar_t[0]
              - lower[0]) / step[0]
        fy = (lidar_rot[1, 0] * gx + lidar_rot[1, 1] * gy + lidar_rot[1, 2] * gz + lidar_t[1]
              - lower[1]) / step[1]
        fz = (lidar_rot[2, 0] * gx + lidar_rot[2, 1] * gy + lidar_rot[2, 2] * gz + lidar_t[2]
              - lower[2]) / step[2]
        # truncation toward zero keeps (−1, n) on every axis; NaN fails the test and is dropped
        if -1.0 < fx < nx and -1.0 < fy < ny and -1.0 < fz < nz:
            cells[t] = (np.int64(fz) * nx + np.int64(fx)) * ny + np.int64(fy)
        else:
            cells[t] = -1
    return cells


@numba.njit(cache=True, nogil=True)
def _group_by_cell(cells: np.ndarray, num_cells: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counting sort of the kept points by cell, stable (frustum order inside a cell): the
    sorted indices and, per occupied cell in increasing order, its interval and its cell.

    Linear in the points and cells, where a comparison sort of 2M keys takes a few hundred
    milliseconds: on nuScenes the camera → LiDAR transforms include the ego motion between
    the captures, so a new plan is needed for every frame.
    """
    counts = np.zeros(num_cells, dtype=np.int64)
    for cell in cells:
        if cell >= 0:
            counts[cell] += 1
    occupied = np.flatnonzero(counts)
    starts = np.empty(occupied.size, dtype=np.int32)
    ends = np.empty(occupied.size, dtype=np.int32)
    cursor = np.empty(num_cells, dtype=np.int64)  # next free slot of each occupied cell
    total = 0
    for i, cell in enumerate(occupied):
        starts[i] = total
        cursor[cell] = total
        total += counts[cell]
        ends[i] = total
    indices = np.empty(total, dtype=np.int32)
    for t, cell in enumerate(cells):
        if cell >= 0:
            indices[cursor[cell]] = t
            cursor[cell] += 1
    return indices, starts, ends, occupied.astype(np.int64)


def grid_constants(bounds: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """The reference's float32 ``dx`` and ``bx − dx/2`` (as float64 for the projection); the
    CUDA kernel uses the same constants."""
    dx = np.array([b[2] for b in bounds], dtype=np.float32)
    bx = np.array([b[0] + b[2] / 2.0 for b in bounds], dtype=np.float32)
    lower = bx - dx / np.float32(2.0)
    return lower.astype(np.float64), dx.astype(np.float64)


def inverse_3x3(matrices: np.ndarray, field: str) -> np.ndarray:
    """Batched 3×3 inverse; a singular matrix is an input error, not a LinAlgError."""
    try:
        return np.linalg.inv(matrices)
    except np.linalg.LinAlgError:
        raise InputError("a 3x3 block is singular", path=source(_KERNEL), field=field) from None


def geometry(camera2lidar: ArrayLike, intrinsics: ArrayLike, img_aug: ArrayLike,
             lidar_aug: ArrayLike, image_size: tuple[int, int], feature_size: tuple[int, int],
             dbound: Sequence[float], xbound: Sequence[float], ybound: Sequence[float],
             zbound: Sequence[float]) -> BevPoolPlan:
    """The BEV-pool plan of one calibration.

    Args:
        camera2lidar: (N, 4, 4) T_lidar←cam.
        intrinsics: (N, 3, 3) K in raw-image pixels.
        img_aug: (N, 4, 4) raw-image pixel → network-image pixel, one per camera.
        lidar_aug: (4, 4) LiDAR augmentation (the identity at test time).
        image_size, feature_size: (H, W) of the network image and of the feature map.
        dbound, xbound, ybound, zbound: ``[lo, hi, step]`` of the depth bins and the BEV grid.
    """
    c2l, k, aug, laug = check_calibration(camera2lidar, intrinsics, img_aug, lidar_aug)
    n = c2l.shape[0]
    size = np.array([cell_count(b, _KERNEL, name) for b, name in
                     ((xbound, "xbound"), (ybound, "ybound"), (zbound, "zbound"))],
                    dtype=np.int64)
    points = frustum(image_size, feature_size, dbound)
    d, fh, fw = points.shape[:3]
    if n * d * fh * fw > np.iinfo(np.int32).max:
        raise InputError(f"{n}×{d}×{fh}×{fw} frustum points do not fit the plan's int32 indices",
                         path=source(_KERNEL), field="feature_size")
    lower, step = grid_constants((xbound, ybound, zbound))

    cam_rot = c2l[:, :3, :3] @ inverse_3x3(k, "intrinsics")
    cells = _frustum_cells(points.reshape(-1, 3), inverse_3x3(aug[:, :3, :3], "img_aug"),
                           np.ascontiguousarray(aug[:, :3, 3]), np.ascontiguousarray(cam_rot),
                           np.ascontiguousarray(c2l[:, :3, 3]),
                           np.ascontiguousarray(laug[:3, :3]), np.ascontiguousarray(laug[:3, 3]),
                           lower, step, size)

    indices, starts, ends, occupied = _group_by_cell(cells, int(np.prod(size)))
    return BevPoolPlan(indices=indices, interval_starts=starts, interval_ends=ends,
                       cells=occupied, bev_size=(int(size[0]), int(size[1]), int(size[2])),
                       frustum_shape=(n, d, fh, fw))
