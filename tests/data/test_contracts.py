"""Data contracts, the box convention and the preprocessing maths."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bevdeploy.data import Calibration, Detections, Frame
from bevdeploy.data.boxes import (box_corners, from_mmdet3d_legacy, points_in_boxes,
                                  to_mmdet3d_legacy)
from bevdeploy.data.preprocess import img_aug_matrix, lidar2image, normalize, resize_crop
from bevdeploy.errors import InputError
from bevdeploy.presets import get_preset


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _calib(n: int = 2, rng=np.random.default_rng(0)) -> Calibration:
    k = np.array([[1266.0, 0, 816.0], [0, 1266.0, 491.0], [0, 0, 1]])
    c2l = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        # camera looks along lidar +x rotated by i*60deg: cam z → lidar x, cam x → lidar -y, cam y → -z
        base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
        c2l[i, :3, :3] = _rot_z(np.deg2rad(60 * i)) @ base
        c2l[i, :3, 3] = rng.normal(size=3) * 0.5
    return Calibration(tuple(f"CAM{i}" for i in range(n)), np.stack([k] * n), c2l)


def test_img_aug_matrix_is_the_reference_one():
    m = img_aug_matrix(get_preset("nuscenes-resnet50").cameras)
    expected = np.array([[0.48, 0, 0, -32], [0, 0.48, 0, -176], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(m, expected, atol=1e-6)


def test_lidar2image_projects_points_to_pixels():
    calib = _calib()
    l2i = lidar2image(calib)
    rng = np.random.default_rng(1)
    cam_pts = np.c_[rng.uniform(-5, 5, 20), rng.uniform(-3, 3, 20), rng.uniform(2, 40, 20)]
    for i in range(calib.num_cameras):
        lidar = (calib.camera2lidar[i, :3, :3] @ cam_pts.T).T + calib.camera2lidar[i, :3, 3]
        q = (l2i[i, :3, :3] @ lidar.T).T + l2i[i, :3, 3]
        uv = q[:, :2] / q[:, 2:3]
        expect = (calib.intrinsics[i] @ cam_pts.T).T
        np.testing.assert_allclose(uv, expect[:, :2] / expect[:, 2:3], rtol=1e-4)
        np.testing.assert_allclose(q[:, 2], cam_pts[:, 2], rtol=1e-5)


def test_resize_crop_matches_pil_bicubic_then_bottom_centre_crop():
    cams = get_preset("nuscenes-resnet50").cameras
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8)
    out = resize_crop(img, cams)
    assert out.shape == (256, 704, 3)
    ref = np.asarray(Image.fromarray(img).resize((768, 432), Image.BICUBIC))[176:432, 32:736]
    np.testing.assert_array_equal(out, ref)
    norm = normalize(out, cams)
    assert norm.shape == (3, 256, 704)
    np.testing.assert_allclose(norm[0, 5, 7], (out[5, 7, 0] - 123.675) / 58.395, rtol=1e-5)


def test_box_convention_round_trip_and_yaw_meaning():
    rng = np.random.default_rng(3)
    boxes = np.c_[rng.normal(size=(8, 3)) * 10, rng.uniform(0.5, 5, (8, 3)),
                  rng.uniform(-np.pi, np.pi, 8), rng.normal(size=(8, 2))].astype(np.float32)
    back = from_mmdet3d_legacy(to_mmdet3d_legacy(boxes))
    np.testing.assert_allclose(back[:, :6], boxes[:, :6], atol=1e-5)
    np.testing.assert_allclose(np.cos(back[:, 6] - boxes[:, 6]), 1.0, atol=1e-6)
    # yaw is the heading of the length axis: the front face centre lies at centre + l/2·(cos, sin)
    corners = box_corners(boxes)
    front = corners[:, [0, 1, 4, 5]].mean(axis=1)
    expect = boxes[:, :3] + boxes[:, 3:4] / 2 * np.c_[np.cos(boxes[:, 6]), np.sin(boxes[:, 6]),
                                                    np.zeros(8)]
    np.testing.assert_allclose(front, expect, atol=1e-4)


def test_points_in_boxes_respects_yaw():
    box = np.array([[0, 0, 0, 4, 1, 2, np.pi / 2, 0, 0]], dtype=np.float32)  # long along +y
    pts = np.array([[0, 1.9, 0], [1.9, 0, 0], [0.4, -1.5, 0.9], [0, 0, 1.1]])
    np.testing.assert_array_equal(points_in_boxes(pts, box)[:, 0], [True, False, True, False])


def test_cuda_bevfusion_export_uses_bottom_z_and_legacy_yaw():
    d = Detections(np.array([[1, 2, 3, 4.0, 2.0, 1.5, 0.0, 0.5, -0.5]]), [0.9], [0], ("car",))
    row = d.to_cuda_bevfusion()[0]
    np.testing.assert_allclose(row[:6], [1, 2, 2.25, 2.0, 4.0, 1.5])
    np.testing.assert_allclose(row[6], -np.pi / 2, atol=1e-6)
    np.testing.assert_allclose(row[9:], [0, 0.9], atol=1e-6)


def _frame(calib: Calibration) -> Frame:
    rng = np.random.default_rng(4)
    return Frame(images=rng.integers(0, 255, (calib.num_cameras, 9, 16, 3), dtype=np.uint8),
                 points=rng.normal(size=(50, 5)).astype(np.float32), calib=calib, source="f.json")


def test_frame_validation_names_the_culprit():
    calib = _calib()
    _frame(calib).validate(5)
    bad = _frame(calib)
    bad.points[3, 1] = np.nan
    with pytest.raises(InputError, match=r"f.json \[points\].*NaN"):
        bad.validate(5)
    bad = _frame(calib)
    bad.images = bad.images[:1]
    with pytest.raises(InputError, match=r"\[images\].*CAM0"):
        bad.validate(5)


@pytest.mark.parametrize("mutate,field", [
    (lambda c: c.intrinsics.__setitem__((1, 0, 0), np.inf), "CAM1.intrinsics"),
    (lambda c: c.intrinsics.__setitem__((0, slice(None), slice(None)), 0.0), "CAM0.intrinsics"),
    (lambda c: c.camera2lidar.__setitem__((1, 0, 0), 2.0), "CAM1.camera2lidar"),
    (lambda c: c.camera2lidar.__setitem__((0, 0, 3), np.nan), "CAM0.camera2lidar"),
    (lambda c: c.lidar2ego.__setitem__((3, 0), 1.0), "lidar2ego"),
])
def test_bad_calibration_is_refused_by_field(mutate, field):
    calib = _calib()
    mutate(calib)
    with pytest.raises(InputError) as exc:
        calib.validate("calib.yaml")
    assert "calib.yaml" in str(exc.value) and field in str(exc.value)
