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

from bevdeploy.data.frame import Calibration
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
    """One pinhole camera mounted on the ego vehicle: level with the ground and turned by
    ``yaw_deg`` (the synthetic rigs), or mounted with any rotation ``mount`` and focal lengths
    ``focal``/``focal_y`` (a rig file's camera, ``rig_file_cameras``)."""

    name: str
    focal: float  # px, fx (and fy unless ``focal_y``)
    principal: tuple[float, float]  # (cx, cy) px
    translation: tuple[float, float, float]  # camera centre in the ego frame, metres
    yaw_deg: float  # optical-axis heading in the ego frame, from +x (forward) toward +y (left)
    width: int = IMAGE_WIDTH
    height: int = IMAGE_HEIGHT
    focal_y: float | None = None  # px, fy where it differs from fx
    # 3×3 camera → ego rotation (rows) of a camera that is not level; None: level at yaw_deg
    mount: tuple[tuple[float, float, float], ...] | None = None

    @property
    def level(self) -> bool:
        """Optical axis horizontal and image rows parallel to the ground (no ``mount``)."""
        return self.mount is None

    @cached_property
    def intrinsics(self) -> np.ndarray:
        """3×3 K in pixels of the raw image."""
        k = np.eye(3)
        k[0, 0] = k[1, 1] = self.focal
        if self.focal_y is not None:
            k[1, 1] = self.focal_y
        k[0, 2], k[1, 2] = self.principal
        return k

    @cached_property
    def rotation(self) -> np.ndarray:
        """3×3 camera → ego rotation."""
        if self.mount is not None:
            return np.array(self.mount, dtype=np.float64)
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


RING_FOV_RANGE_DEG = (60.0, 120.0)  # horizontal field of view of a ring camera, clamped
RING_RADIUS = 0.8  # metres from the roof centre
RING_CENTRE = (1.0, 0.0, 1.55)  # roof centre in the ego frame, metres


def ring_fov_deg(count: int) -> float:
    """Horizontal field of view of each of ``count`` ring cameras: its share of the circle
    plus 10° of overlap with each neighbour's, clamped to ``RING_FOV_RANGE_DEG``."""
    low, high = RING_FOV_RANGE_DEG
    return float(min(high, max(low, 360.0 / count + 10.0)))


def ring_cameras(names: tuple[str, ...] | list[str], raw_size: tuple[int, int]
                 ) -> tuple[CameraSpec, ...]:
    """Cameras for a rig that is not nuScenes': ``names`` placed evenly around the roof in the
    given order, the first facing forward and each next one ``360°/N`` further counter-clockwise
    (toward the left), level and facing outwards, with ``raw_size`` (H, W) images, the
    principal point at the centre and the focal length of ``ring_fov_deg``."""
    count = len(names)
    height, width = raw_size
    focal = (width / 2.0) / np.tan(np.deg2rad(ring_fov_deg(count)) / 2.0)
    specs = []
    for i, name in enumerate(names):
        yaw = 360.0 * i / count
        yaw = yaw - 360.0 if yaw > 180.0 else yaw
        c, s = np.cos(np.deg2rad(yaw)), np.sin(np.deg2rad(yaw))
        translation = (RING_CENTRE[0] + RING_RADIUS * c, RING_CENTRE[1] + RING_RADIUS * s,
                       RING_CENTRE[2])
        specs.append(CameraSpec(name, float(focal), (width / 2.0, height / 2.0),
                                tuple(float(v) for v in translation), float(yaw), width=width,
                                height=height))
    return tuple(specs)


def preset_cameras(names: tuple[str, ...] | list[str], raw_size: tuple[int, int]
                   ) -> tuple[CameraSpec, ...]:
    """The synthetic cameras of a preset's rig: nuScenes' own (``CAMERAS``, in the preset's
    order) when every name is a nuScenes camera and the raw size is nuScenes' 900×1600, else
    ``ring_cameras``."""
    by_name = {cam.name: cam for cam in CAMERAS}
    if all(n in by_name for n in names) and tuple(raw_size) == (IMAGE_HEIGHT, IMAGE_WIDTH):
        return tuple(by_name[n] for n in names)
    return ring_cameras(names, raw_size)


def rig_calibration(cameras: tuple[CameraSpec, ...]) -> Calibration:
    """The ``Calibration`` of synthetic cameras mounted with the synthetic LiDAR (no ego motion
    between the captures): ``camera2lidar = lidar2ego⁻¹ · camera2ego``."""
    ego2lidar = np.linalg.inv(LIDAR.lidar2ego)
    return Calibration(camera_names=tuple(c.name for c in cameras),
                       intrinsics=np.stack([c.intrinsics for c in cameras]),
                       camera2lidar=np.stack([ego2lidar @ c.camera2ego for c in cameras]),
                       lidar2ego=LIDAR.lidar2ego.copy())
