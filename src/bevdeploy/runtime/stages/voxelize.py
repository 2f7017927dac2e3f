"""Stage ``voxelize``: the point range filter and hard voxelization.

``select`` applies the package's point-cloud range with strict inequalities on all six bounds,
as the reference's ``PointsRangeFilter`` (docs/reference.md#lidar-points); its result feeds both the
depth stage and ``run``, exactly as the reference model filters once before either branch. ``run``
groups the points into voxels: first-appearance voxel order, the first ``max_points_per_voxel``
points of each in point order, at most ``max_voxels`` voxels, feature = mean of the kept points
(docs/reference.md#voxelization) — deterministic, where NVIDIA's hash kernel is not
(docs/reference.md#hash-voxelization).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bevdeploy.errors import InputError
from bevdeploy.package import DeployPackage, runtime_parameters
from bevdeploy.runtime.kernels import in_range, kernels_for


@dataclass(frozen=True, eq=False)
class VoxelizeParams:
    """The manifest's ``voxelization`` block."""

    num_point_features: int
    point_cloud_range: np.ndarray  # (6,) float32 [xmin, ymin, zmin, xmax, ymax, zmax]
    voxel_size: np.ndarray  # (3,) float32
    grid_size: tuple[int, int, int]  # (X, Y, Z)
    max_points_per_voxel: int
    max_voxels: int
    max_points: int  # the deploy path's point buffer bound

    @classmethod
    def from_package(cls, pkg: DeployPackage) -> "VoxelizeParams":
        v = runtime_parameters(pkg.preset)["voxelization"]
        return cls(num_point_features=v["num_point_features"],
                   point_cloud_range=np.asarray(v["point_cloud_range"], dtype=np.float32),
                   voxel_size=np.asarray(v["voxel_size"], dtype=np.float32),
                   grid_size=tuple(v["grid_size"]),
                   max_points_per_voxel=v["max_points_per_voxel"], max_voxels=v["max_voxels"],
                   max_points=v["max_points"])


@dataclass(frozen=True)
class Voxels:
    """Voxelized points: ``feats (M, F)`` mean, ``coords (M, 3)`` int32 (x, y, z),
    ``counts (M,)`` int32 points per voxel; numpy arrays, or tensors on the stage's device."""

    feats: Any
    coords: Any
    counts: Any

    def __len__(self) -> int:
        return int(self.coords.shape[0])


class VoxelizeStage:
    """``select(points) → points in range``; ``run(points) → Voxels``.

    ``select`` always runs on the host, where the frame arrives: it shrinks what a device
    schedule uploads and enforces the bound that sizes its buffers. ``run`` runs on the host
    (``device=None``) or on a torch device (points and voxels as tensors there).
    """

    name = "voxelize"

    def __init__(self, params: VoxelizeParams, *, device: str | None = None) -> None:
        self.params = params
        self.device = device
        self._kernels = kernels_for(device)

    def select(self, points: np.ndarray, *, source: str = "<frame>") -> np.ndarray:
        """Points strictly inside the range, as contiguous float32 (P', F).

        More points than the package's ``max_points`` are refused rather than truncated
        (NVIDIA's runtime silently drops the tail, docs/reference.md#memory-limits): the bound sizes
        the device buffers, and a clipped cloud would quietly lose whatever sweep came last.
        """
        r = self.params.point_cloud_range
        kept = in_range(points, r[:3], r[3:])
        if kept.shape[0] > self.params.max_points:
            raise InputError(f"{kept.shape[0]:,} points in range exceed the package's bound of "
                             f"{self.params.max_points:,} (points.max_points); re-export with a "
                             f"larger bound or use fewer sweeps", path=source, field="points")
        return kept

    def run(self, points: Any) -> Voxels:
        p = self.params
        feats, coords, counts, *count = self._kernels.voxelize(
            points, p.voxel_size, p.point_cloud_range[:3], np.asarray(p.grid_size, dtype=np.int32),
            p.max_points_per_voxel, p.max_voxels)
        if count:  # the CUDA kernel's fixed-capacity rows and the voxel count on the device
            voxels = int(count[0])  # the SCN's shapes: a device LiDAR branch's first wait
            feats, coords, counts = feats[:voxels], coords[:voxels], counts[:voxels]
        return Voxels(feats, coords, counts)
