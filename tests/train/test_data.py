"""Training data: the augmentation moves points and boxes together, the cache round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bevdeploy.data.boxes import points_in_boxes
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import DatasetError
from bevdeploy.presets import get_preset
from bevdeploy.train.data import (
    Augmentation,
    augment,
    augmentation_matrix,
    cache_frames,
    load_sample,
    make_batch,
    transform_boxes,
)

TINY = get_preset("tiny")


@pytest.mark.parametrize("flip_x,flip_y", [(False, False), (True, False), (False, True),
                                           (True, True)])
def test_points_stay_in_their_boxes(flip_x: bool, flip_y: bool) -> None:
    """Points inside a box, moved by the augmentation matrix, are inside the moved box and the
    box's front half still holds the same points (so the heading turned with them)."""
    rng = np.random.default_rng(1)
    boxes = np.array([[10.0, -5.0, 0.8, 4.6, 1.9, 1.7, 0.7, 3.0, -1.0],
                      [-20.0, 12.0, 1.0, 0.7, 0.7, 1.8, -2.1, 0.5, 0.4]], dtype=np.float32)
    local = rng.uniform(-0.45, 0.45, size=(500, 3))
    pts = []
    for b in boxes:
        c, s = np.cos(b[6]), np.sin(b[6])
        xy = local[:, :2] * b[3:5]
        pts.append(np.stack([b[0] + c * xy[:, 0] - s * xy[:, 1], b[1] + s * xy[:, 0]
                             + c * xy[:, 1], b[2] + local[:, 2] * b[5]], 1))
    pts = np.concatenate(pts)
    angle, scale = 0.6, 1.04
    m = augmentation_matrix(angle, scale, flip_x, flip_y)
    moved_pts = pts @ m[:3, :3].T
    moved = transform_boxes(boxes, angle, scale, flip_x, flip_y)
    inside = points_in_boxes(moved_pts, moved)
    assert inside[:500, 0].all() and inside[500:, 1].all()
    front = np.concatenate([local[:, 0] > 0, local[:, 0] > 0])
    for k in range(2):
        rel = moved_pts[500 * k:500 * (k + 1), :2] - moved[k, :2]
        ahead = rel @ np.array([np.cos(moved[k, 6]), np.sin(moved[k, 6])]) > 0
        np.testing.assert_array_equal(ahead, front[500 * k:500 * (k + 1)])
    # Velocity moves like a displacement per second.
    later = boxes.copy()
    later[:, :2] += boxes[:, 7:9]
    np.testing.assert_allclose(transform_boxes(later, angle, scale, flip_x, flip_y)[:, :2]
                               - moved[:, :2], moved[:, 7:9], atol=1e-4)
    np.testing.assert_allclose(moved[:, 3:6], boxes[:, 3:6] * scale, rtol=1e-6)


def test_augment_returns_the_matrix_it_used() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-30, 30, size=(100, 5)).astype(np.float32)
    boxes = np.array([[1.0, 2.0, 0.5, 4.0, 2.0, 1.5, 0.2, 0.0, 0.0]], dtype=np.float32)
    moved, _, m = augment(pts, boxes, rng, Augmentation())
    np.testing.assert_allclose(moved[:, :3], pts[:, :3] @ m[:3, :3].T, atol=1e-4)
    np.testing.assert_array_equal(moved[:, 3:], pts[:, 3:])


def test_cache_round_trip_and_batch(synthetic_world: Path, tmp_path: Path) -> None:
    frames = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_train",
                            preset=TINY)
    paths = cache_frames(frames, TINY, tmp_path / "cache", dataset="world")
    assert [p.stem for p in paths] == list(frames.sample_tokens)
    sample = load_sample(paths[0])
    gt = frames[0].gt
    keep = (gt.labels(TINY.classes) >= 0) & (gt.num_lidar_pts > 0)
    np.testing.assert_allclose(sample.boxes, gt.boxes[keep], atol=1e-6)
    assert sample.images.shape == (TINY.cameras.num_cameras, *TINY.cameras.image_size, 3)
    batch = make_batch([sample, load_sample(paths[1])], TINY)
    assert batch.inputs.img.shape[:2] == (2, TINY.cameras.num_cameras)
    np.testing.assert_array_equal(batch.inputs.lidar_aug_matrix[0].numpy(), np.eye(4))
    # Another preset fingerprint clears the directory instead of reusing stale entries.
    stale = tmp_path / "cache" / "stale.npz"
    stale.write_bytes(b"")
    cache_frames(frames, get_preset("tiny", checkpoint="x.pth"), tmp_path / "cache",
                 dataset="world")
    assert not stale.exists()
    stale.write_bytes(b"not a zip")
    with pytest.raises(DatasetError) as info:
        load_sample(stale)
    assert info.value.path == str(stale)
