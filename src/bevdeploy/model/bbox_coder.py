"""TransFusion box coder: boxes ↔ regression targets
(docs/reference.md#box-decoding, #training-settings).

The network regresses in the box convention it was trained in (``box_convention``: the
reference's legacy mmdet3d dialect, ``mit``, unless the checkpoint is an mmdetection3d-1.x one), so
the coder is where the convention is crossed, once per direction, through ``bevdeploy.data.boxes``.
For ``mit``:

* ``encode`` takes bevdeploy boxes and returns the 10 targets the checkpoint was trained on:
  ``[cx, cy, height, log w, log l, log h, sin θ, cos θ, vx, vy]`` with ``(cx, cy)`` in BEV-cell
  units ``(x − pc_min) / (out_size_factor · voxel_size)``, ``θ`` the legacy yaw, and
  ``height = z_centre + h/2``: the reference's z quirk (its info files store the centre z and
  wrap it as if it were the bottom, then add h/2 "bottom to gravity centre").
* ``decode`` inverts it: ``z = height − h/2`` is therefore ≈ the object's centre, and the legacy
  box is converted with ``from_mmdet3d_legacy(..., z_is_bottom=False)``.

For ``mmdet3d-1.x`` (mmdetection3d's ``projects/BEVFusion``) the targets are the same arithmetic
on its ``LiDARInstance3DBoxes``: sizes ``(l, w, h)``, the heading yaw, and ``height = z_bottom +
h/2`` (the true centre), so the decoded ``z = height − h/2`` is the bottom and goes back up by h/2.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bevdeploy.data.boxes import from_head_boxes, to_mmdet3d_legacy, to_mmdet3d_v1
from bevdeploy.data.frame import Detections
from bevdeploy.errors import InputError
from bevdeploy.presets import Preset
from bevdeploy.vocabulary import BOX_CONVENTION_MIT, BOX_CONVENTIONS

CODE_SIZE = 10


class TransFusionBBoxCoder:
    """Box coding for the TransFusion head, with every constant read from the preset and the
    box convention from the checkpoint (``model.factory`` sets it after loading)."""

    def __init__(self, preset: Preset, box_convention: str = BOX_CONVENTION_MIT) -> None:
        if box_convention not in BOX_CONVENTIONS:
            raise InputError(f"box convention {box_convention!r} is none of "
                             f"{list(BOX_CONVENTIONS)}", field="box_convention")
        self.box_convention = box_convention
        head = preset.model.head
        r = preset.points.point_cloud_range
        v = preset.voxel.voxel_size
        self.pc_min = (float(r[0]), float(r[1]))
        self.cell_size = (head.out_size_factor * float(v[0]), head.out_size_factor * float(v[1]))
        self.post_center_range = tuple(float(x) for x in head.post_center_range)
        self.score_threshold = float(head.score_threshold)
        self.class_names = tuple(preset.classes)

    def encode(self, boxes: Tensor | np.ndarray) -> Tensor:
        """(K, 9) bevdeploy boxes ``[x, y, z, l, w, h, yaw, vx, vy]`` → (K, 10) float32 targets
        (on the input's device when it is a tensor)."""
        device = boxes.device if isinstance(boxes, Tensor) else torch.device("cpu")
        array = boxes.detach().cpu().numpy() if isinstance(boxes, Tensor) else np.asarray(boxes)
        if array.ndim != 2 or array.shape[1] != 9:
            raise InputError(f"expected (K, 9) boxes [x, y, z, l, w, h, yaw, vx, vy], got "
                             f"{array.shape}", field="gt_boxes")
        if not np.isfinite(array).all() or (array[:, 3:6] <= 0).any():
            raise InputError("boxes must be finite with positive l, w, h", field="gt_boxes")
        native = to_mmdet3d_legacy(array, z_is_bottom=False) \
            if self.box_convention == BOX_CONVENTION_MIT else to_mmdet3d_v1(array)
        legacy = torch.from_numpy(native)
        x, y, z, size0, size1, height, theta = legacy[:, :7].unbind(1)
        targets = torch.stack([
            (x - self.pc_min[0]) / self.cell_size[0],
            (y - self.pc_min[1]) / self.cell_size[1],
            z + height / 2,
            size0.log(), size1.log(), height.log(),
            theta.sin(), theta.cos(),
            legacy[:, 7], legacy[:, 8],
        ], dim=1)
        return targets.to(device)

    def legacy_boxes(self, rot: Tensor, dim: Tensor, center: Tensor, height: Tensor,
                     vel: Tensor) -> Tensor:
        """(B, P, 9) boxes of **every** proposal, unfiltered, in the head's own convention
        (``mit``: ``[x, y, z, w, l, h, θ_mm, vx, vy]``; the Hungarian matcher needs all P in
        order; ``decode`` filters and converts)."""
        x = center[:, 0] * self.cell_size[0] + self.pc_min[0]
        y = center[:, 1] * self.cell_size[1] + self.pc_min[1]
        size = dim.exp()
        z = height[:, 0] - size[:, 2] / 2
        theta = torch.atan2(rot[:, 0], rot[:, 1])
        return torch.stack([x, y, z, size[:, 0], size[:, 1], size[:, 2], theta,
                            vel[:, 0], vel[:, 1]], dim=-1)

    def decode(self, scores: Tensor, rot: Tensor, dim: Tensor, center: Tensor, height: Tensor,
               vel: Tensor) -> list[Detections]:
        """Head outputs (each (B, n, P)) → one ``Detections`` per batch item.

        ``scores`` (B, K, P) are the final per-class scores (zero except the query's class);
        the label is their argmax. Boxes whose (x, y, z) lies outside ``post_center_range``
        (inclusive) are dropped; a positive ``score_threshold`` keeps only scores above it
        (0 means no threshold, as the reference's falsy 0.0). There is no NMS.
        """
        best, labels = scores.max(dim=1)
        legacy = self.legacy_boxes(rot, dim, center, height, vel)
        lo = legacy.new_tensor(self.post_center_range[:3])
        hi = legacy.new_tensor(self.post_center_range[3:])
        keep = ((legacy[..., :3] >= lo) & (legacy[..., :3] <= hi)).all(dim=-1)
        if self.score_threshold > 0:
            keep &= best > self.score_threshold
        out = []
        for b in range(legacy.shape[0]):
            boxes = legacy[b][keep[b]].detach().float().cpu().numpy()
            out.append(Detections(from_head_boxes(boxes, self.box_convention),
                                  best[b][keep[b]].detach().float().cpu().numpy(),
                                  labels[b][keep[b]].cpu().numpy(), self.class_names))
        return out
