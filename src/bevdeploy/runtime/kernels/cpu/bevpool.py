"""BEV pooling on the CPU: depth weights × camera features summed per BEV cell.

The reference lifts every pixel's feature vector by its depth distribution into an N·D·h·w·C
frustum tensor (638 MB in float32 at nuScenes shapes), sorts it and sums runs
(docs/reference.md#bev-pooling). Like CUDA-BEVFusion's kernel (docs/reference.md#bev-pool-kernel)
this one never builds that tensor: the plan from ``geometry`` already groups the frustum points by
cell, so each interval forms ``Σ depth[idx] · feats[pixel(idx)]`` with float32 accumulators.

The grid is cut into tiles of 64 consecutive cells of one z plane. A tile accumulates its
intervals into a small cell × channel buffer that stays in cache, then writes each channel's 64
values as one contiguous run, empty cells included: every output element is written exactly
once, with no memset pass and no 80-way strided scatter per cell. Threads take contiguous runs
of tiles holding equal numbers of points (cells near the cameras are far fuller than distant
ones); each cell belongs to one tile, so there are no atomics and the result does not depend
on the thread count.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import ArrayLike

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import as_array, source
from bevdeploy.runtime.kernels.cpu.geometry import BevPoolPlan

_KERNEL = "bev_pool"
_TILE = 64  # cells per tile: the 64 × C accumulator is 20 KB at C = 80
_CHUNKS_PER_THREAD = 4


@numba.njit(parallel=True, cache=True, nogil=True)
def _bev_pool(depth: np.ndarray, feats: np.ndarray, indices: np.ndarray, starts: np.ndarray,
              ends: np.ndarray, cells: np.ndarray, tile_first: np.ndarray, chunks: np.ndarray,
              per_camera: int, pixels: int, channels: int, plane: int, tiles_per_plane: int,
              out: np.ndarray) -> None:
    # Unsigned offsets: numba then skips its negative-index wraparound, which otherwise keeps
    # LLVM from vectorising the channel loops.
    per_camera_u, pixels_u = np.uint64(per_camera), np.uint64(pixels)
    channels_u = np.uint64(channels)
    for k in numba.prange(chunks.shape[0] - 1):
        tile = np.empty(_TILE * channels, dtype=np.float32)  # (cell in tile, channel)
        for t in range(chunks[k], chunks[k + 1]):
            z = t // tiles_per_plane
            xy0 = (t - z * tiles_per_plane) * _TILE
            length = min(_TILE, plane - xy0)
            tile[:length * channels] = 0.0
            for i in range(tile_first[t], tile_first[t + 1]):
                at = np.uint64((cells[i] - z * plane - xy0) * channels)
                for j in range(starts[i], ends[i]):
                    idx = np.uint64(indices[j])
                    row = ((idx // per_camera_u) * pixels_u + idx % pixels_u) * channels_u
                    weight = depth[idx]
                    for c in range(channels):
                        tile[at + np.uint64(c)] += weight * feats[row + np.uint64(c)]
            for c in range(channels):
                base = (z * channels + c) * plane + xy0  # output channel z·C + c
                for q in range(length):
                    out[base + q] = tile[q * channels + c]


def _tiles(plan: BevPoolPlan, threads: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``tile_first`` (the first interval of every tile, plus the end), the tile runs of the
    threads (boundaries, about equal point counts each) and the tiles per z plane."""
    nx, ny, nz = plan.bev_size
    plane = nx * ny
    per_plane = -(-plane // _TILE)
    tile = np.arange(per_plane * nz)
    first_cell = (tile // per_plane) * plane + (tile % per_plane) * _TILE
    tile_first = np.searchsorted(plan.cells, np.append(first_cell, nz * plane))
    points_before = np.append(plan.interval_starts, plan.num_points)[tile_first]
    count = _CHUNKS_PER_THREAD * threads
    inner = np.searchsorted(points_before, np.linspace(0, plan.num_points, count + 1)[1:-1])
    chunks = np.unique(np.concatenate([[0], inner, [tile.size]]))
    return tile_first.astype(np.int64), chunks.astype(np.int64), per_plane


def bev_pool(depth_weights: ArrayLike, feats: ArrayLike, plan: BevPoolPlan, *,
             out: np.ndarray | None = None) -> np.ndarray:
    """Pool one frame into the camera BEV grid.

    Args:
        depth_weights: (N, D, h, w) float32 per-pixel depth distributions.
        feats: (N, h, w, C) float32 camera features, channels last (NHWC).
        plan: the calibration's ``BevPoolPlan`` (from ``geometry``).
        out: optional C-contiguous float32 (1, C·nz, nx, ny) array to pool into; every
            element is overwritten. A pipeline should pass a buffer it reuses frame after
            frame: at nuScenes shapes the grid is 41 MB, which the allocator maps fresh on
            every call, so every call would also pay for faulting 10,000 pages in.

    Returns:
        (1, C·nz, nx, ny) float32 (``out`` when given); channel ``z·C + c``, dim 2 = x,
        dim 3 = y; empty cells are 0.
    """
    n, d, h, w = plan.frustum_shape
    weights = as_array(depth_weights, _KERNEL, "depth_weights", np.float32, (n, d, h, w))
    features = as_array(feats, _KERNEL, "feats", np.float32, (n, h, w, None))
    channels = features.shape[3]
    if channels == 0:
        raise InputError("feats has no channels", path=source(_KERNEL), field="feats")
    nx, ny, nz = plan.bev_size
    shape = (1, channels * nz, nx, ny)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.float32
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise InputError(f"expected a writable C-contiguous float32 array of shape {shape}",
                         path=source(_KERNEL), field="out")
    tile_first, chunks, per_plane = _tiles(plan, numba.get_num_threads())
    _bev_pool(weights.reshape(-1), features.reshape(-1), plan.indices, plan.interval_starts,
              plan.interval_ends, plan.cells, tile_first, chunks, d * h * w, h * w, channels,
              nx * ny, per_plane, out.reshape(-1))
    return out
