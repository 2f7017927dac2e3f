"""The synthetic vehicle's sensor rig: nuScenes' six cameras and its top LiDAR.

The numbers imitate the nuScenes data-collection car
(docs/reference.md#conventions, #input-pipeline): cameras in the nuScenes order with 1600×900
images, focal lengths of about 1266 px (809 px for the wide rear camera) and level optical axes at yaws 0°, −55°, +55°, 180°,
+110°, −110° in the ego frame (x forward, y left, z up, origin on the ground under the rear axle);
a 32-beam HDL-32E on the roof at 1.84 m whose frame is rotated −90° about z, so that LiDAR x
points to the vehicle's right and y forward, as in real nuScenes files. Everything downstream
(renderer, ray-caster, calibration tables, other modules' tests) reads the rig from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from pyquaternion import Quaternion

from bevdeploy.errors import InputError
from bevdeploy.presets import NUSCENES_CAMERAS

IMAGE_WIDTH = 1600
IMAGE_HEIGHT = 900

# Camera axes (x right, y down, z along the optical axis) expressed in the ego frame for a
# camera looking straight ahead: z_cam → +x_ego, x_cam → −y_ego, y_cam → −z_ego.
_FORWARD_CAMERA = np.array([[0.0, 0.0, 1.0],
                            [-1.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0]])


def yaw_matrix(yaw: float) -> np.ndarray:
    """3×3 rotation by ``yaw`` radians about +z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4×4 homogeneous transform from a 3×3 rotation and a translation."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    return m


def quaternion_wxyz(rotation: np.ndarray) -> list[float]:
    """nuScenes' quaternion order ``[w, x, y, z]`` of a 3×3 rotation, with w ≥ 0 so that the
    same rotation is always written with the same numbers."""
    q = Quaternion(matrix=rotation, atol=1e-9)
    if q.w < 0:
        q = -q
    return [float(v) for v in q.elements]


@dataclass(frozen=True)
class CameraSpec:
    """One pinhole camera, level with the ground, mounted on the ego vehicle."""

    name: str
    focal: float  # px, fx = fy
    principal: tuple[float, float]  # (cx, cy) px
    translation: tuple[float, float, float]  # camera centre in the ego frame, metres
    yaw_deg: float  # optical-axis heading in the ego frame, from +x (forward) toward +y (left)
    width: int = IMAGE_WIDTH
    height: int = IMAGE_HEIGHT

    @cached_property
    def intrinsics(self) -> np.ndarray:
        """3×3 K in pixels of the raw image."""
        k = np.eye(3)
        k[0, 0] = k[1, 1] = self.focal
        k[0, 2], k[1, 2] = self.principal
        return k

    @cached_property
    def rotation(self) -> np.ndarray:
        """3×3 camera → ego rotation."""
        return yaw_matrix(np.deg2rad(self.yaw_deg)) @ _FORWARD_CAMERA

    @cached_property
    def camera2ego(self) -> np.ndarray:
        return rigid(self.rotation, np.asarray(self.translation, dtype=np.float64))


@dataclass(frozen=True)
class LidarSpec:
    """A spinning multi-beam LiDAR: beams evenly spaced in elevation, one firing per azimuth
    step, range noise and a range limit."""

    name: str
    translation: tuple[float, float, float]  # sensor origin in the ego frame, metres
    yaw_deg: float  # rotation of the sensor frame about ego +z
    beams: int
    elevation_deg: tuple[float, float]  # (lowest, highest) beam
    azimuth_steps: int  # firings per revolution at density 1.0
    max_range: float  # metres
    min_range: float  # metres
    range_noise: float  # σ of the Gaussian range error, metres
    range_noise_clip: float  # the error is clipped to ±this, metres

    @cached_property
    def elevations(self) -> np.ndarray:
        """(beams,) radians, lowest first; the ring index of a point is its beam's position here."""
        return np.deg2rad(np.linspace(*self.elevation_deg, self.beams))

    @cached_property
    def rotation(self) -> np.ndarray:
        """3×3 LiDAR → ego rotation."""
        return yaw_matrix(np.deg2rad(self.yaw_deg))

    @cached_property
    def lidar2ego(self) -> np.ndarray:
        return rigid(self.rotation, np.asarray(self.translation, dtype=np.float64))


_CAMERA_PARAMS: dict[str, tuple[float, tuple[float, float], tuple[float, float, float], float]] = {
    # name: (focal, (cx, cy), translation in ego, yaw in degrees)
    "CAM_FRONT": (1266.4, (816.3, 491.5), (1.70, 0.02, 1.51), 0.0),
    "CAM_FRONT_RIGHT": (1260.8, (808.0, 495.3), (1.55, -0.49, 1.50), -55.0),
    "CAM_FRONT_LEFT": (1272.6, (826.6, 479.8), (1.52, 0.49, 1.51), 55.0),
    "CAM_BACK": (809.2, (829.2, 481.8), (0.03, 0.00, 1.58), 180.0),
    "CAM_BACK_LEFT": (1256.7, (817.8, 452.0), (1.04, 0.48, 1.59), 110.0),
    "CAM_BACK_RIGHT": (1259.5, (807.3, 501.2), (1.01, -0.48, 1.56), -110.0),
}

CAMERAS: tuple[CameraSpec, ...] = tuple(
    CameraSpec(name, *_CAMERA_PARAMS[name]) for name in NUSCENES_CAMERAS)
"""The six cameras in nuScenes order (the order of ``bevdeploy.presets.NUSCENES_CAMERAS``)."""

LIDAR = LidarSpec(
    name="LIDAR_TOP",
    translation=(0.94, 0.0, 1.84),
    yaw_deg=-90.0,
    beams=32,
    elevation_deg=(-30.67, 10.67),
    azimuth_steps=1200,
    max_range=80.0,
    min_range=1.0,
    range_noise=0.02,
    range_noise_clip=0.04,
)
"""The roof LiDAR (nuScenes' Velodyne HDL-32E)."""


def camera(name: str) -> CameraSpec:
    """The rig camera called ``name``."""
    for cam in CAMERAS:
        if cam.name == name:
            return cam
    raise InputError(f"no camera {name!r} in the synthetic rig; its cameras are "
                     f"{[c.name for c in CAMERAS]}", field="camera")
