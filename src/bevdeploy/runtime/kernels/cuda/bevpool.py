"""BEV pooling on the GPU: depth weight × feature summed per BEV cell, one pass, no atomics.

The semantics of ``kernels.cpu.bev_pool``: ``out[z·C + c, x, y] = Σ depth[i] · feats[pixel(i),
c]`` over the frustum points i of cell (x, y, z), the frustum never materialised. One program
owns ``TILE`` consecutive cells of one z plane and a block of channels: it walks its cells'
runs of the plan side by side (at step k, lane i takes the k-th point of cell i; a short
cell's lane idles after its last point), gathers each point's feature row (NHWC, so a row
is contiguous) scaled by its depth weight, and writes its ``TILE × channels`` block once —
contiguous along the cells for every channel, empty cells included. Each output element has
one writer, so there is no memset pass, no atomic, and the result does not depend on
scheduling (CUDA-BEVFusion's kernel also has one writer per interval,
docs/reference.md#bev-pool-kernel).

Inputs may be float16, bfloat16 or float32; the products are accumulated in float32 unless
``accumulate`` asks for the input type, and written in the output's type.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import source
from bevdeploy.runtime.kernels.cuda._launch import (device_tensor, kernel, lanes, max_combine,
                                                    sum_combine)
from bevdeploy.runtime.kernels.cuda.geometry import DeviceBevPoolPlan

_KERNEL = "bev_pool"
_TILE = 64
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_TYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
                 torch.float32: tl.float32}


@kernel(exact=False)
def _bev_pool(depth, feats, indices, cell_offsets, out, per_camera, pixels, channels, plane,
              TILE: tl.constexpr, POINTS: tl.constexpr, CHANNEL_BLOCK: tl.constexpr,
              ACC: tl.constexpr):
    z = tl.program_id(1)
    xy = tl.program_id(0) * TILE + tl.arange(0, TILE)
    inside = xy < plane
    cell = z * plane + xy
    start = tl.load(cell_offsets + cell, mask=inside, other=0)
    count = tl.load(cell_offsets + cell + 1, mask=inside, other=0) - start
    c = tl.program_id(2) * CHANNEL_BLOCK + tl.arange(0, CHANNEL_BLOCK)
    c_ok = c < channels
    total = tl.full([TILE, CHANNEL_BLOCK], 0.0, ACC)
    # POINTS of each cell per step: one on the GPU (the CPU kernel's summation order), more
    # under the interpreter, which pays per step rather than per lane
    for j0 in range(0, tl.reduce(count, 0, max_combine), POINTS):
        j = j0 + tl.arange(0, POINTS)
        take = j[None, :] < count[:, None]  # (cell, point)
        idx = tl.load(indices + start[:, None] + j[None, :], mask=take, other=0)
        weight = tl.load(depth + idx, mask=take, other=0.0).to(ACC)
        pixel = (idx // per_camera) * pixels + idx % pixels
        row = feats + pixel.to(tl.int64)[:, :, None] * channels + c[None, None, :]
        f = tl.load(row, mask=take[:, :, None] & c_ok[None, None, :], other=0.0).to(ACC)
        total += tl.reduce(weight[:, :, None] * f, 1, sum_combine)
    target = out + (z * channels + c[None, :]).to(tl.int64) * plane + xy[:, None]
    tl.store(target, total.to(out.dtype.element_ty), mask=inside[:, None] & c_ok[None, :])


def _channel_block(channels: int) -> int:
    """Channels per program: the largest power of two ≤ 64 dividing C, so that no lane idles
    (16 for C = 80), or the next power of two when that would be under 16."""
    divisor = channels & -channels
    return min(divisor, 64) if divisor >= 16 else min(64, triton.next_power_of_2(channels))


def bev_pool(depth_weights: torch.Tensor, feats: torch.Tensor, plan: DeviceBevPoolPlan, *,
             out: torch.Tensor | None = None, accumulate: torch.dtype = torch.float32
             ) -> torch.Tensor:
    """Pool one frame into the camera BEV grid, on the plan's device.

    Args:
        depth_weights: (N, D, h, w) tensor on the plan's device, float16/bfloat16/float32.
        feats: (N, h, w, C) NHWC tensor of the same dtype and device.
        plan: the calibration's ``DeviceBevPoolPlan`` (from ``cuda.geometry``).
        out: optional contiguous (1, C·nz, nx, ny) floating tensor on the device to pool into
            (every element is overwritten); its dtype is the output's. A pipeline should
            reuse one, as a CUDA graph must.
        accumulate: ``torch.float32`` (default) or the inputs' dtype.

    Returns:
        (1, C·nz, nx, ny) in ``out``'s dtype (the inputs' when ``out`` is None); channel
        ``z·C + c``, dim 2 = x, dim 3 = y; empty cells are 0.
    """
    n, d, h, w = plan.frustum_shape
    device = plan.device
    weights = device_tensor(depth_weights, _KERNEL, "depth_weights", _FLOATS, (n, d, h, w),
                            device)
    features = device_tensor(feats, _KERNEL, "feats", (weights.dtype,), (n, h, w, None),
                             device)
    channels = features.shape[3]
    if channels == 0:
        raise InputError("feats has no channels", path=source(_KERNEL), field="feats")
    if accumulate not in (torch.float32, weights.dtype):
        raise InputError(f"accumulate must be float32 or the inputs' {weights.dtype}, got "
                         f"{accumulate}", path=source(_KERNEL), field="accumulate")
    nx, ny, nz = plan.bev_size
    shape = (1, channels * nz, nx, ny)
    if out is None:
        out = torch.empty(shape, dtype=weights.dtype, device=device)
    elif (not isinstance(out, torch.Tensor) or tuple(out.shape) != shape
          or out.dtype not in _FLOATS or out.device != device or not out.is_contiguous()):
        raise InputError(f"expected a contiguous float16/bfloat16/float32 tensor of shape "
                         f"{shape} on {device}", path=source(_KERNEL), field="out")
    tile = lanes(device, _TILE)
    block = _channel_block(channels)
    _bev_pool[(triton.cdiv(nx * ny, tile), nz, triton.cdiv(channels, block))](
        weights, features, plan.indices, plan.cell_offsets, out, d * h * w, h * w, channels,
        nx * ny, TILE=tile, POINTS=lanes(device, 1), CHANNEL_BLOCK=block,
        ACC=_TRITON_TYPES[accumulate])
    return out
