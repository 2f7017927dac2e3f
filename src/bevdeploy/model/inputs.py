"""Test-time preprocessing: ``Frame`` objects → the reference model's batch
(docs/reference.md#input-pipeline).

This is the PyTorch side of the input pipeline. The maths (augmentation matrices, resize and
crop, normalization, ``lidar2image``) lives in ``bevdeploy.data.preprocess`` and is shared with
the deploy runtime; this module only validates frames against the preset, applies the steps in
the reference's order and stacks B frames into tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from bevdeploy.data.frame import Frame
from bevdeploy.data.preprocess import img_aug_matrices, lidar2image, normalize, resize_crop
from bevdeploy.errors import InputError
from bevdeploy.presets import Preset


@dataclass
class ModelBatch:
    """What ``BEVFusion.forward`` consumes: the tensors of docs/reference.md#calibration-matrices
    for B frames.

    All matrices are float32; per-camera ones are (B, N, 4, 4), ``lidar_aug_matrix`` (B, 4, 4).
    ``points`` stays a list because every frame has its own point count.
    """

    img: Tensor  # (B, N, 3, H, W) normalized
    points: list[Tensor]  # B × (P_b, F), range-filtered
    camera2lidar: Tensor
    camera_intrinsics: Tensor  # 3×3 K in the top-left of a 4×4 identity
    img_aug_matrix: Tensor
    lidar_aug_matrix: Tensor
    lidar2image: Tensor
    camera_present: Tensor | None = None  # (B, N) bool (``Frame.present``); None: every camera

    @property
    def batch_size(self) -> int:
        return int(self.img.shape[0])

    def to(self, device: torch.device | str) -> "ModelBatch":
        """A copy with every tensor on ``device``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = ([p.to(device) for p in value] if isinstance(value, list)
                             else None if value is None else value.to(device))
        return ModelBatch(**moved)


def filter_points(points: np.ndarray, point_cloud_range: Sequence[float]) -> np.ndarray:
    """Keep points strictly inside ``[xmin, ymin, zmin, xmax, ymax, zmax]``.

    Strict on all six bounds, as mmdet3d's ``in_range_3d`` (docs/reference.md#lidar-points): a point
    exactly on a face is dropped, so voxelization never sees an index equal to the grid size.
    """
    lo = np.asarray(point_cloud_range[:3], dtype=np.float32)
    hi = np.asarray(point_cloud_range[3:], dtype=np.float32)
    xyz = points[:, :3]
    keep = np.all((xyz > lo) & (xyz < hi), axis=1)
    return points[keep]


def round_points_fp16(points: np.ndarray) -> np.ndarray:
    """Round every point feature through float16 and back to float32.

    The published numbers were produced with ``@auto_fp16(apply_to=("points", ...))``, which
    casts the whole point tensor to half before voxelization and the depth projection
    (docs/reference.md#conventions); CUDA-BEVFusion feeds fp16 points as well. Intensity (integers ≤
    255) survives exactly; xyz moves by up to half an fp16 step (1/64 m at 32–64 m).
    """
    return points.astype(np.float16).astype(np.float32)


def _check_frame(frame: Frame, preset: Preset) -> None:
    """Validate ``frame`` against the preset's rig (features, camera order, raw image size)."""
    source = frame.source or frame.token or "<frame>"
    frame.validate(num_features=preset.points.num_features)
    names = tuple(frame.calib.camera_names)
    if names != preset.cameras.names:
        raise InputError(f"camera order {list(names)} does not match preset {preset.name!r} "
                         f"{list(preset.cameras.names)}", path=source, field="calib.camera_names")
    raw = tuple(frame.images.shape[1:3])
    if raw != tuple(preset.cameras.raw_size):
        raise InputError(f"raw images are {raw} (H, W) but preset {preset.name!r} expects "
                         f"{tuple(preset.cameras.raw_size)}: the augmentation matrix assumes the "
                         f"preset's raw size", path=source, field="images")


def prepare_images(images: np.ndarray, preset: Preset) -> np.ndarray:
    """(N, H_raw, W_raw, 3) uint8 → (N, 3, H, W) float32: PIL bicubic resize, bottom-centre
    crop and mean/std normalization per camera (docs/reference.md#camera-input)."""
    cams = preset.cameras
    return np.stack([normalize(resize_crop(image, cams), cams) for image in images])


def intrinsics_4x4(intrinsics: np.ndarray) -> np.ndarray:
    """(N, 3, 3) K → (N, 4, 4) identity with K in the top-left, the model's layout."""
    out = np.tile(np.eye(4, dtype=np.float32), (intrinsics.shape[0], 1, 1))
    out[:, :3, :3] = intrinsics
    return out


def collate(frames: Sequence[Frame], preset: Preset, *, fp16_points: bool = False) -> ModelBatch:
    """Preprocess B ≥ 1 frames and stack them into a ``ModelBatch`` (on the CPU).

    Per frame: validate against the preset, range-filter the points (strict), optionally round
    them through fp16 (reference parity, see ``round_points_fp16``), resize/crop/normalize each
    camera, and derive ``img_aug_matrix`` and ``lidar2image``. ``lidar_aug_matrix`` is the
    identity at test time.
    """
    if not frames:
        raise InputError("no frames to collate", field="frames")
    imgs, points, c2l, intr, aug, l2i, present = [], [], [], [], [], [], []
    for frame in frames:
        _check_frame(frame, preset)
        pts = filter_points(np.asarray(frame.points, dtype=np.float32),
                            preset.points.point_cloud_range)
        if fp16_points:
            pts = round_points_fp16(pts)
        points.append(torch.from_numpy(np.ascontiguousarray(pts)))
        imgs.append(prepare_images(frame.images, preset))
        c2l.append(frame.calib.camera2lidar.astype(np.float32))
        intr.append(intrinsics_4x4(frame.calib.intrinsics))
        aug.append(img_aug_matrices(preset.cameras))
        l2i.append(lidar2image(frame.calib))
        present.append(frame.present)

    def stack(arrays: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.stack(arrays).astype(np.float32))

    return ModelBatch(
        img=stack(imgs),
        points=points,
        camera2lidar=stack(c2l),
        camera_intrinsics=stack(intr),
        img_aug_matrix=stack(aug),
        lidar_aug_matrix=torch.eye(4).repeat(len(frames), 1, 1),
        lidar2image=stack(l2i),
        camera_present=None if all(p.all() for p in present) else torch.from_numpy(
            np.stack(present)),
    )
