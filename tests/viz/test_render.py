"""The PNG renders show the boxes where they are: pixels of a box's colour appear around the
box's position computed independently (view maths for the BEV, the pinhole projection for the
cameras), and nowhere when there is no box."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bevdeploy.data.boxes import box_corners
from bevdeploy.data.frame import Detections, GroundTruth
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.presets import NUSCENES_CLASSES
from bevdeploy.viz import render_bev, render_cameras, render_frame
from bevdeploy.viz.cameras import NEAR_M, STRIP_PX, project_edges
from bevdeploy.viz.style import GT_COLOR, class_color

TRUCK = NUSCENES_CLASSES.index("truck")  # orange: a colour neither viridis nor the sky has
EXTENT = 30.0
SIZE = 800


@pytest.fixture(scope="module")
def frame(synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset="tiny")
    return loader[0]


def _detections(boxes: list[list[float]], label: int = TRUCK) -> Detections:
    return Detections(np.array(boxes), np.full(len(boxes), 0.9), np.full(len(boxes), label),
                      NUSCENES_CLASSES)


def _mask(path, rgb, tol: int = 12) -> np.ndarray:
    """Pixels within ``tol`` of ``rgb`` on every channel."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB")).astype(np.int32)
    return np.all(np.abs(pixels - np.array(rgb)) <= tol, axis=-1)


def _bev_pixel(x: float, y: float) -> np.ndarray:
    """(column, row) of LiDAR (x, y) in a SIZE² view of half-width EXTENT: +x right, +y up."""
    return np.array([(x + EXTENT) / (2 * EXTENT) * SIZE, (EXTENT - y) / (2 * EXTENT) * SIZE])


def test_bev_shows_predicted_and_gt_boxes_at_their_positions(frame, tmp_path):
    dets = _detections([[12.0, -8.0, 0.0, 6.0, 2.5, 3.0, 0.4, 0.0, 0.0]])
    gt = GroundTruth(np.array([[-10.0, 15.0, 0.0, 4.5, 2.0, 1.6, 1.2, 0.0, 0.0]]),
                     np.array(["car"]), np.array([10]))
    path = render_bev(frame, dets, tmp_path / "bev.png", gt=gt, extent=EXTENT, size_px=SIZE)
    with Image.open(path) as img:
        assert img.size == (SIZE, SIZE)

    truck = _mask(path, class_color(TRUCK))
    cx, cy = _bev_pixel(12.0, -8.0)
    label = np.zeros_like(truck)  # the score, right of the box (0.6 × 6 m = 47 px from centre)
    label[int(cy) - 12:int(cy) + 12, int(cx) + 40:int(cx) + 120] = True
    assert (truck & label).sum() > 10
    truck &= ~label
    near = np.zeros_like(truck)
    near[int(cy) - 60:int(cy) + 60, int(cx) - 60:int(cx) + 60] = True
    rows, cols = np.nonzero(truck & near)
    assert rows.size > 100  # outline + heading line of a 6 m × 2.5 m box at 13 px/m
    # The outline is symmetric about the centre; the heading line pulls the mean a little
    # towards the front (yaw 0.4: right and up).
    assert 0 < cols.mean() - cx < 15 and 0 < cy - rows.mean() < 10
    rows, cols = np.nonzero(truck & ~near)  # elsewhere only the legend, bottom left
    assert rows.size > 0 and rows.min() > 0.75 * SIZE and cols.max() < 0.25 * SIZE

    white = _mask(path, GT_COLOR, tol=30)
    gx, gy = _bev_pixel(-10.0, 15.0).astype(int)
    assert white[gy - 45:gy + 45, gx - 45:gx + 45].sum() > 30

    empty = render_bev(frame, Detections.empty(NUSCENES_CLASSES), tmp_path / "empty.png",
                       extent=EXTENT, size_px=SIZE)
    assert _mask(empty, class_color(TRUCK)).sum() == 0
    assert _mask(empty, GT_COLOR, tol=30)[gy - 45:gy + 45, gx - 45:gx + 45].sum() == 0


def _ahead_of_camera(frame, camera: int, distance: float) -> np.ndarray:
    """A point ``distance`` metres along the camera's optical axis, in the LiDAR frame."""
    c2l = frame.calib.camera2lidar[camera]
    return c2l[:3, 3] + distance * c2l[:3, 2]


def test_cameras_show_a_box_in_the_camera_that_sees_it(frame, tmp_path):
    names = frame.calib.camera_names
    front, back = names.index("CAM_FRONT"), names.index("CAM_BACK")
    centre = _ahead_of_camera(frame, front, 12.0)
    dets = _detections([[*centre, 4.0, 2.0, 2.0, 0.0, 0.0, 0.0]])
    width, columns = 400, 3
    path = render_cameras(frame, dets, tmp_path / "cams.png", tile_width=width, columns=columns)
    control = render_cameras(frame, Detections.empty(NUSCENES_CLASSES), tmp_path / "none.png",
                             tile_width=width, columns=columns)
    h0, w0 = frame.images.shape[1:3]
    scale = width / w0
    tile_h = round(h0 * scale)
    with Image.open(path) as img:
        assert img.size == (columns * width, 2 * tile_h + STRIP_PX)  # + title and legend

    added = _mask(path, class_color(TRUCK)) & ~_mask(control, class_color(TRUCK))

    def tile(mask, camera):
        r, c = divmod(camera, columns)
        return mask[r * tile_h:(r + 1) * tile_h, c * width:(c + 1) * width]

    rows, cols = np.nonzero(tile(added, front))
    assert rows.size > 100
    # Independent pinhole projection of the centre: K · R_cam←lidar · (p − t).
    c2l = frame.calib.camera2lidar[front]
    p_cam = c2l[:3, :3].T @ (centre - c2l[:3, 3])
    u, v, z = frame.calib.intrinsics[front] @ p_cam
    assert abs(cols.mean() - u / z * scale) < 10 and abs(rows.mean() - v / z * scale) < 10
    assert tile(added, back).sum() == 0


def test_edges_are_clipped_at_the_near_plane(frame):
    """A box around the camera itself: every edge that survives starts and ends in front of
    the near plane (finite pixels); a box fully behind the camera draws nothing."""
    c2l = frame.calib.camera2lidar[0]
    l2i = np.eye(4)
    l2i[:3, :3] = frame.calib.intrinsics[0]
    l2i = l2i @ np.linalg.inv(c2l)
    around = box_corners(np.array([[*c2l[:3, 3], 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0]]))[0]
    segments = project_edges(around, l2i)
    assert 0 < len(segments) < 12 and np.all(np.isfinite(segments))
    behind = box_corners(np.array([[*_ahead_of_camera(frame, 0, -10.0), 2, 2, 2, 0, 0, 0, 0]]))[0]
    assert project_edges(behind, l2i) == []
    ahead = box_corners(np.array([[*_ahead_of_camera(frame, 0, 10.0), 2, 2, 2, 0, 0, 0, 0]]))[0]
    segments = np.array(project_edges(ahead, l2i))
    homog = np.c_[ahead, np.ones(8)] @ l2i.T
    assert len(segments) == 12 and np.all(homog[:, 2] > NEAR_M)
    np.testing.assert_allclose(segments[0], [*(homog[0, :2] / homog[0, 2]),
                                             *(homog[1, :2] / homog[1, 2])], rtol=1e-9)


def test_render_frame_writes_both_pictures_with_the_gt(frame, tmp_path):
    paths = render_frame(frame, Detections.empty(NUSCENES_CLASSES), tmp_path, extent=EXTENT)
    assert [p.name for p in paths] == [f"{frame.token}_bev.png", f"{frame.token}_cameras.png"]
    assert frame.gt is not None and len(frame.gt) > 0
    without_gt = render_cameras(frame, Detections.empty(NUSCENES_CLASSES), tmp_path / "no.png")
    added = _mask(paths[1], GT_COLOR, tol=0) & ~_mask(without_gt, GT_COLOR, tol=0)
    assert added.sum() > 100  # the GT boxes, in white
