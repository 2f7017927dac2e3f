"""The sparse LiDAR depth image on the GPU: every point projected into every camera.

Semantics of ``kernels.cpu.depth_map`` (see there), bit for bit: the projection in float64
with the CPU kernel's operations in its order, no FMA contraction, and the latest point in
point order wins a pixel. CUDA-BEVFusion writes the pixels from racing threads, so which of
several points a pixel shows depends on scheduling (docs/reference.md#depth-kernel); here the tie
rule is two passes that need no ordering between threads:

1. ``_claim_pixels``: each point that lands on the image raises its pixel's claim to its own
   index (``atomic_max``), so every lit pixel ends up holding its latest point.
2. ``_write_depths``: each pixel reprojects its claiming point (the same code, so the same
   depth) and writes it, or 0; every output element is written once, with no memset pass.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl
from numpy.typing import ArrayLike

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import check_projection, source
from bevdeploy.runtime.kernels.cuda._launch import device_tensor, kernel, lanes, upload

_KERNEL = "depth_map"
_BLOCK = 256
_MIN_DEPTH = 1e-5
_MAX_DEPTH = 1e5


@kernel(exact=True)
def _claim_pixels(points, num_points, stride, cameras, claims, height, width,
                  BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    n = tl.program_id(1)
    live = i < num_points
    row = points + i.to(tl.int64) * stride
    x = tl.load(row + 0, mask=live, other=0.0).to(tl.float64)
    y = tl.load(row + 1, mask=live, other=0.0).to(tl.float64)
    z = tl.load(row + 2, mask=live, other=0.0).to(tl.float64)
    m = cameras + n * 22  # lidar2image rows 0..2 (12), img_aug rows 0..1 (8), clamp (2)
    depth = tl.load(m + 8) * x + tl.load(m + 9) * y + tl.load(m + 10) * z + tl.load(m + 11)
    # the clamp; a NaN depth (non-finite point) becomes the minimum, its u, v stay NaN and
    # fail the on-image test, so such a point is dropped as by the reference
    depth = tl.where(depth > tl.load(m + 20), depth, tl.load(m + 20))
    depth = tl.where(depth < tl.load(m + 21), depth, tl.load(m + 21))
    u = (tl.load(m + 0) * x + tl.load(m + 1) * y + tl.load(m + 2) * z + tl.load(m + 3)) / depth
    v = (tl.load(m + 4) * x + tl.load(m + 5) * y + tl.load(m + 6) * z + tl.load(m + 7)) / depth
    col = tl.load(m + 12) * u + tl.load(m + 13) * v + tl.load(m + 14) * depth + tl.load(m + 15)
    row_ = tl.load(m + 16) * u + tl.load(m + 17) * v + tl.load(m + 18) * depth \
        + tl.load(m + 19)
    on_image = live & (col >= 0.0) & (col < width) & (row_ >= 0.0) & (row_ < height)
    col = tl.where(on_image, col, 0.0)  # keep the int conversion defined
    row_ = tl.where(on_image, row_, 0.0)
    pixel = row_.to(tl.int32) * width + col.to(tl.int32)
    tl.atomic_max(claims + n.to(tl.int64) * height * width + pixel, i, mask=on_image)


@kernel(exact=True)
def _write_depths(points, stride, cameras, claims, out, pixels, BLOCK: tl.constexpr):
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    n = tl.program_id(1)
    live = q < pixels
    at = n.to(tl.int64) * pixels + q
    i = tl.load(claims + at, mask=live, other=-1)
    lit = i >= 0
    row = points + tl.where(lit, i, 0).to(tl.int64) * stride
    x = tl.load(row + 0, mask=lit, other=0.0).to(tl.float64)
    y = tl.load(row + 1, mask=lit, other=0.0).to(tl.float64)
    z = tl.load(row + 2, mask=lit, other=0.0).to(tl.float64)
    m = cameras + n * 22
    depth = tl.load(m + 8) * x + tl.load(m + 9) * y + tl.load(m + 10) * z + tl.load(m + 11)
    depth = tl.where(depth > tl.load(m + 20), depth, tl.load(m + 20))
    depth = tl.where(depth < tl.load(m + 21), depth, tl.load(m + 21))
    tl.store(out + at, tl.where(lit, depth.to(tl.float32), 0.0), mask=live)


def depth_map(points: torch.Tensor, lidar2image: ArrayLike, img_aug: ArrayLike,
              image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) float32 metric camera depth at the pixels the points project to, else 0,
    on the points' device.

    Args:
        points: (P, F) float32 tensor on the device, x, y, z in columns 0..2.
        lidar2image, img_aug: (N, 4, 4) host arrays, as for ``kernels.cpu.depth_map``
            (uploaded as float64).
        image_size: (H, W) of the network image.
    """
    pts = device_tensor(points, _KERNEL, "points", (torch.float32,), (None, None))
    if pts.shape[1] < 3:
        raise InputError(f"expected (P, F >= 3) points, got {tuple(pts.shape)}",
                         path=source(_KERNEL), field="points")
    l2i, aug, (height, width) = check_projection(lidar2image, img_aug, image_size)
    n = l2i.shape[0]
    num_points, stride = pts.shape
    if num_points >= 2 ** 31:
        raise InputError(f"{num_points} points do not fit the kernel's int32 point indices",
                         path=source(_KERNEL), field="points")
    device = pts.device
    out = torch.empty((n, 1, height, width), dtype=torch.float32, device=device)
    if n == 0:
        return out
    clamp = np.tile([_MIN_DEPTH, _MAX_DEPTH], (n, 1))
    cameras = upload(np.concatenate([l2i[:, :3].reshape(n, 12), aug[:, :2].reshape(n, 8),
                                     clamp], axis=1), device)
    claims = torch.full((n, height, width), -1, dtype=torch.int32, device=device)
    block = lanes(device, _BLOCK)
    if num_points:
        _claim_pixels[(triton.cdiv(num_points, block), n)](
            pts, num_points, stride, cameras, claims, height, width, BLOCK=block)
    _write_depths[(triton.cdiv(height * width, block), n)](
        pts, stride, cameras, claims, out, height * width, BLOCK=block)
    return out
