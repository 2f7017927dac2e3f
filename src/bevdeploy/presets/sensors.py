"""The sensor part of a preset: camera rig and image transform, LiDAR points, voxelization."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bevdeploy.errors import excerpt

NUSCENES_CLASSES: tuple[str, ...] = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)
NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT",
    "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT",
)


@dataclass(frozen=True)
class CameraConfig:
    """The camera rig and the test-time image transform (docs/reference.md#camera-input).

    The transform is: resize the raw image by ``resize`` (``int(W·r), int(H·r)``), then crop
    ``image_size`` from the bottom centre (``bottom_crop_pct`` of the resized height is cut
    from the bottom first, 0 for nuScenes).
    """

    names: tuple[str, ...] = NUSCENES_CAMERAS
    raw_size: tuple[int, int] = (900, 1600)  # (H, W) of the sensor images
    image_size: tuple[int, int] = (256, 704)  # (H, W) fed to the network
    resize: float = 0.48
    bottom_crop_pct: float = 0.0
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255 scale
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def num_cameras(self) -> int:
        return len(self.names)

    @property
    def resized_size(self) -> tuple[int, int]:
        """(H, W) after the resize, with the reference's ``int()`` truncation."""
        return int(self.raw_size[0] * self.resize), int(self.raw_size[1] * self.resize)

    @property
    def crop_offset(self) -> tuple[int, int]:
        """(top, left) of the crop in the resized image: bottom-centre, as ``ImageAug3D``."""
        rh, rw = self.resized_size
        h, w = self.image_size
        top = int((1.0 - self.bottom_crop_pct) * rh) - h
        left = int(max(0, rw - w) / 2)
        return top, left

    def validate(self) -> None:
        if not self.names:
            raise ValueError("at least one camera is needed")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"camera names must be unique, got {excerpt(list(self.names))}")
        if min(self.raw_size) <= 0 or min(self.image_size) <= 0 or self.resize <= 0:
            raise ValueError("raw_size, image_size and resize must be positive")
        rh, rw = self.resized_size
        top, left = self.crop_offset
        if top < 0 or left < 0 or top + self.image_size[0] > rh or left + self.image_size[1] > rw:
            raise ValueError(
                f"image_size {self.image_size} does not fit in the resized image ({rh}, {rw}); "
                f"raise resize or shrink image_size")
        if not 0.0 <= self.bottom_crop_pct < 1.0:
            raise ValueError("bottom_crop_pct must be in [0, 1)")
        if min(self.std) <= 0:
            raise ValueError("std must be positive")


@dataclass(frozen=True)
class PointsConfig:
    """LiDAR input: features per point, range filter and multi-sweep aggregation
    (docs/reference.md#lidar-points)."""

    num_features: int = 5  # x, y, z, intensity, time lag (s)
    point_cloud_range: tuple[float, float, float, float, float, float] = (-54.0, -54.0, -5.0,
                                                                        54.0, 54.0, 3.0)
    sweeps: int = 9  # previous sweeps aggregated with the key sweep
    remove_close: float = 1.0  # sweeps only: drop |x| < r and |y| < r in the sweep's own frame
    max_points: int = 300_000  # the deploy path's point buffer (CUDA-BEVFusion's bound)

    def validate(self) -> None:
        if self.num_features not in (4, 5):
            raise ValueError(f"num_features must be 4 (x,y,z,intensity) or 5 (+time lag), "
                             f"got {self.num_features}")
        r = self.point_cloud_range
        if not all(math.isfinite(v) for v in r) or not (r[0] < r[3] and r[1] < r[4] and r[2] < r[5]):
            raise ValueError(f"point_cloud_range must be finite [xmin,ymin,zmin,xmax,ymax,zmax] "
                             f"with min < max, got {list(r)}")
        if self.sweeps < 0 or self.remove_close < 0 or self.max_points <= 0:
            raise ValueError("sweeps, remove_close must be >= 0 and max_points > 0")


@dataclass(frozen=True)
class VoxelConfig:
    """Hard voxelization parameters (docs/reference.md#voxelization): the mean of up to
    ``max_points`` per voxel."""

    voxel_size: tuple[float, float, float] = (0.075, 0.075, 0.2)
    max_points: int = 10
    max_voxels: int = 160_000  # test
    max_voxels_train: int = 120_000

    def validate(self) -> None:
        if min(self.voxel_size) <= 0 or self.max_points <= 0 or self.max_voxels <= 0:
            raise ValueError("voxel_size, max_points and max_voxels must be positive")
