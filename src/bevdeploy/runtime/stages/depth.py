"""Stage ``depth``: LiDAR points → the sparse depth image fed to ``camera.backbone``.

Every point is projected into every camera with ``lidar2image`` and the image augmentation; the
pixel it lands on stores its (clamped) camera depth, all other pixels are 0. Where several
points hit one pixel, the point latest in point order wins — the rule the PyTorch reference
fixes, where NVIDIA's kernel leaves it to a write race (docs/reference.md#depth-kernel).

``lidar2image`` depends on the frame's calibration and is passed per call; ``img_aug`` is the
package's (one matrix per camera, never camera 0's for all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bevdeploy.package import DeployPackage, runtime_parameters
from bevdeploy.runtime.kernels import kernels_for


@dataclass(frozen=True, eq=False)
class DepthParams:
    """Network image size and the per-camera image augmentation (the manifest's geometry)."""

    image_size: tuple[int, int]  # (H, W)
    img_aug: np.ndarray  # (N, 4, 4) float32

    @classmethod
    def from_package(cls, pkg: DeployPackage) -> "DepthParams":
        geometry = runtime_parameters(pkg.preset)["geometry"]
        return cls(image_size=tuple(geometry["image_size"]),
                   img_aug=np.asarray(geometry["img_aug"], dtype=np.float32))


class DepthStage:
    """``run(points (P, F), lidar2image (N, 4, 4)) → (1, N, 1, H, W) float32`` metres. The
    points are a numpy array on the host (``device=None``) or a tensor on ``device``; the
    calibration is a host array either way (the CUDA kernel uploads it)."""

    name = "depth"

    def __init__(self, params: DepthParams, *, device: str | None = None) -> None:
        self.params = params
        self.device = device
        self._kernels = kernels_for(device)

    def run(self, points: Any, lidar2image: np.ndarray) -> Any:
        depth = self._kernels.depth_map(points, lidar2image.astype(np.float32),
                                        self.params.img_aug, self.params.image_size)
        return depth[None]
