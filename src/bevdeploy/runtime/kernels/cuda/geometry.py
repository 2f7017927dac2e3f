"""Frustum geometry on the GPU: the calibration → a ``DeviceBevPoolPlan``, with no host sync.

Every frustum point's BEV cell is computed by ``_frustum_cells``, the CPU kernel's float64
arithmetic written out in the same order and compiled without FMA contraction, so that each
point lands in the same cell as on the CPU (the cell is a truncation: one differently rounded
operation moves the points within an ulp of a face). The camera matrices are inverted on the
host with numpy, as the CPU kernel does, and uploaded as float64.

The grouping by cell is a stable sort of the cells (torch's radix sort: frustum order inside a
cell, like the CPU's counting sort) and a ``searchsorted`` for every cell's run. The plan is
the CPU plan in CSR form over *all* cells: ``cell_offsets[c]:cell_offsets[c + 1]`` are cell
c's points, empty cells have empty runs. Its arrays have sizes fixed by the shapes alone, so
no count has to reach the host (``torch.unique_consecutive`` would copy the number of occupied
cells back and stall the stream) and the whole thing can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch
import triton
import triton.language as tl
from numpy.typing import ArrayLike

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import cell_count, check_calibration, source
from bevdeploy.runtime.kernels.cpu.geometry import (BevPoolPlan, frustum, grid_constants,
                                                    inverse_3x3)
from bevdeploy.runtime.kernels.cuda._launch import kernel, lanes, upload

_KERNEL = "geometry"
_BLOCK = 256


@dataclass(frozen=True, eq=False)
class DeviceBevPoolPlan:
    """``BevPoolPlan`` on the device, in CSR form over every cell of the grid.

    ``indices[cell_offsets[c]:cell_offsets[c + 1]]`` are the flat frustum indices (order
    ``(n, d, h, w)``) of the points in cell ``c = (z·nx + x)·ny + y``, in frustum order;
    ``indices`` past ``cell_offsets[-1]`` (the dropped points) are never read.
    """

    indices: torch.Tensor  # (N·D·h·w,) int32
    cell_offsets: torch.Tensor  # (nz·nx·ny + 1,) int32
    bev_size: tuple[int, int, int]  # (nx, ny, nz)
    frustum_shape: tuple[int, int, int, int]  # (N, D, h, w)

    @property
    def device(self) -> torch.device:
        return self.indices.device

    @cached_property
    def num_points(self) -> torch.Tensor:
        """0-d int32 device tensor: frustum points inside the grid."""
        return self.cell_offsets[-1]

    def to_host(self) -> BevPoolPlan:
        """The CPU kernel's plan (one interval per occupied cell); copies and synchronises, for
        tests and inspection only."""
        offsets = self.cell_offsets.cpu().numpy().astype(np.int64)
        occupied = np.flatnonzero(np.diff(offsets))
        return BevPoolPlan(indices=self.indices.cpu().numpy()[:offsets[-1]].copy(),
                           interval_starts=offsets[occupied].astype(np.int32),
                           interval_ends=offsets[occupied + 1].astype(np.int32),
                           cells=occupied.astype(np.int64), bev_size=self.bev_size,
                           frustum_shape=self.frustum_shape)


@lru_cache(maxsize=16)
def _frustum_axes(image_size: tuple[int, int], feature_size: tuple[int, int],
                  dbound: tuple[float, ...], device: torch.device
                  ) -> tuple[int, int, int, torch.Tensor]:
    """(D, h, w, the frustum's depths, rows and columns on ``device``): ``frustum()``'s float32
    values, uploaded once per configuration."""
    points = frustum(image_size, feature_size, dbound)
    d, fh, fw = points.shape[:3]
    axes = np.concatenate([points[:, 0, 0, 2], points[0, :, 0, 1], points[0, 0, :, 0]])
    return d, fh, fw, upload(axes, device, torch.float32)


@kernel(exact=True)
def _frustum_cells(axes, cameras, grid, cells, total, depth_bins, height, width, nx, ny, nz,
                   BLOCK: tl.constexpr):
    """Flat cell of every frustum point of every camera, ``nx·ny·nz`` (past the last cell)
    for a dropped point, so that a sort puts the dropped points last. ``axes`` holds the
    frustum's depths, rows and columns, ``frustum()``'s float32 values."""
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = t < total
    w = t % width
    h = (t // width) % height
    d = (t // (width * height)) % depth_bins
    n = t // (width * height * depth_bins)
    cam = cameras + n * 24  # aug⁻¹ (9), aug t (3), R·K⁻¹ (9), camera → LiDAR t (3)
    px = tl.load(axes + depth_bins + height + w, mask=live, other=0.0).to(tl.float64) \
        - tl.load(cam + 9, mask=live)
    py = tl.load(axes + depth_bins + h, mask=live, other=0.0).to(tl.float64) \
        - tl.load(cam + 10, mask=live)
    pd = tl.load(axes + d, mask=live, other=0.0).to(tl.float64) - tl.load(cam + 11, mask=live)
    qx = tl.load(cam + 0, mask=live) * px + tl.load(cam + 1, mask=live) * py \
        + tl.load(cam + 2, mask=live) * pd
    qy = tl.load(cam + 3, mask=live) * px + tl.load(cam + 4, mask=live) * py \
        + tl.load(cam + 5, mask=live) * pd
    qd = tl.load(cam + 6, mask=live) * px + tl.load(cam + 7, mask=live) * py \
        + tl.load(cam + 8, mask=live) * pd
    qx = qx * qd
    qy = qy * qd
    gx = tl.load(cam + 12, mask=live) * qx + tl.load(cam + 13, mask=live) * qy \
        + tl.load(cam + 14, mask=live) * qd + tl.load(cam + 21, mask=live)
    gy = tl.load(cam + 15, mask=live) * qx + tl.load(cam + 16, mask=live) * qy \
        + tl.load(cam + 17, mask=live) * qd + tl.load(cam + 22, mask=live)
    gz = tl.load(cam + 18, mask=live) * qx + tl.load(cam + 19, mask=live) * qy \
        + tl.load(cam + 20, mask=live) * qd + tl.load(cam + 23, mask=live)
    # grid: LiDAR-augmentation rotation (9), translation (3), grid lower corner (3), step (3)
    fx = (tl.load(grid + 0) * gx + tl.load(grid + 1) * gy + tl.load(grid + 2) * gz
          + tl.load(grid + 9) - tl.load(grid + 12)) / tl.load(grid + 15)
    fy = (tl.load(grid + 3) * gx + tl.load(grid + 4) * gy + tl.load(grid + 5) * gz
          + tl.load(grid + 10) - tl.load(grid + 13)) / tl.load(grid + 16)
    fz = (tl.load(grid + 6) * gx + tl.load(grid + 7) * gy + tl.load(grid + 8) * gz
          + tl.load(grid + 11) - tl.load(grid + 14)) / tl.load(grid + 17)
    # truncation toward zero keeps (−1, n) on every axis; NaN fails the test and is dropped
    inside = (fx > -1.0) & (fx < nx) & (fy > -1.0) & (fy < ny) & (fz > -1.0) & (fz < nz)
    fx = tl.where(inside, fx, 0.0)
    fy = tl.where(inside, fy, 0.0)
    fz = tl.where(inside, fz, 0.0)
    cell = (fz.to(tl.int32) * nx + fx.to(tl.int32)) * ny + fy.to(tl.int32)
    tl.store(cells + t, tl.where(inside, cell, nx * ny * nz), mask=live)


def geometry(camera2lidar: ArrayLike, intrinsics: ArrayLike, img_aug: ArrayLike,
             lidar_aug: ArrayLike, image_size: tuple[int, int], feature_size: tuple[int, int],
             dbound: Sequence[float], xbound: Sequence[float], ybound: Sequence[float],
             zbound: Sequence[float], *, device: torch.device | str) -> DeviceBevPoolPlan:
    """The BEV-pool plan of one calibration, built on ``device``.

    Args: as ``kernels.cpu.geometry`` (host arrays: the calibration is a few hundred bytes,
    uploaded once), plus ``device``, where the plan is built and lives.
    """
    device = torch.device(device)
    c2l, k, aug, laug = check_calibration(camera2lidar, intrinsics, img_aug, lidar_aug)
    n = c2l.shape[0]
    nx, ny, nz = (cell_count(b, _KERNEL, name) for b, name in
                  ((xbound, "xbound"), (ybound, "ybound"), (zbound, "zbound")))
    d, fh, fw, axes = _frustum_axes(tuple(image_size), tuple(feature_size),
                                    tuple(float(v) for v in dbound), device)
    total = n * d * fh * fw
    if max(total, nx * ny * nz + 1) > np.iinfo(np.int32).max:
        raise InputError(f"{n}×{d}×{fh}×{fw} frustum points or a {nx}×{ny}×{nz} grid do not "
                         "fit the plan's int32 indices", path=source(_KERNEL),
                         field="feature_size")
    lower, step = grid_constants((xbound, ybound, zbound))
    cam_rot = c2l[:, :3, :3] @ inverse_3x3(k, "intrinsics")
    cameras = np.concatenate([inverse_3x3(aug[:, :3, :3], "img_aug").reshape(n, 9),
                              aug[:, :3, 3], cam_rot.reshape(n, 9), c2l[:, :3, 3]], axis=1)
    grid = np.concatenate([laug[:3, :3].reshape(9), laug[:3, 3], lower, step])

    num_cells = nx * ny * nz
    cells = torch.empty(total, dtype=torch.int32, device=device)
    block = lanes(device, _BLOCK)
    _frustum_cells[(triton.cdiv(total, block),)](
        axes, upload(cameras, device), upload(grid, device), cells, total, d, fh, fw, nx, ny, nz,
        BLOCK=block)
    sorted_cells, order = torch.sort(cells, stable=True)
    bounds = torch.arange(num_cells + 1, dtype=torch.int32, device=device)
    offsets = torch.searchsorted(sorted_cells, bounds).to(torch.int32)
    return DeviceBevPoolPlan(indices=order.to(torch.int32), cell_offsets=offsets,
                             bev_size=(nx, ny, nz), frustum_shape=(n, d, fh, fw))
