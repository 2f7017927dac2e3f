"""Training data: frames → preprocessed samples cached on disk → augmented model batches.

Decoding JPEGs, resizing six images and aggregating sweeps costs more than a tiny-preset
training step, so every frame is preprocessed once into an ``.npz`` (network-size uint8
images, range-filtered points, calibration matrices, filtered GT) and epochs read those.

Ground truth is filtered as the reference's pipeline does before targets are built: boxes of
the preset's classes (``ObjectNameFilter``), with at least one LiDAR point (mmdet3d's
``get_ann_info`` without ``use_valid_flag``), whose BEV centre lies strictly inside the point
cloud range (``ObjectRangeFilter``, applied again after augmentation).

Augmentation is the LiDAR half of the reference's (``GlobalRotScaleTrans`` + ``RandomFlip3D``,
docs/reference.md#training-settings): points and boxes are rotated about z, scaled and flipped, and
the combined 4×4 goes to the model as ``lidar_aug_matrix``, through which the camera branch maps its
frustum into the augmented frame and un-augments the points for its depth map. Images are left as
they are (no ``ImageAug3D``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from bevdeploy.data.frame import Frame
from bevdeploy.data.preprocess import (
    img_aug_matrices,
    lidar2image,
    normalize,
    resize_crop,
)
from bevdeploy.errors import DatasetError
from bevdeploy.io import atomic_file, atomic_write
from bevdeploy.model.inputs import ModelBatch, filter_points, intrinsics_4x4
from bevdeploy.presets import Preset

CACHE_FORMAT = 1


@dataclass
class TrainSample:
    """One preprocessed frame, everything the model and the targets need."""

    token: str
    images: np.ndarray  # (N, H, W, 3) uint8 at network size (resized and cropped)
    points: np.ndarray  # (P, F) float32, inside the point cloud range
    camera2lidar: np.ndarray  # (N, 4, 4) float32
    intrinsics: np.ndarray  # (N, 4, 4) float32, K in the top-left
    img_aug: np.ndarray  # (N, 4, 4) float32
    lidar2image: np.ndarray  # (N, 4, 4) float32
    boxes: np.ndarray  # (K, 9) float32, bevdeploy convention
    labels: np.ndarray  # (K,) int64 class indices


def in_range_bev(boxes: np.ndarray, point_cloud_range: Sequence[float]) -> np.ndarray:
    """Boolean (K,): the box centre lies strictly inside the range in x and y."""
    r = point_cloud_range
    return ((boxes[:, 0] > r[0]) & (boxes[:, 1] > r[1])
            & (boxes[:, 0] < r[3]) & (boxes[:, 1] < r[4]))


def prepare_sample(frame: Frame, preset: Preset) -> TrainSample:
    """Preprocess one annotated frame (test-time image transform, range filter, GT filter)."""
    if frame.gt is None:
        raise DatasetError("training needs ground-truth boxes", path=frame.source or frame.token,
                           field="gt")
    labels = frame.gt.labels(preset.classes)
    boxes = np.asarray(frame.gt.boxes, np.float32).reshape(-1, 9)
    keep = (labels >= 0) & (np.asarray(frame.gt.num_lidar_pts) > 0)
    keep &= in_range_bev(boxes, preset.points.point_cloud_range)
    cams = preset.cameras
    return TrainSample(
        token=frame.token,
        images=np.stack([resize_crop(image, cams) for image in frame.images]),
        points=filter_points(np.asarray(frame.points, np.float32),
                             preset.points.point_cloud_range),
        camera2lidar=frame.calib.camera2lidar.astype(np.float32),
        intrinsics=intrinsics_4x4(frame.calib.intrinsics),
        img_aug=img_aug_matrices(cams),
        lidar2image=lidar2image(frame.calib),
        boxes=boxes[keep],
        labels=labels[keep],
    )


def save_sample(sample: TrainSample, path: Path) -> None:
    """Write a sample as an uncompressed ``.npz`` atomically (no pickled objects)."""
    arrays = {f.name: np.asarray(getattr(sample, f.name)) for f in fields(sample)}
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)


def load_sample(path: Path) -> TrainSample:
    """Read a cached sample; ``allow_pickle=False`` so a cache file cannot run code."""
    try:
        with np.load(path, allow_pickle=False) as data:
            values = {f.name: data[f.name] for f in fields(TrainSample)}
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"unreadable training cache entry: {exc}", path=path,
                           field="cache") from None
    values["token"] = str(values["token"])
    return TrainSample(**values)


def _fingerprint(preset: Preset, dataset: str) -> str:
    """What a cache entry depends on: the preset, the dataset identity, the cache format."""
    text = json.dumps({"preset": preset.to_dict(), "dataset": dataset, "format": CACHE_FORMAT},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_frames(frames: Sequence[Frame], preset: Preset, cache_dir: str | Path, *,
                 dataset: str) -> list[Path]:
    """Preprocess ``frames`` into ``cache_dir`` (one ``<token>.npz`` each) and return the paths.

    ``dataset`` names the source (e.g. its root, version and split); together with the preset it
    fingerprints the cache, and a directory holding another fingerprint is rebuilt rather than
    silently reused. Entries already present are not recomputed, so an interrupted run resumes.
    """
    root = Path(cache_dir)
    manifest = root / "manifest.json"
    fingerprint = _fingerprint(preset, dataset)
    if manifest.is_file():
        try:
            stale = json.loads(manifest.read_text()).get("fingerprint") != fingerprint
        except json.JSONDecodeError:
            stale = True
        if stale:
            for old in root.glob("*.npz"):
                old.unlink()
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(manifest, json.dumps({"fingerprint": fingerprint, "dataset": dataset,
                                       "preset": preset.name, "format": CACHE_FORMAT}).encode())
    paths = []
    for i in range(len(frames)):
        frame = frames[i]
        path = root / f"{frame.token}.npz"
        if not path.is_file():
            save_sample(prepare_sample(frame, preset), path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augmentation:
    """Global LiDAR-frame augmentation: uniform rotation in ±``rotation`` rad about z, uniform
    scale in ``scale``, and, with ``flip``, independent mirror images in x and in y."""

    rotation: float = float(np.pi / 4)
    scale: tuple[float, float] = (0.95, 1.05)
    flip: bool = True


def augmentation_matrix(angle: float, scale: float, flip_x: bool, flip_y: bool) -> np.ndarray:
    """4×4 ``flip · scale · R_z(angle)`` (applied to column vectors): rotate, scale, then
    mirror ``flip_x`` (x → −x) and ``flip_y`` (y → −y)."""
    c, s = np.cos(angle), np.sin(angle)
    m = np.eye(4)
    m[:3, :3] = scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    mirror = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0, 1.0])
    return mirror @ m


def transform_boxes(boxes: np.ndarray, angle: float, scale: float, flip_x: bool,
                    flip_y: bool) -> np.ndarray:
    """Apply ``augmentation_matrix`` to bevdeploy boxes: centres and velocities move with the
    points, sizes scale, the heading rotates by ``angle`` and mirrors with each flip."""
    b = np.asarray(boxes, np.float64).copy()
    m = augmentation_matrix(angle, scale, flip_x, flip_y)[:3, :3]
    b[:, 0:3] = b[:, 0:3] @ m.T
    b[:, 7:9] = b[:, 7:9] @ m[:2, :2].T
    b[:, 3:6] *= scale
    yaw = b[:, 6] + angle
    if flip_x:
        yaw = np.pi - yaw
    if flip_y:
        yaw = -yaw
    b[:, 6] = np.arctan2(np.sin(yaw), np.cos(yaw))
    return b.astype(np.float32)


def augment(points: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
            aug: Augmentation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one augmentation; return the moved points and boxes and the 4×4 that did it."""
    angle = float(rng.uniform(-aug.rotation, aug.rotation))
    scale = float(rng.uniform(*aug.scale))
    flip_x = bool(aug.flip and rng.random() < 0.5)
    flip_y = bool(aug.flip and rng.random() < 0.5)
    m = augmentation_matrix(angle, scale, flip_x, flip_y)
    moved = points.copy()
    moved[:, :3] = (points[:, :3].astype(np.float64) @ m[:3, :3].T).astype(np.float32)
    return moved, transform_boxes(boxes, angle, scale, flip_x, flip_y), m.astype(np.float32)


# ----------------------------------------------------------------------------- batches


@dataclass
class TrainBatch:
    """A model batch with its per-sample ground truth (after augmentation and filtering)."""

    inputs: ModelBatch
    gt_boxes: list[np.ndarray]
    gt_labels: list[np.ndarray]


def make_batch(samples: Iterable[TrainSample], preset: Preset,
               rng: np.random.Generator | None = None,
               aug: Augmentation | None = None) -> TrainBatch:
    """Stack samples into a ``ModelBatch``, augmenting each when ``rng`` and ``aug`` are given.

    Points and boxes that augmentation moves out of the range are dropped, as the reference's
    range filters that follow the augmentation.
    """
    imgs, points, aug_mats, boxes, labels = [], [], [], [], []
    c2l, intr, img_aug, l2i = [], [], [], []
    r = preset.points.point_cloud_range
    for s in samples:
        pts, bxs, mat = s.points, s.boxes, np.eye(4, dtype=np.float32)
        if rng is not None and aug is not None:
            pts, bxs, mat = augment(pts, bxs, rng, aug)
            pts = filter_points(pts, r)
        keep = in_range_bev(bxs, r)
        imgs.append(np.stack([normalize(image, preset.cameras) for image in s.images]))
        points.append(torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32)))
        aug_mats.append(mat)
        boxes.append(bxs[keep])
        labels.append(s.labels[keep])
        c2l.append(s.camera2lidar)
        intr.append(s.intrinsics)
        img_aug.append(s.img_aug)
        l2i.append(s.lidar2image)
    if not imgs:
        raise DatasetError("no samples to batch", field="samples")

    def stack(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays).astype(np.float32))

    inputs = ModelBatch(img=stack(imgs), points=points, camera2lidar=stack(c2l),
                        camera_intrinsics=stack(intr), img_aug_matrix=stack(img_aug),
                        lidar_aug_matrix=stack(aug_mats), lidar2image=stack(l2i))
    return TrainBatch(inputs, boxes, labels)
