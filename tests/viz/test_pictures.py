"""What the pictures explain beyond the boxes (viz/cameras.py, viz/bev.py): the camera mosaic
draws the key sweep's LiDAR points where the calibration projects them, coloured by depth, and
the BEV carries range rings, scores and the threshold in its title."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from bevdeploy.data.frame import Detections
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.presets import NUSCENES_CLASSES
from bevdeploy.viz import render_bev, render_cameras
from bevdeploy.viz.cameras import DEPTH_MAX_M


@pytest.fixture(scope="module")
def frame(synthetic_world):
    return NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                          preset="tiny")[0]


def test_camera_points_land_where_the_calibration_projects_them(frame, tmp_path) -> None:
    names = frame.calib.camera_names
    front = names.index("CAM_FRONT")
    c2l = frame.calib.camera2lidar[front]
    depth = 12.0
    centre = c2l[:3, 3] + depth * c2l[:3, 2]  # on the optical axis
    key = np.zeros((50, 5), np.float32)
    key[:, :3] = centre
    earlier = key.copy()
    earlier[:, 0] += 3.0
    earlier[:, 4] = 0.05  # a previous sweep: not drawn (taken from another pose)
    probe = dataclasses.replace(frame, points=np.concatenate([key, earlier]))
    none = Detections.empty(NUSCENES_CLASSES)
    width = 400
    with_points = render_cameras(probe, none, tmp_path / "on.png", tile_width=width)
    without = render_cameras(probe, none, tmp_path / "off.png", tile_width=width, points=False)
    on = np.asarray(Image.open(with_points).convert("RGB")).astype(int)
    off = np.asarray(Image.open(without).convert("RGB")).astype(int)
    rows, cols = np.nonzero(np.any(on != off, axis=-1)[: on.shape[0] - 30])  # above the legend
    scale = width / frame.images.shape[2]
    p_cam = c2l[:3, :3].T @ (centre - c2l[:3, 3])
    u, v, z = frame.calib.intrinsics[front] @ p_cam
    assert 1 <= rows.size <= 4  # one 2×2 dot: the 50 key points coincide, the sweep is left out
    assert abs(cols.mean() - u / z * scale) < 3 and abs(rows.mean() - v / z * scale) < 3
    expected = np.array(colormaps["turbo_r"](depth / DEPTH_MAX_M)[:3]) * 255
    assert np.abs(on[rows[0], cols[0]] - expected).max() <= 1


def test_bev_title_names_the_threshold_and_the_boxes_drawn(frame, tmp_path) -> None:
    boxes = np.array([[10.0, 0, 0, 4, 2, 1.5, 0, 0, 0], [-10.0, 5, 0, 4, 2, 1.5, 0, 0, 0]])
    dets = Detections(boxes, np.array([0.8, 0.2]), np.array([0, 0]), NUSCENES_CLASSES)
    path = render_bev(frame, dets, tmp_path / "bev.png", gt=frame.gt, score_threshold=0.3,
                      extent=30.0)
    title = Image.open(path).text["Title"]
    assert title == f"{frame.token}: 1 boxes (score ≥ 0.30), {len(frame.gt.boxes)} GT"
