"""Hard voxelization on the GPU: a hash table numbers the voxels, a stable sort orders points.

Same semantics as ``kernels.cpu.voxelize`` (see there), same result bit for bit, including
the order: voxels numbered by their first point, the first ``max_points`` points of a voxel
in point order kept, voxels past ``max_voxels`` dropped, means of float64 sums in point order
rounded once to float32.
What differs is the shape of the result: the voxel count stays on the device, so the arrays
have the fixed capacity ``min(P, max_voxels)`` and the count is a 0-d tensor; rows past it
are zero. Nothing in here waits for the GPU, so a frame can be queued (or captured in a CUDA
graph) from the points to the detections without a host round trip; CUDA-BEVFusion copies its
voxel count to the host in the middle of the frame (docs/reference.md#hash-voxelization).

1. ``_hash_voxels`` (Triton): every point's voxel key, computed as the CPU kernel does (float32,
   IEEE division, no FMA), inserted into an open-addressing table with ``atomic_cas``; the
   slot also keeps the smallest index of its points (``atomic_min``), i.e. the voxel's first
   point, which makes the numbering independent of the order the atomics land in.
2. torch: a point that is its voxel's first point gets the next voxel id (a cumulative sum over
   points), every point the id of its voxel's first point; ids ≥ ``max_voxels`` are dropped.
3. torch: a stable sort by voxel id lists each voxel's points in point order (a radix sort,
   linear in P), ``searchsorted`` finds each voxel's run.
4. ``_voxel_means`` (Triton): per voxel, the first ``max_points`` points of its run summed in
   order (float64) and divided by their count, and the (x, y, z) index from the key.

The sort is what buys the CPU kernel's exact semantics: with atomics alone (NVIDIA's kernel)
which points of an over-full voxel are kept, and the order in which float sums are added,
depend on scheduling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import triton
import triton.language as tl
from numpy.typing import ArrayLike

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import as_array, positive_ints, source
from bevdeploy.runtime.kernels.cuda._launch import device_tensor, kernel, lanes, max_combine

_KERNEL = "voxelize"
_BLOCK = 256
_MEANS_BLOCK = 256
_EMPTY = -1  # an empty table slot; a dropped point's key and slot; a voxel past the cap


@kernel(exact=True)
def _hash_voxels(points, num_points, table_keys, table_first, keys_out, slots_out,
                 size_x, size_y, size_z, low_x, low_y, low_z, grid_x, grid_y, grid_z,
                 table_mask, hash_shift, NUM_FEATURES: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = i < num_points
    row = points + i.to(tl.int64) * NUM_FEATURES
    valid = live
    for f in tl.static_range(NUM_FEATURES):
        v = tl.load(row + f, mask=live, other=0.0)
        valid = valid & (tl.abs(v) < float("inf"))  # false for NaN and ±Inf
    x = tl.load(row + 0, mask=live, other=0.0)
    y = tl.load(row + 1, mask=live, other=0.0)
    z = tl.load(row + 2, mask=live, other=0.0)
    cx = tl.floor(tl.math.div_rn(x - low_x, size_x))
    cy = tl.floor(tl.math.div_rn(y - low_y, size_y))
    cz = tl.floor(tl.math.div_rn(z - low_z, size_z))
    valid = valid & (cx >= 0) & (cx < grid_x) & (cy >= 0) & (cy < grid_y) & (cz >= 0) \
        & (cz < grid_z)
    cx = tl.where(valid, cx, 0.0)  # keep the integer conversion defined
    cy = tl.where(valid, cy, 0.0)
    cz = tl.where(valid, cz, 0.0)
    key = (cx.to(tl.int64) * grid_y + cy.to(tl.int64)) * grid_z + cz.to(tl.int64)
    key = tl.where(valid, key, -1)
    tl.store(keys_out + i, key, mask=live)

    # Fibonacci hashing: the top bits of the low 32 bits of key · 2^32/φ. A dropped point
    # probes its own slot with a compare value no slot holds, so it writes nothing.
    slot = tl.where(valid, ((key * -1640531535) >> hash_shift) & table_mask,
                    i.to(tl.int64) & table_mask)
    expect = tl.where(valid, -1, -2).to(tl.int64)
    desired = tl.where(valid, key, -2)
    active = valid
    found = tl.full([BLOCK], -1, tl.int64)
    while tl.reduce(active.to(tl.int32), 0, max_combine) > 0:
        prev = tl.atomic_cas(table_keys + slot, expect, desired)
        hit = active & ((prev == -1) | (prev == key))
        found = tl.where(hit, slot, found)
        active = active & (hit == 0)
        slot = tl.where(active, (slot + 1) & table_mask, slot)
        expect = tl.where(active, expect, -2)
        desired = tl.where(active, desired, -2)
    tl.atomic_min(table_first + found, i, mask=valid)
    tl.store(slots_out + i, found, mask=live)


@kernel(exact=True)
def _voxel_means(points, order, starts, ends, keys, num_voxels, feats, coords, counts,
                 capacity, max_points, grid_y, grid_z, NUM_FEATURES: tl.constexpr,
                 FEATURE_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    v = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_capacity = v < capacity
    used = in_capacity & (v < tl.load(num_voxels))
    start = tl.load(starts + v, mask=used, other=0)
    n = tl.minimum(tl.load(ends + v, mask=used, other=0) - start, max_points)
    f = tl.arange(0, FEATURE_BLOCK)
    f_ok = f < NUM_FEATURES
    # float64 sums in point order, as the CPU kernel: finite features near float32's maximum
    # must not add up to Inf
    total = tl.full([BLOCK, FEATURE_BLOCK], 0.0, tl.float64)
    for j in range(0, max_points):
        take = used & (j < n)
        idx = tl.load(order + start + j, mask=take, other=0)
        total += tl.load(points + idx[:, None] * NUM_FEATURES + f[None, :],
                         mask=take[:, None] & f_ok[None, :], other=0.0).to(tl.float64)
    mean = (total / tl.maximum(n, 1).to(tl.float64)[:, None]).to(tl.float32)
    mean = tl.where(used[:, None], mean, 0.0)
    tl.store(feats + v[:, None].to(tl.int64) * NUM_FEATURES + f[None, :], mean,
             mask=in_capacity[:, None] & f_ok[None, :])
    key = tl.load(keys + tl.load(order + start, mask=used, other=0), mask=used, other=0)
    row = coords + v.to(tl.int64) * 3
    tl.store(row + 0, tl.where(used, key // (grid_y * grid_z), 0).to(tl.int32), mask=in_capacity)
    tl.store(row + 1, tl.where(used, (key // grid_z) % grid_y, 0).to(tl.int32), mask=in_capacity)
    tl.store(row + 2, tl.where(used, key % grid_z, 0).to(tl.int32), mask=in_capacity)
    tl.store(counts + v, tl.where(used, n, 0).to(tl.int32), mask=in_capacity)


def in_range(points: torch.Tensor, range_min: ArrayLike, range_max: ArrayLike
             ) -> torch.Tensor:
    """The points strictly inside ``(range_min, range_max)`` on x, y and z, in point order
    (``kernels.cpu.in_range`` on the device, in plain torch).

    The only kernel here whose result size goes back to the host: the voxelize stage checks
    the count against the package's bound on the host anyway, and the cheaper place for this
    filter is usually the CPU kernel before the upload, which also shrinks the copy.
    """
    pts = device_tensor(points, _KERNEL, "points", (torch.float32,), (None, None))
    if pts.shape[1] < 3:
        raise InputError(f"expected (P, F >= 3) points, got {tuple(pts.shape)}",
                         path=source(_KERNEL), field="points")
    low = torch.from_numpy(as_array(range_min, _KERNEL, "range_min", np.float32, (3,)))
    high = torch.from_numpy(as_array(range_max, _KERNEL, "range_max", np.float32, (3,)))
    xyz = pts[:, :3]
    inside = ((xyz > low.to(pts.device)) & (xyz < high.to(pts.device))).all(dim=1)  # NaN: out
    return pts[inside]


def voxelize(points: torch.Tensor, voxel_size: ArrayLike, range_min: ArrayLike,
             grid_size: Sequence[int] | np.ndarray, max_points: int, max_voxels: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group points into voxels and average each voxel's points, on the points' device.

    Args:
        points: (P, F) float32 tensor on the device, columns 0..2 x, y, z.
        voxel_size, range_min, grid_size, max_points, max_voxels: host values, as for
            ``kernels.cpu.voxelize``.

    Returns:
        ``feats (M_cap, F)`` float32, ``coords (M_cap, 3)`` int32 ``(x, y, z)``, ``counts
        (M_cap,)`` int32 and ``num_voxels`` a 0-d int32 tensor, all on the device, with
        ``M_cap = min(P, max_voxels)``: rows ``[0, num_voxels)`` are the CPU kernel's result in
        its order, the rest are zero (count 0).
    """
    pts = device_tensor(points, _KERNEL, "points", (torch.float32,), (None, None))
    if pts.shape[1] < 3:
        raise InputError(f"expected (P, F >= 3) points, got {tuple(pts.shape)}",
                         path=source(_KERNEL), field="points")
    size = as_array(voxel_size, _KERNEL, "voxel_size", np.float32, (3,))
    if not np.all(size > 0):
        raise InputError(f"voxel sizes must be positive, got {size.tolist()}",
                         path=source(_KERNEL), field="voxel_size")
    low = as_array(range_min, _KERNEL, "range_min", np.float32, (3,))
    grid = positive_ints(grid_size, 3, _KERNEL, "grid_size")
    (cap_points,) = positive_ints([max_points], 1, _KERNEL, "max_points")
    (cap_voxels,) = positive_ints([max_voxels], 1, _KERNEL, "max_voxels")

    num_points, num_features = pts.shape
    if num_points >= 2 ** 30:
        raise InputError(f"{num_points} points do not fit the kernel's int32 point indices",
                         path=source(_KERNEL), field="points")
    device = pts.device
    capacity = min(num_points, cap_voxels)
    feats = torch.zeros((capacity, num_features), dtype=torch.float32, device=device)
    coords = torch.zeros((capacity, 3), dtype=torch.int32, device=device)
    counts = torch.zeros(capacity, dtype=torch.int32, device=device)
    if num_points == 0:
        return feats, coords, counts, torch.zeros((), dtype=torch.int32, device=device)

    bits = max(1, (2 * num_points - 1).bit_length())  # load factor ≤ 0.5, as the CPU kernel
    table_keys = torch.full((1 << bits,), _EMPTY, dtype=torch.int64, device=device)
    table_first = torch.full((1 << bits,), num_points, dtype=torch.int32, device=device)
    keys = torch.empty(num_points, dtype=torch.int64, device=device)
    slots = torch.empty(num_points, dtype=torch.int64, device=device)
    block = lanes(device, _BLOCK)
    _hash_voxels[(triton.cdiv(num_points, block),)](
        pts, num_points, table_keys, table_first, keys, slots, *(float(v) for v in size),
        *(float(v) for v in low), *grid, (1 << bits) - 1, 32 - bits,
        NUM_FEATURES=num_features, BLOCK=block)

    kept = slots >= 0
    first = torch.where(kept, table_first[slots.clamp(min=0)], 0).long()
    is_first = kept & (first == torch.arange(num_points, device=device))
    voxel_of_first = torch.cumsum(is_first, 0, dtype=torch.int32) - 1
    voxel = torch.where(kept, voxel_of_first[first], _EMPTY)
    voxel = torch.where(voxel < cap_voxels, voxel, _EMPTY)
    num_voxels = is_first.sum(dtype=torch.int32).clamp(max=cap_voxels)

    sort_key = torch.where(voxel >= 0, voxel, torch.iinfo(torch.int32).max)
    sorted_voxels, order = torch.sort(sort_key, stable=True)
    ids = torch.arange(capacity, dtype=torch.int32, device=device)
    starts = torch.searchsorted(sorted_voxels, ids)
    ends = torch.searchsorted(sorted_voxels, ids, right=True)
    block = lanes(device, _MEANS_BLOCK)
    _voxel_means[(triton.cdiv(capacity, block),)](
        pts, order, starts, ends, keys, num_voxels, feats, coords, counts, capacity,
        cap_points, grid[1], grid[2], NUM_FEATURES=num_features,
        FEATURE_BLOCK=triton.next_power_of_2(num_features), BLOCK=block)
    return feats, coords, counts, num_voxels
