"""Spinning-LiDAR ray-caster: every beam of every azimuth step against the ground and the boxes.

The sweep is cast at one instant (the sweep's timestamp) instead of over the 50 ms of a
revolution. Real sensors smear moving objects across a sweep; casting at one instant keeps the
key sweep exactly consistent with the annotations of its sample, which is what
``num_lidar_pts`` and the tests of other modules rely on.

Ray–box intersection is the slab test in each box's own frame, vectorised over the azimuth
columns that can reach the box (a few percent of a sweep for most boxes); the ground is the
plane z = 0. Returns get Gaussian range noise (clipped, see ``LidarSpec``), a
range-dependent dropout, and an intensity from the surface's reflectivity, the incidence angle
and speckle noise, rounded to integers 0..255 like the raw nuScenes values.
"""

from __future__ import annotations

import numpy as np

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.synthetic.rig import LidarSpec

GROUND = -1  # ``hit`` value of a ground return


def beam_directions(lidar: LidarSpec, azimuth_steps: int) -> np.ndarray:
    """(A, B, 3) unit ray directions in the sensor frame: A azimuth steps counter-clockwise
    from +x, B beams from the lowest up (the ring index is the beam's position)."""
    azimuth = 2 * np.pi * np.arange(azimuth_steps) / azimuth_steps
    elevation = lidar.elevations
    ce = np.cos(elevation)[None, :]
    return np.stack([ce * np.cos(azimuth)[:, None], ce * np.sin(azimuth)[:, None],
                     np.broadcast_to(np.sin(elevation)[None, :], (azimuth_steps, lidar.beams))],
                    axis=-1)


def _columns_towards(origin: np.ndarray, column_azimuth: np.ndarray, body: np.ndarray
                     ) -> np.ndarray:
    """Indices of the azimuth columns whose vertical half-plane can meet ``body``'s footprint
    (all columns when the origin is above the footprint)."""
    corners = box_corners(np.concatenate([body, [0.0, 0.0]])[None])[0, :4, :2] - origin[:2]
    centre = np.arctan2(body[1] - origin[1], body[0] - origin[0])
    spread = (np.arctan2(corners[:, 1], corners[:, 0]) - centre + np.pi) % (2 * np.pi) - np.pi
    if spread.max() - spread.min() >= np.pi:
        return np.arange(len(column_azimuth))
    offset = (column_azimuth - centre + np.pi) % (2 * np.pi) - np.pi
    return np.flatnonzero((offset >= spread.min() - 1e-9) & (offset <= spread.max() + 1e-9))


def cast_rays(origin: np.ndarray, directions: np.ndarray, bodies: np.ndarray, max_range: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hit of each ray ``origin + t·direction`` against the ground plane z = 0 and the
    boxes ``bodies`` (K, 7) ``[x, y, z, l, w, h, yaw]``.

    ``directions`` (A, B, 3) are unit vectors in the global frame arranged as a spinning
    sensor fires them: all rays of one column ``directions[a]`` share an azimuth. That lets each
    box be tested only against the columns that point at it. Returns, each (A, B): the
    distance ``t`` (inf where nothing is hit), the index of the box hit (``GROUND`` for the
    ground, −2 for nothing) and |cos| of the incidence angle.
    """
    shape = directions.shape[:2]
    best = np.full(shape, np.inf)
    hit = np.full(shape, -2, dtype=np.int64)
    cos_incidence = np.zeros(shape)
    dz = directions[..., 2]
    down = dz < 0
    best[down] = -origin[2] / dz[down]
    hit[down] = GROUND
    cos_incidence[down] = -dz[down]

    column_azimuth = np.arctan2(directions[:, 0, 1], directions[:, 0, 0])
    for k, body in enumerate(bodies):
        x, y, z, length, width, height, yaw = body
        rel = origin - np.array([x, y, z])
        if np.linalg.norm(rel) - 0.5 * np.linalg.norm([length, width, height]) > max_range:
            continue
        cols = _columns_towards(origin, column_azimuth, body)
        if not len(cols):
            continue
        c, s = np.cos(yaw), np.sin(yaw)
        # Ray origin and directions in the box frame; slab test per axis.
        o = (c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2])
        dw = directions[cols]
        d = (c * dw[..., 0] + s * dw[..., 1], -s * dw[..., 0] + c * dw[..., 1], dw[..., 2])
        half = (length / 2, width / 2, height / 2)
        near, far = [], []
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis in range(3):
                t1 = (-half[axis] - o[axis]) / d[axis]
                t2 = (half[axis] - o[axis]) / d[axis]
                near.append(np.minimum(t1, t2))
                far.append(np.maximum(t1, t2))
        t_enter = np.maximum(np.maximum(near[0], near[1]), near[2])
        t_exit = np.minimum(np.minimum(far[0], far[1]), far[2])
        closer = (t_enter > 0) & (t_enter <= t_exit) & (t_enter < best[cols])
        if not closer.any():
            continue
        rows, beams = np.nonzero(closer)
        face_axis = np.argmax(np.stack(near)[:, rows, beams], axis=0)
        best[cols[rows], beams] = t_enter[rows, beams]
        hit[cols[rows], beams] = k
        cos_incidence[cols[rows], beams] = np.abs(np.stack(d)[face_axis, rows, beams])
    return best, hit, cos_incidence


def scan(lidar: LidarSpec, lidar2global: np.ndarray, bodies: np.ndarray,
         reflectivity: np.ndarray, ground_reflectivity: float, azimuth_steps: int,
         rng: np.random.Generator) -> np.ndarray:
    """Cast one sweep of ``lidar`` at pose ``lidar2global`` (4×4) against ``bodies`` (K, 7)
    whose surfaces have mean intensities ``reflectivity`` (K,). Returns (N, 5) float32
    ``x, y, z, intensity, ring`` in the sensor frame, in firing order."""
    grid = beam_directions(lidar, azimuth_steps)
    t, hit, cos_inc = (a.reshape(-1) for a in cast_rays(
        lidar2global[:3, 3], grid @ lidar2global[:3, :3].T, bodies, lidar.max_range))
    dirs = grid.reshape(-1, 3)
    ring = np.broadcast_to(np.arange(lidar.beams), grid.shape[:2]).reshape(-1)

    n = len(dirs)
    noise = np.clip(rng.normal(0.0, lidar.range_noise, n), -lidar.range_noise_clip,
                    lidar.range_noise_clip)
    speckle = rng.normal(0.0, 1.0, (2, n))
    dropout = rng.random(n)
    hit_somewhere = t <= lidar.max_range
    t_safe = np.where(hit_somewhere, t, 0.0)
    distance = t_safe + noise
    # Weak far returns get lost; a small share of all returns does.
    p_drop = 0.01 + 0.25 * (t_safe / lidar.max_range) ** 4
    keep = hit_somewhere & (distance >= lidar.min_range) & (dropout >= p_drop)

    surface = np.where(hit >= 0, reflectivity[np.maximum(hit, 0)] if len(reflectivity) else 0.0,
                       ground_reflectivity)
    intensity = surface * (0.3 + 0.7 * cos_inc) * np.exp(0.15 * speckle[0]) + speckle[1]
    intensity = np.round(np.clip(intensity, 0.0, 255.0))

    points = np.concatenate([distance[:, None] * dirs, intensity[:, None], ring[:, None]], axis=1)
    return points[keep].astype(np.float32)
