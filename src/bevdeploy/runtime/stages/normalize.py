"""Stage ``normalize``: raw camera images → the network's normalized image tensor.

Resize by the preset's factor with PIL's bicubic filter (the reference's ``Image.resize``
default), crop bottom-centre to ``image_size``, subtract the mean and divide by the std, and
lay the result out as ``camera.backbone``'s ``img`` input ``(1, N, 3, H, W)``. The geometry of
this transform is the ``img_aug`` matrix the depth and geometry stages use, so both are derived
from the same preset fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bevdeploy.package import DeployPackage
from bevdeploy.runtime.kernels import kernels_for


@dataclass(frozen=True)
class NormalizeParams:
    """The test-time image transform of a package's preset (docs/reference.md#camera-input)."""

    raw_size: tuple[int, int]  # (H, W) the camera images must have
    resize: float
    resized_size: tuple[int, int]  # (H, W) after the resize
    crop_offset: tuple[int, int]  # (top, left) in the resized image
    image_size: tuple[int, int]  # (H, W) fed to the network
    mean: tuple[float, float, float]  # RGB, 0..255 scale
    std: tuple[float, float, float]

    @classmethod
    def from_package(cls, pkg: DeployPackage) -> "NormalizeParams":
        cams = pkg.preset.cameras
        return cls(raw_size=tuple(cams.raw_size), resize=cams.resize,
                   resized_size=cams.resized_size, crop_offset=cams.crop_offset,
                   image_size=tuple(cams.image_size), mean=tuple(cams.mean),
                   std=tuple(cams.std))


class NormalizeStage:
    """``run(images (N, H0, W0, 3) uint8) → (1, N, 3, H, W) float32``, on the host (numpy,
    ``device=None``) or on a torch device (tensors there, the CUDA kernel)."""

    name = "normalize"

    def __init__(self, params: NormalizeParams, *, device: str | None = None) -> None:
        self.params = params
        self.device = device
        self._kernels = kernels_for(device)
        self._mean = np.asarray(params.mean, dtype=np.float32)
        self._std = np.asarray(params.std, dtype=np.float32)

    def run(self, images: np.ndarray) -> np.ndarray:
        p = self.params
        return self._kernels.normalize(images, p.resize, p.resized_size, p.crop_offset,
                                       p.image_size, self._mean, self._std)
