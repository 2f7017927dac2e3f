"""Box decoding on the CPU: the head's per-query outputs → boxes, scores, labels.

The maths of the reference's ``TransFusionBBoxCoder.decode`` (docs/reference.md#box-decoding, and
``bevdeploy.model.bbox_coder``), in float32 like the model: label and score are the argmax and
max over the class scores; ``x = reg₀ · out_size_factor · voxel_size₀ + pc_min₀`` (same for
y); sizes ``exp(dim)`` as (w, l, h); ``z = height − h/2``; ``θ = atan2(rot₀, rot₁)``; velocity
as is. A box is kept when its centre lies inside ``post_center_range`` (inclusive) and, for a
positive threshold, its score exceeds ``score_threshold`` (0 means no threshold, the
reference's falsy 0.0). There is no NMS. Boxes keep the query order; the box convention the
head was trained in (the package's ``box_convention``) is converted once, with
``data.boxes.from_head_boxes``: for ``mit`` the z quirk of docs/reference.md#z-quirk makes the
decoded z the object's centre already, for ``mmdet3d-1.x`` it is the bottom.

Two hundred queries are a few microseconds of numpy; there is nothing to compile.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from bevdeploy.data.boxes import from_head_boxes
from bevdeploy.errors import InputError
from bevdeploy.runtime.kernels.checks import as_array, positive_ints, source
from bevdeploy.vocabulary import BOX_CONVENTION_MIT

_KERNEL = "decode"


def decode(score: ArrayLike, rot: ArrayLike, dim: ArrayLike, reg: ArrayLike, height: ArrayLike,
           vel: ArrayLike, out_size_factor: int, voxel_size: ArrayLike, pc_range_min: ArrayLike,
           post_center_range: ArrayLike, score_threshold: float, *,
           box_convention: str = BOX_CONVENTION_MIT
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode P queries.

    Args:
        score: (K, P) per-class scores (zero except the query's class).
        rot: (2, P) (sin, cos) of the legacy yaw. dim: (3, P) log (w, l, h).
        reg: (2, P) centre in BEV cells. height: (1, P) the regressed height. vel: (2, P) m/s.
        out_size_factor: BEV cell size in voxels.
        voxel_size, pc_range_min: (2,) voxel edge and range minimum in x and y, metres.
        post_center_range: (6,) ``[xmin, ymin, zmin, xmax, ymax, zmax]`` of kept centres.
        score_threshold: keep scores above it when positive.
        box_convention: the convention the head regresses in (``vocabulary.BOX_CONVENTIONS``).

    Returns:
        ``boxes (M, 9)`` float32 in the bevdeploy convention ``[x, y, z, l, w, h, yaw, vx,
        vy]``, ``scores (M,)`` float32 and ``labels (M,)`` int64, in query order.
    """
    scores = as_array(score, _KERNEL, "score", np.float32, (None, None))
    k, p = scores.shape
    if k == 0:
        raise InputError("score has no classes", path=source(_KERNEL), field="score")
    rot32 = as_array(rot, _KERNEL, "rot", np.float32, (2, p))
    dim32 = as_array(dim, _KERNEL, "dim", np.float32, (3, p))
    reg32 = as_array(reg, _KERNEL, "reg", np.float32, (2, p))
    height32 = as_array(height, _KERNEL, "height", np.float32, (1, p))
    vel32 = as_array(vel, _KERNEL, "vel", np.float32, (2, p))
    (factor,) = positive_ints([out_size_factor], 1, _KERNEL, "out_size_factor")
    voxel = as_array(voxel_size, _KERNEL, "voxel_size", np.float64, (2,))
    cell = (factor * voxel).astype(np.float32)
    low = as_array(pc_range_min, _KERNEL, "pc_range_min", np.float32, (2,))
    bounds = as_array(post_center_range, _KERNEL, "post_center_range", np.float32, (6,))

    best = scores.max(axis=0)
    labels = scores.argmax(axis=0).astype(np.int64)
    size = np.exp(dim32)
    legacy = np.stack([reg32[0] * cell[0] + low[0], reg32[1] * cell[1] + low[1],
                       height32[0] - size[2] / np.float32(2.0), size[0], size[1], size[2],
                       np.arctan2(rot32[0], rot32[1]), vel32[0], vel32[1]], axis=1)
    centre = legacy[:, :3]
    keep = np.all((centre >= bounds[:3]) & (centre <= bounds[3:]), axis=1)
    if score_threshold > 0:
        keep &= best > np.float32(score_threshold)
    return from_head_boxes(legacy[keep], box_convention), best[keep], labels[keep]
