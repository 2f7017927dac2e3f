"""Test-time preprocessing maths, in one place
(docs/reference.md#camera-input, #calibration-matrices).

The matrices here are the only source of ``img_aug_matrix`` and ``lidar2image``: the reference
model, the exporter, the runtime kernels and the renderers all call these functions, so a change
of rig or resolution is a preset edit.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bevdeploy.data.frame import Calibration
from bevdeploy.presets import CameraConfig


def img_aug_matrix(cameras: CameraConfig) -> np.ndarray:
    """4×4 map from a raw-image pixel to a network-input pixel: ``u' = r·u − left``.

    "Scale pixel coordinates" convention with no half-pixel term, exactly as ``ImageAug3D``.
    Row and column 2 are identity, so depth passes through.
    """
    top, left = cameras.crop_offset
    m = np.eye(4, dtype=np.float32)
    m[0, 0] = m[1, 1] = cameras.resize
    m[0, 3] = -left
    m[1, 3] = -top
    return m


def img_aug_matrices(cameras: CameraConfig) -> np.ndarray:
    """(N, 4, 4): one ``img_aug_matrix`` per camera (identical at test time, kept per camera so
    that the geometry never assumes it; NVIDIA's uses camera 0's for all,
    docs/reference.md#geometry-precompute)."""
    return np.repeat(img_aug_matrix(cameras)[None], cameras.num_cameras, axis=0)


def lidar2image(calib: Calibration) -> np.ndarray:
    """(N, 4, 4) ``K₄ₓ₄ · lidar2camera``: homogeneous LiDAR point → (u·z, v·z, z, 1) in raw pixels."""
    n = calib.num_cameras
    k4 = np.tile(np.eye(4), (n, 1, 1))
    k4[:, :3, :3] = calib.intrinsics
    return (k4 @ calib.lidar2camera()).astype(np.float32)


def resize_crop(image: np.ndarray, cameras: CameraConfig) -> np.ndarray:
    """Raw HxWx3 uint8 → network-size uint8 with PIL's bicubic resize and the bottom-centre crop
    (the reference uses PIL ``Image.resize`` default, BICUBIC, antialiased when shrinking)."""
    rh, rw = cameras.resized_size
    top, left = cameras.crop_offset
    h, w = cameras.image_size
    pil = Image.fromarray(image).resize((rw, rh), Image.BICUBIC)
    return np.asarray(pil.crop((left, top, left + w, top + h)))


def normalize(image: np.ndarray, cameras: CameraConfig) -> np.ndarray:
    """uint8 HxWx3 (RGB) → float32 3xHxW ``(x − mean) / std`` (0..255 scale)."""
    mean = np.asarray(cameras.mean, dtype=np.float32)
    std = np.asarray(cameras.std, dtype=np.float32)
    return ((image.astype(np.float32) - mean) / std).transpose(2, 0, 1)
