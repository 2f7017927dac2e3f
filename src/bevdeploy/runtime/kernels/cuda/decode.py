"""Box decoding on the GPU, in plain torch: the head's per-query outputs → boxes, scores, labels.

The maths and the filter of ``kernels.cpu.decode`` (see there) on device tensors, float32.
A couple of hundred queries are a handful of elementwise torch ops; a Triton kernel would buy
nothing. The filtered result has a data-dependent length, so selecting the kept boxes copies
their count to the host: decode ends the frame, whose detections go to the host anyway, so a
CUDA graph should end before it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike

from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import as_array, positive_ints, source
from bevdeploy.runtime.kernels.cuda._launch import device_tensor
from bevdeploy.vocabulary import BOX_CONVENTION_MIT, BOX_CONVENTION_MMDET3D, BOX_CONVENTIONS

_KERNEL = "decode"


def decode(score: torch.Tensor, rot: torch.Tensor, dim: torch.Tensor, reg: torch.Tensor,
           height: torch.Tensor, vel: torch.Tensor, out_size_factor: int, voxel_size: ArrayLike,
           pc_range_min: ArrayLike, post_center_range: ArrayLike, score_threshold: float, *,
           box_convention: str = BOX_CONVENTION_MIT
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode P queries on their device.

    Args:
        score, rot, dim, reg, height, vel: float32 tensors on one device, shaped as for
            ``kernels.cpu.decode``; the rest are host values, as there (``box_convention``
            included: the conversion is ``data.boxes.from_head_boxes``'s, on the device).

    Returns:
        ``boxes (M, 9)`` float32 ``[x, y, z, l, w, h, yaw, vx, vy]``, ``scores (M,)`` float32
        and ``labels (M,)`` int64 on the device, in query order.
    """
    scores = device_tensor(score, _KERNEL, "score", (torch.float32,), (None, None))
    k, p = scores.shape
    if k == 0:
        raise InputError("score has no classes", path=source(_KERNEL), field="score")
    device = scores.device
    rot32, dim32, reg32, height32, vel32 = (
        device_tensor(value, _KERNEL, name, (torch.float32,), (rows, p), device)
        for value, name, rows in ((rot, "rot", 2), (dim, "dim", 3), (reg, "reg", 2),
                                  (height, "height", 1), (vel, "vel", 2)))
    if box_convention not in BOX_CONVENTIONS:
        raise InputError(f"box convention {box_convention!r} is none of {list(BOX_CONVENTIONS)}",
                         path=source(_KERNEL), field="box_convention")
    (factor,) = positive_ints([out_size_factor], 1, _KERNEL, "out_size_factor")
    voxel = as_array(voxel_size, _KERNEL, "voxel_size", np.float64, (2,))
    cell = (factor * voxel).astype(np.float32)  # the CPU kernel's rounding of the cell size
    low = as_array(pc_range_min, _KERNEL, "pc_range_min", np.float32, (2,))
    bounds = as_array(post_center_range, _KERNEL, "post_center_range", np.float32, (6,))

    best, labels = scores.max(dim=0)
    size = torch.exp(dim32)
    x = reg32[0] * float(cell[0]) + float(low[0])
    y = reg32[1] * float(cell[1]) + float(low[1])
    z = height32[0] - size[2] / 2.0
    theta = torch.atan2(rot32[0], rot32[1])
    if box_convention == BOX_CONVENTION_MMDET3D:
        # mmdet3d ≥ 1.0: sizes (l, w, h), the heading yaw, z the bottom → the centre
        yaw = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
        boxes = torch.stack([x, y, z + size[2] / 2.0, size[0], size[1], size[2], yaw,
                             vel32[0], vel32[1]], dim=1)
    else:
        # the legacy yaw atan2(sin, cos) → bevdeploy's −θ − π/2, wrapped to [−π, π)
        yaw = torch.remainder(-theta - math.pi / 2 + math.pi, 2 * math.pi) - math.pi
        boxes = torch.stack([x, y, z, size[1], size[0], size[2], yaw, vel32[0], vel32[1]],
                            dim=1)
    centre = torch.stack([x, y, z], dim=1)
    low_bound = torch.from_numpy(bounds[:3]).to(device)
    high_bound = torch.from_numpy(bounds[3:]).to(device)
    keep = torch.all((centre >= low_bound) & (centre <= high_bound), dim=1)
    if score_threshold > 0:
        keep &= best > float(np.float32(score_threshold))
    return boxes[keep], best[keep], labels[keep]
