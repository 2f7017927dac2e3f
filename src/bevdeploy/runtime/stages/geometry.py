"""Stage ``geometry``: the calibration → the BEV-pool plan, computed once per calibration.

Where each frustum point (camera, depth bin, feature row, feature column) lands in the BEV grid
depends only on the camera matrices, so the sorted point indices and the per-cell intervals are
computed when the calibration changes and reused for every following frame, as CUDA-BEVFusion's
``Geometry::update`` does (docs/reference.md#geometry-precompute) — but with its latent bugs fixed
in the kernel: dropped points are excluded rather than sharing rank 0 with cell (0, 0, 0), the
output offset uses the right strides for a rectangular grid, and each camera keeps its own
``img_aug``.

Unlike NVIDIA's, the calibration is not frozen: a frame whose matrices differ (a recalibrated
rig, another vehicle) recomputes the plan. The cache key is a hash of the exact float32 bytes
the kernel consumes, so equal inputs can never produce a stale plan.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from bevdeploy.data.frame import Calibration
from bevdeploy.package import DeployPackage, runtime_parameters
from bevdeploy.runtime.kernels import kernels_for

Bound = tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class GeometryParams:
    """Frustum and BEV grid of a package (the manifest's ``geometry`` block)."""

    image_size: tuple[int, int]  # (H, W) network image
    feature_size: tuple[int, int]  # (h, w) camera feature map
    dbound: Bound
    xbound: Bound
    ybound: Bound
    zbound: Bound
    img_aug: np.ndarray  # (N, 4, 4) float32

    @classmethod
    def from_package(cls, pkg: DeployPackage) -> "GeometryParams":
        g = runtime_parameters(pkg.preset)["geometry"]
        return cls(image_size=tuple(g["image_size"]), feature_size=tuple(g["feature_size"]),
                   dbound=tuple(g["dbound"]), xbound=tuple(g["xbound"]),
                   ybound=tuple(g["ybound"]), zbound=tuple(g["zbound"]),
                   img_aug=np.asarray(g["img_aug"], dtype=np.float32))


def calibration_key(*matrices: np.ndarray) -> bytes:
    """A digest of the matrices' shapes and float32 bytes: equal keys mean equal kernel inputs."""
    h = hashlib.blake2b(digest_size=16)
    for m in matrices:
        a = np.ascontiguousarray(m, dtype=np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()


class GeometryStage:
    """``run(calib, lidar_aug=None) → plan``, cached for the latest calibration: a
    ``BevPoolPlan`` on the host (``device=None``), a ``DeviceBevPoolPlan`` built and kept on a
    torch device (the CUDA kernel; the calibration is read on the host either way).

    ``computations`` counts how many plans were actually computed (tests and benchmarks use it
    to tell a cache hit from a recomputation).
    """

    name = "geometry"

    def __init__(self, params: GeometryParams, *, device: str | None = None) -> None:
        self.params = params
        self.device = device
        self.computations = 0
        self._kernels = kernels_for(device)
        # the CUDA kernel builds the plan where it is told to
        self._where: dict[str, str] = {} if device is None else {"device": device}
        self._key: bytes | None = None
        self._plan: Any = None

    def run(self, calib: Calibration, lidar_aug: np.ndarray | None = None) -> Any:
        """The plan for ``calib``; ``lidar_aug`` is the LiDAR augmentation (identity at test)."""
        p = self.params
        camera2lidar = np.ascontiguousarray(calib.camera2lidar, dtype=np.float32)
        intrinsics = np.ascontiguousarray(calib.intrinsics, dtype=np.float32)
        aug = np.eye(4, dtype=np.float32) if lidar_aug is None else \
            np.ascontiguousarray(lidar_aug, dtype=np.float32)
        key = calibration_key(camera2lidar, intrinsics, p.img_aug, aug)
        if key != self._key or self._plan is None:
            self._plan = self._kernels.geometry(camera2lidar, intrinsics, p.img_aug, aug,
                                                p.image_size, p.feature_size, p.dbound,
                                                p.xbound, p.ybound, p.zbound, **self._where)
            self._key = key
            self.computations += 1
        return self._plan
