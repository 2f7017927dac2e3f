"""Hard voxelization on the CPU: every point's voxel key, then one pass through a hash table.

The semantics are the reference's deterministic hard voxelization (docs/reference.md#voxelization,
and ``bevdeploy.model.lidar.voxelize.voxelize_points``): voxel index ``floor((p − min) / size)``
in float32, non-finite points and indices outside ``[0, grid)`` dropped, voxels numbered in
order of their first point, the first ``max_points`` points of each voxel kept in point order,
voxels past ``max_voxels`` dropped, feature = mean of the kept points.

CUDA-BEVFusion's hash kernel (docs/reference.md#hash-voxelization) numbers voxels and picks the
points of an over-full voxel in atomic-race order; here a vectorised pass computes every point's
voxel key and one sequential pass over an open-addressing table groups them, which gives the
deterministic order for free at one probe per point, cheap enough on one core that threads
have nothing to win (docs/bench/notes.md#voxelization-hash).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from numpy.typing import ArrayLike

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import as_array, positive_ints, source

_KERNEL = "voxelize"
_DROPPED = -1  # a dropped point's key; an empty table slot; a voxel past the cap
# Fibonacci hashing: multiply by 2^64/φ and keep the top bits, which spreads the structured
# voxel keys (consecutive along z, then y) evenly over the table.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True)
def _voxel_keys(points: np.ndarray, voxel_size: np.ndarray, range_min: np.ndarray,
                grid: np.ndarray) -> np.ndarray:
    """Flat voxel key ``(x·Y + y)·Z + z`` of every point, −1 for a dropped point.

    Branch-free, so that it vectorises. The index is computed in float32 on purpose: the
    reference does, and a point within float64 rounding of a voxel face must land where the
    reference puts it.
    """
    num_points, num_features = points.shape
    keys = np.empty(num_points, dtype=np.int64)
    for i in range(num_points):
        valid = True
        for f in range(num_features):
            valid &= np.isfinite(points[i, f])
        cx = np.floor((points[i, 0] - range_min[0]) / voxel_size[0])
        cy = np.floor((points[i, 1] - range_min[1]) / voxel_size[1])
        cz = np.floor((points[i, 2] - range_min[2]) / voxel_size[2])
        valid &= (cx >= 0) & (cx < grid[0]) & (cy >= 0) & (cy < grid[1]) & (cz >= 0) \
            & (cz < grid[2])
        # zero the indices of dropped points so that the integer conversion stays defined
        cx, cy, cz = (cx, cy, cz) if valid else (np.float32(0), np.float32(0), np.float32(0))
        key = (np.int64(cx) * grid[1] + np.int64(cy)) * grid[2] + np.int64(cz)
        keys[i] = key if valid else _DROPPED
    return keys


@numba.njit(cache=True, nogil=True)
def _voxelize(points: np.ndarray, keys: np.ndarray, grid: np.ndarray, max_points: int,
              max_voxels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_points, num_features = points.shape
    capacity = min(num_points, max_voxels)
    bits = 1
    while (1 << bits) < 2 * num_points:  # load factor ≤ 0.5, as NVIDIA's table
        bits += 1
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    # one entry = (key, voxel id) side by side: a probe touches a single cache line
    table = np.full((1 << bits, 2), _DROPPED, dtype=np.int64)

    # float64 sums: ten float32 features near their maximum (a glitching intensity channel)
    # would overflow a float32 sum to Inf; the mean of finite points must stay finite.
    sums = np.zeros((capacity, num_features), dtype=np.float64)
    counts = np.zeros(capacity, dtype=np.int32)
    coords = np.empty((capacity, 3), dtype=np.int32)
    num_voxels = 0
    for i in range(num_points):
        key = keys[i]
        if key == _DROPPED:
            continue
        h = np.int64((np.uint64(key) * _GOLDEN) >> shift)
        while table[h, 0] != _DROPPED and table[h, 0] != key:
            h = (h + 1) & mask
        if table[h, 0] == _DROPPED:
            table[h, 0] = key
            if num_voxels < max_voxels:  # past the cap the id stays −1: later points skip
                table[h, 1] = num_voxels
                coords[num_voxels, 0] = key // (grid[1] * grid[2])
                coords[num_voxels, 1] = (key // grid[2]) % grid[1]
                coords[num_voxels, 2] = key % grid[2]
                num_voxels += 1
        v = table[h, 1]
        if v != _DROPPED and counts[v] < max_points:
            for f in range(num_features):
                sums[v, f] += points[i, f]
            counts[v] += 1

    feats = np.empty((num_voxels, num_features), dtype=np.float32)
    for v in range(num_voxels):
        n = np.float64(counts[v])
        for f in range(num_features):
            feats[v, f] = np.float32(sums[v, f] / n)
    return feats, coords[:num_voxels].copy(), counts[:num_voxels].copy()


@numba.njit(cache=True, nogil=True)
def _in_range(points: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    n = points.shape[0]
    keep = np.empty(n, dtype=np.bool_)
    count = 0
    for i in range(n):
        inside = True
        for axis in range(3):
            v = points[i, axis]
            if not (v > lower[axis] and v < upper[axis]):  # NaN is outside
                inside = False
                break
        keep[i] = inside
        count += inside
    out = np.empty((count, points.shape[1]), dtype=np.float32)
    j = 0
    for i in range(n):
        if keep[i]:
            out[j] = points[i]
            j += 1
    return out


def in_range(points: ArrayLike, range_min: ArrayLike, range_max: ArrayLike) -> np.ndarray:
    """The points strictly inside ``(range_min, range_max)`` on x, y and z, in point order, as
    a new contiguous (P', F) float32 array (the reference's ``filter_points``).

    One compiled pass, an order of magnitude faster than numpy's ``all((xyz > lo) & (xyz < hi),
    axis=1)`` and boolean indexing (docs/bench/notes.md#range-filter).
    """
    pts = as_array(points, _KERNEL, "points", np.float32, (None, None))
    if pts.shape[1] < 3:
        raise InputError(f"expected (P, F >= 3) points, got {pts.shape}", path=source(_KERNEL),
                         field="points")
    low = as_array(range_min, _KERNEL, "range_min", np.float32, (3,))
    high = as_array(range_max, _KERNEL, "range_max", np.float32, (3,))
    return _in_range(pts, low, high)


def voxelize(points: ArrayLike, voxel_size: ArrayLike, range_min: ArrayLike,
             grid_size: Sequence[int] | np.ndarray, max_points: int, max_voxels: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group points into voxels and average each voxel's points.

    Args:
        points: (P, F) float32, columns 0..2 x, y, z (P = 0 is a normal, empty cloud).
        voxel_size, range_min: (3,) voxel edge and the grid's lower corner, in metres.
        grid_size: (X, Y, Z) voxels per axis.
        max_points: points kept per voxel (the first ones in point order).
        max_voxels: voxels kept (the first ones to appear).

    Returns:
        ``feats (M, F)`` float32 mean of the kept points, ``coords (M, 3)`` int32 ``(x, y, z)``
        voxel indices and ``counts (M,)`` int32 kept points per voxel, in first-appearance order.
    """
    pts = as_array(points, _KERNEL, "points", np.float32, (None, None))
    if pts.shape[1] < 3:
        raise InputError(f"expected (P, F >= 3) points, got {pts.shape}", path=source(_KERNEL),
                         field="points")
    size = as_array(voxel_size, _KERNEL, "voxel_size", np.float32, (3,))
    if not np.all(size > 0):
        raise InputError(f"voxel sizes must be positive, got {size.tolist()}",
                         path=source(_KERNEL), field="voxel_size")
    low = as_array(range_min, _KERNEL, "range_min", np.float32, (3,))
    grid = np.asarray(positive_ints(grid_size, 3, _KERNEL, "grid_size"), dtype=np.int64)
    (cap_points,) = positive_ints([max_points], 1, _KERNEL, "max_points")
    (cap_voxels,) = positive_ints([max_voxels], 1, _KERNEL, "max_voxels")
    return _voxelize(pts, _voxel_keys(pts, size, low, grid), grid, cap_points, cap_voxels)
