"""The one place where the 3D box convention is stated and converted.

**bevdeploy convention** (``Detections.boxes`` and ``GroundTruth.boxes``), in the LiDAR frame of
the key sweep (nuScenes LIDAR_TOP: x right, y forward, z up)::

    [x, y, z, l, w, h, yaw, vx, vy]

* ``(x, y, z)`` is the geometric centre of the box (metres);
* ``l`` is the extent along the heading, ``w`` across it, ``h`` vertical;
* ``yaw`` is the heading: the angle of the length axis from +x towards +y (radians), i.e. the
  nuScenes ``Box.orientation`` yaw expressed in the LiDAR frame;
* ``(vx, vy)`` is the velocity in m/s in the LiDAR frame.

The reference network (pre-1.0 mmdet3d, docs/reference.md#box-convention) speaks another dialect:
sizes ``(w, l, h)``, yaw ``θ_mm = −yaw − π/2`` and z at the box bottom. ``from_mmdet3d_legacy`` and
``to_mmdet3d_legacy`` translate between the two; nothing else should know about it.

mmdetection3d ≥ 1.0 (``LiDARInstance3DBoxes``, what its ``projects/BEVFusion`` trains on and what
its ``data_list`` info files hold) speaks a third: sizes ``(l, w, h)``, the heading yaw (0 along
+x, growing toward +y, as ours) and z at the box bottom. ``from_mmdet3d_v1`` / ``to_mmdet3d_v1``
translate it. ``from_head_boxes`` picks the translation of a head's decoded boxes by the
package's box convention (``vocabulary.BOX_CONVENTIONS``).
"""

from __future__ import annotations

import numpy as np

from bevdeploy.vocabulary import BOX_CONVENTION_MIT, BOX_CONVENTION_MMDET3D, BOX_CONVENTIONS

BOX_FIELDS: tuple[str, ...] = ("x", "y", "z", "l", "w", "h", "yaw", "vx", "vy")


def wrap_angle(a: np.ndarray) -> np.ndarray:
    """Wrap angles to [−π, π)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def from_mmdet3d_legacy(boxes: np.ndarray, z_is_bottom: bool = True) -> np.ndarray:
    """``[x, y, z, w, l, h, θ_mm, vx, vy]`` (reference decode) → bevdeploy convention.

    With ``z_is_bottom`` the height is added back so that z is the centre. Note the reference's
    z quirk (docs/reference.md#z-quirk): its decoded "bottom" z is already ≈ the true centre,
    so the model's box coder passes ``z_is_bottom=False``.
    """
    b = np.asarray(boxes, dtype=np.float32)
    out = np.empty((b.shape[0], 9), dtype=np.float32)
    out[:, 0:2] = b[:, 0:2]
    out[:, 2] = b[:, 2] + (b[:, 5] / 2 if z_is_bottom else 0.0)
    out[:, 3] = b[:, 4]
    out[:, 4] = b[:, 3]
    out[:, 5] = b[:, 5]
    out[:, 6] = wrap_angle(-b[:, 6] - np.pi / 2)
    out[:, 7:9] = b[:, 7:9] if b.shape[1] >= 9 else 0.0
    return out


def to_mmdet3d_legacy(boxes: np.ndarray, z_is_bottom: bool = True) -> np.ndarray:
    """bevdeploy convention → ``[x, y, z, w, l, h, θ_mm, vx, vy]`` (inverse of the above)."""
    b = np.asarray(boxes, dtype=np.float32)
    out = np.empty((b.shape[0], 9), dtype=np.float32)
    out[:, 0:2] = b[:, 0:2]
    out[:, 2] = b[:, 2] - (b[:, 5] / 2 if z_is_bottom else 0.0)
    out[:, 3] = b[:, 4]
    out[:, 4] = b[:, 3]
    out[:, 5] = b[:, 5]
    out[:, 6] = wrap_angle(-b[:, 6] - np.pi / 2)
    out[:, 7:9] = b[:, 7:9]
    return out


def from_mmdet3d_v1(boxes: np.ndarray, z_is_bottom: bool = True) -> np.ndarray:
    """mmdetection3d ≥ 1.0 ``[x, y, z, l, w, h, yaw, vx, vy]`` → bevdeploy convention: only z
    moves (from the bottom to the centre with ``z_is_bottom``); the yaw is wrapped."""
    b = np.asarray(boxes, dtype=np.float32)
    out = np.zeros((b.shape[0], 9), dtype=np.float32)
    out[:, :7] = b[:, :7]
    out[:, 2] = b[:, 2] + (b[:, 5] / 2 if z_is_bottom else 0.0)
    out[:, 6] = wrap_angle(b[:, 6])
    if b.shape[1] >= 9:
        out[:, 7:9] = b[:, 7:9]
    return out


def to_mmdet3d_v1(boxes: np.ndarray, z_is_bottom: bool = True) -> np.ndarray:
    """bevdeploy convention → mmdetection3d ≥ 1.0 ``[x, y, z, l, w, h, yaw, vx, vy]``."""
    b = np.asarray(boxes, dtype=np.float32)
    out = b[:, :9].astype(np.float32, copy=True)
    out[:, 2] = b[:, 2] - (b[:, 5] / 2 if z_is_bottom else 0.0)
    return out


def from_head_boxes(decoded: np.ndarray, convention: str) -> np.ndarray:
    """A head's decoded boxes ``[x, y, height − s₂/2, s₀, s₁, s₂, atan2(sin, cos), vx, vy]``
    (``s = exp(dim)``) → bevdeploy convention, read in the ``convention`` the head was trained
    in: ``mit`` (legacy dialect; the z quirk makes the decoded z the centre already,
    docs/reference.md#z-quirk) or ``mmdet3d-1.x`` (the decoded z is the bottom)."""
    if convention == BOX_CONVENTION_MIT:
        return from_mmdet3d_legacy(decoded, z_is_bottom=False)
    if convention == BOX_CONVENTION_MMDET3D:
        return from_mmdet3d_v1(decoded, z_is_bottom=True)
    raise ValueError(f"box convention {convention!r} is none of {list(BOX_CONVENTIONS)}")


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(K, 8, 3) corners. Order: bottom face (front-left, front-right, rear-right, rear-left),
    then the top face in the same order; "front" is +l/2 along the heading."""
    b = np.asarray(boxes, dtype=np.float64)
    l, w, h = b[:, 3:4], b[:, 4:5], b[:, 5:6]
    sx = np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=np.float64) / 2
    sy = np.array([1, -1, -1, 1, 1, -1, -1, 1], dtype=np.float64) / 2
    sz = np.array([-1, -1, -1, -1, 1, 1, 1, 1], dtype=np.float64) / 2
    lx, ly, lz = l * sx, w * sy, h * sz
    c, s = np.cos(b[:, 6:7]), np.sin(b[:, 6:7])
    x = b[:, 0:1] + c * lx - s * ly
    y = b[:, 1:2] + s * lx + c * ly
    z = b[:, 2:3] + lz
    return np.stack([x, y, z], axis=-1)


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Boolean (P, K): point p lies inside box k (closed box, yaw-aware)."""
    p = np.asarray(points, dtype=np.float64)[:, None, :3]
    b = np.asarray(boxes, dtype=np.float64)[None]
    d = p - b[..., 0:3]
    c, s = np.cos(b[..., 6]), np.sin(b[..., 6])
    local_x = c * d[..., 0] + s * d[..., 1]
    local_y = -s * d[..., 0] + c * d[..., 1]
    return ((np.abs(local_x) <= b[..., 3] / 2) & (np.abs(local_y) <= b[..., 4] / 2)
            & (np.abs(d[..., 2]) <= b[..., 5] / 2))
