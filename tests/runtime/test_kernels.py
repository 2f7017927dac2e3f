"""CPU kernels against the PyTorch reference model, step by step.

Each kernel is compared with the model function it replaces on the ``tiny`` preset:
``voxelize_points``, ``DepthLSSTransform.depth_map`` / ``get_geometry`` / ``bev_pool``, the
TransFusion box coder and ``model.inputs.prepare_images``. Tolerances are stated per test. The
camera-geometry comparisons run the reference on float64 matrices, which is what the kernels
compute in (see ``kernels/cpu/geometry.py``): in float32 a point within rounding of a cell or
pixel edge may fall either way. The reference's depth map projects in float64 whatever its
inputs (``DepthLSSTransform.depth_map``), so the depth kernel equals it on float32 inputs too.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
import torch

from bevdeploy.data.frame import Calibration
from bevdeploy.data.preprocess import img_aug_matrices, lidar2image
from bevdeploy.data.synthetic.rig import CAMERAS, LIDAR
from bevdeploy.errors import InputError
from bevdeploy.model.bbox_coder import TransFusionBBoxCoder
from bevdeploy.model.camera.depth_lss import build_vtransform
from bevdeploy.model.inputs import filter_points, intrinsics_4x4, prepare_images
from bevdeploy.model.lidar.voxelize import voxelize_points
from bevdeploy.model.transfusion import build_head
from bevdeploy.presets import Preset, get_preset
from bevdeploy.runtime import kernels

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny() -> Preset:
    return get_preset("tiny")


def _rig_calibration() -> Calibration:
    """The synthetic nuScenes-like rig (six cameras, 1600×900, LiDAR frame rotated −90°)."""
    lidar_from_ego = np.linalg.inv(LIDAR.lidar2ego)
    return Calibration(tuple(c.name for c in CAMERAS), np.stack([c.intrinsics for c in CAMERAS]),
                       np.stack([lidar_from_ego @ c.camera2ego for c in CAMERAS]))


def _t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# voxelize
# --------------------------------------------------------------------------------------------

def _reference_voxels(points: np.ndarray, preset: Preset, max_voxels: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f, c, n = voxelize_points(torch.from_numpy(points), torch.tensor(preset.voxel.voxel_size),
                              torch.tensor(preset.points.point_cloud_range[:3]),
                              preset.grid_size, preset.voxel.max_points, max_voxels)
    return f.numpy(), c.numpy(), n.numpy()


def _kernel_voxels(points: np.ndarray, preset: Preset, max_voxels: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return kernels.voxelize(points, preset.voxel.voxel_size, preset.points.point_cloud_range[:3],
                            preset.grid_size, preset.voxel.max_points, max_voxels)


def _assert_same_voxels(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    """Same voxels in the same order with the same counts; means to 1e-6 (the reference sums
    in float32, the kernel in float64, both in point order; ≤ 10 points of magnitude ≤ 255)."""
    (gf, gc, gn), (wf, wc, wn) = got, want
    assert gc.dtype == np.int32 and gn.dtype == np.int32 and gf.dtype == np.float32
    np.testing.assert_array_equal(gc, wc)
    np.testing.assert_array_equal(gn, wn)
    np.testing.assert_allclose(gf, wf, rtol=1e-6, atol=1e-6)


def _cloud(rng: np.random.Generator, preset: Preset) -> np.ndarray:
    """Uniform points over a box 10% larger than the range (some dropped), non-finite points,
    and 40 tight clusters of 25 points (voxels over ``max_points``), shuffled together."""
    r = np.asarray(preset.points.point_cloud_range)
    span = r[3:] - r[:3]
    uniform = rng.uniform(r[:3] - 0.05 * span, r[3:] + 0.05 * span, size=(6000, 3))
    centres = rng.uniform(r[:3] + 1, r[3:] - 1, size=(40, 3))
    clusters = np.repeat(centres, 25, axis=0) + rng.uniform(-0.02, 0.02, size=(1000, 3))
    xyz = np.concatenate([uniform, clusters])
    extra = np.concatenate([rng.uniform(0, 255, (len(xyz), 1)),   # intensity
                            rng.uniform(0, 0.5, (len(xyz), 1))], axis=1)  # time lag
    cloud = np.concatenate([xyz, extra], axis=1).astype(np.float32)
    cloud = cloud[rng.permutation(len(cloud))]
    cloud[::997, 0] = np.nan
    cloud[5::1009, 3] = np.inf  # a non-finite feature drops the point too
    return cloud


def test_voxelize_matches_reference_order_counts_and_means(tiny):
    cloud = _cloud(np.random.default_rng(0), tiny)
    got = _kernel_voxels(cloud, tiny, tiny.voxel.max_voxels)
    _assert_same_voxels(got, _reference_voxels(cloud, tiny, tiny.voxel.max_voxels))
    counts = got[2]
    assert (counts == tiny.voxel.max_points).sum() >= 40  # the per-voxel cap was exercised
    assert counts.sum() < len(cloud) - 1000  # points were dropped (range, NaN, cap)


def test_voxelize_caps_voxels_in_first_appearance_order(tiny):
    cloud = _cloud(np.random.default_rng(1), tiny)
    full = _kernel_voxels(cloud, tiny, tiny.voxel.max_voxels)
    capped = _kernel_voxels(cloud, tiny, 50)
    _assert_same_voxels(capped, _reference_voxels(cloud, tiny, 50))
    assert len(full[1]) > 50 and len(capped[1]) == 50
    np.testing.assert_array_equal(capped[1], full[1][:50])
    np.testing.assert_array_equal(capped[2], full[2][:50])


def test_voxelize_keeps_the_lower_face_and_drops_the_upper(tiny):
    """Index ``floor((p − min) / size)`` must lie in [0, grid): a point exactly on the lower
    corner is voxel (0, 0, 0); one exactly on the upper face (index = grid) or just below the
    lower one (index −1) is dropped. Same answer as the reference."""
    r = np.asarray(tiny.points.point_cloud_range, dtype=np.float32)
    v = np.asarray(tiny.voxel.voxel_size, dtype=np.float32)
    pts = np.array([[*r[:3], 1.0, 0.0],
                    [r[3], 0.0, 0.0, 2.0, 0.0],
                    [0.0, 0.0, r[5], 3.0, 0.0],
                    [r[0] - v[0] / 2, 0.0, 0.0, 4.0, 0.0],
                    [*(r[3:] - v / 2), 5.0, 0.0]], dtype=np.float32)
    got = _kernel_voxels(pts, tiny, 100)
    _assert_same_voxels(got, _reference_voxels(pts, tiny, 100))
    np.testing.assert_array_equal(got[1], [[0, 0, 0], np.asarray(tiny.grid_size) - 1])
    np.testing.assert_array_equal(got[0][:, 3], [1.0, 5.0])


def test_voxelize_empty_input_is_an_empty_result(tiny):
    for cloud in (np.zeros((0, 5), dtype=np.float32),
                  np.full((3, 5), 1e4, dtype=np.float32)):  # nothing in range
        feats, coords, counts = _kernel_voxels(cloud, tiny, 100)
        assert feats.shape == (0, 5) and coords.shape == (0, 3) and counts.shape == (0,)
        assert coords.dtype == np.int32 and counts.dtype == np.int32


def test_voxelize_rejects_bad_arguments(tiny):
    with pytest.raises(InputError) as err:
        kernels.voxelize(np.zeros((4, 2), np.float32), (0.2,) * 3, (0,) * 3, (8, 8, 8), 10, 10)
    assert err.value.field == "points" and "voxelize" in err.value.path
    with pytest.raises(InputError) as err:
        kernels.voxelize(np.zeros((4, 5), np.float32), (0.2,) * 3, (0,) * 3, (8, 0, 8), 10, 10)
    assert err.value.field == "grid_size"


def test_in_range_is_the_reference_filter_faces_and_nan_included(tiny):
    r = np.asarray(tiny.points.point_cloud_range, dtype=np.float32)
    rng = np.random.default_rng(7)
    cloud = rng.uniform(0, 1, size=(5000, 5)).astype(np.float32)
    cloud[:, :3] = rng.uniform(1.2 * r[:3], 1.2 * r[3:], size=(5000, 3))
    cloud[:6, :3] = np.stack([r[:3], r[3:], (r[:3] + r[3:]) / 2] * 2)  # on the faces, centre
    cloud[3, 0] = np.nan
    got = kernels.in_range(cloud, r[:3], r[3:])
    want = filter_points(cloud, r)
    assert 0 < len(want) < len(cloud) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    assert kernels.in_range(np.zeros((0, 5), np.float32), r[:3], r[3:]).shape == (0, 5)


# --------------------------------------------------------------------------------------------
# geometry + bev_pool
# --------------------------------------------------------------------------------------------

def _with_bev_grid(preset: Preset, ybound: tuple[float, float, float],
                   zbound: tuple[float, float, float]) -> Preset:
    vt = dataclasses.replace(preset.model.vtransform, ybound=ybound, zbound=zbound)
    return dataclasses.replace(preset, model=dataclasses.replace(preset.model, vtransform=vt))


def _augmentations(preset: Preset, augmented: bool) -> tuple[np.ndarray, np.ndarray]:
    """(img_aug (N, 4, 4), lidar_aug (4, 4)) float32: the test-time ones, or per-camera crops
    that differ (NVIDIA's geometry applied camera 0's to all) and a rotated, shifted LiDAR."""
    img_aug = img_aug_matrices(preset.cameras)
    lidar_aug = np.eye(4, dtype=np.float32)
    if augmented:
        img_aug[:, 0, 3] -= 3.0 * np.arange(len(img_aug))
        a = np.deg2rad(20.0)
        lidar_aug[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        lidar_aug[:3, 3] = (1.5, -2.0, 0.3)
    return img_aug, lidar_aug


def _plan(preset: Preset, calib: Calibration, augmented: bool = False) -> kernels.BevPoolPlan:
    vt = preset.model.vtransform
    img_aug, lidar_aug = _augmentations(preset, augmented)
    return kernels.geometry(calib.camera2lidar.astype(np.float32),
                            calib.intrinsics.astype(np.float32), img_aug, lidar_aug,
                            preset.cameras.image_size, preset.feature_size, vt.dbound,
                            vt.xbound, vt.ybound, vt.zbound)


def _pool_inputs(preset: Preset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Softmaxed depth weights (N, D, h, w) and NHWC features (N, h, w, C), float32."""
    n, (h, w) = preset.cameras.num_cameras, preset.feature_size
    logits = rng.normal(size=(n, preset.model.vtransform.depth_bins, h, w))
    weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    feats = rng.normal(size=(n, h, w, preset.model.vtransform.out_channels))
    return weights.astype(np.float32), feats.astype(np.float32)


def _reference_pool(preset: Preset, calib: Calibration, weights: np.ndarray, feats: np.ndarray,
                    augmented: bool = False) -> np.ndarray:
    """The model's ``get_geometry`` (float64 matrices) + ``bev_pool``, on the kernel's frustum.

    The frustum is copied from the kernel because torch's float32 ``linspace`` may differ from
    the correctly rounded values by an ulp, depending on the CPU's vector width (checked on its
    own in ``test_frustum_is_the_reference_frustum_within_an_ulp``).
    """
    vt = build_vtransform(preset)
    cfg = preset.model.vtransform
    vt.frustum.data = torch.from_numpy(kernels.frustum(preset.cameras.image_size,
                                                       preset.feature_size, cfg.dbound))
    img_aug, lidar_aug = _augmentations(preset, augmented)
    with torch.no_grad():
        geom = vt.get_geometry(_t64(calib.camera2lidar.astype(np.float32))[None],
                               _t64(intrinsics_4x4(calib.intrinsics.astype(np.float32)))[None],
                               _t64(img_aug)[None], _t64(lidar_aug)[None])
        out = vt.bev_pool(geom, torch.from_numpy(weights)[None],
                          torch.from_numpy(feats).permute(0, 3, 1, 2)[None])
    return out.numpy()


def _assert_pool_close(got: np.ndarray, want: np.ndarray) -> None:
    """≤ 1e-4 relative to the largest cell (float32 sums in another order), and the same set
    of non-empty cells."""
    assert got.shape == want.shape and got.dtype == np.float32
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_array_equal(np.any(got != 0, axis=1), np.any(want != 0, axis=1))


def _assert_plan_is_well_formed(plan: kernels.BevPoolPlan) -> None:
    """Intervals tile ``indices`` in order, cells strictly increase, indices are unique."""
    assert plan.interval_starts[0] == 0 and plan.interval_ends[-1] == plan.num_points
    np.testing.assert_array_equal(plan.interval_starts[1:], plan.interval_ends[:-1])
    assert np.all(plan.interval_ends > plan.interval_starts)
    assert np.all(np.diff(plan.cells) > 0)
    assert np.unique(plan.indices).size == plan.num_points
    nx, ny, nz = plan.bev_size
    assert plan.cells[0] >= 0 and plan.cells[-1] < nx * ny * nz


def test_frustum_is_the_reference_frustum_within_an_ulp(tiny):
    vt = build_vtransform(tiny)
    got = kernels.frustum(tiny.cameras.image_size, tiny.feature_size, tiny.model.vtransform.dbound)
    assert got.dtype == np.float32
    np.testing.assert_array_max_ulp(got, vt.frustum.numpy(), maxulp=1)


@pytest.mark.parametrize("grid", ["square", "square-augmented", "rectangular-two-z-cells"])
def test_geometry_and_bev_pool_match_reference(tiny, grid):
    """Square 128×128 grid (also with per-camera image crops and a LiDAR augmentation), and a
    128×80 grid with two z cells: NVIDIA's flat offset used the x extent as the row stride
    (wrong for rectangles), and the channel order is z·C + c."""
    preset = tiny if grid.startswith("square") else _with_bev_grid(tiny, (-32.0, 32.0, 0.8),
                                                                   (-10.0, 10.0, 10.0))
    augmented = grid == "square-augmented"
    calib = _rig_calibration()
    plan = _plan(preset, calib, augmented)
    _assert_plan_is_well_formed(plan)
    assert plan.bev_size == preset.model.vtransform.bev_size
    total = int(np.prod(plan.frustum_shape))
    assert 0.5 * total < plan.num_points < total  # points kept and points dropped
    weights, feats = _pool_inputs(preset, np.random.default_rng(2))
    got = kernels.bev_pool(weights, feats, plan)
    _assert_pool_close(got, _reference_pool(preset, calib, weights, feats, augmented))
    if augmented:  # the augmentations moved the plan
        assert not np.array_equal(plan.cells, _plan(preset, calib).cells)
    if grid.startswith("rectangular"):
        c = preset.model.vtransform.out_channels
        assert np.abs(got[0, :c]).max() > 0 and np.abs(got[0, c:]).max() > 0  # both z cells


def test_corner_cell_and_dropped_points_do_not_mix(tiny):
    """A camera just inside the grid corner looking out of it: its nearest frustum points land
    in cell (0, 0, 0) (coordinates up to one cell below the bound truncate to 0), the rest of
    its frustum leaves the grid. NVIDIA's plan gives both rank 0 and pools them together
    (docs/reference.md#geometry-precompute, issue #222); here cell (0, 0) must hold exactly the
    reference's sum."""
    calib = _rig_calibration()
    yaw = np.deg2rad(225.0)  # optical axis towards −x−y, out of the grid
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[s, 0.0, c], [-c, 0.0, s], [0.0, -1.0, 0.0]]  # columns: camera x, y, z
    pose[:3, 3] = (*(np.asarray(tiny.points.point_cloud_range[:2]) + 0.4), 0.0)
    calib.camera2lidar[0] = pose
    plan = _plan(tiny, calib)
    _assert_plan_is_well_formed(plan)
    assert plan.cells[0] == 0  # cell (x=0, y=0, z=0) is occupied
    per_camera = int(np.prod(plan.frustum_shape[1:]))
    from_camera0 = plan.indices[plan.indices < per_camera]
    assert 0 < from_camera0.size < per_camera // 10  # camera 0 drops most of its points
    first = plan.indices[plan.interval_starts[0]:plan.interval_ends[0]]
    assert np.any(first < per_camera)  # and some of the ones it keeps are in cell (0, 0)

    weights, feats = _pool_inputs(tiny, np.random.default_rng(3))
    got = kernels.bev_pool(weights, feats, plan)
    want = _reference_pool(tiny, calib, weights, feats)
    _assert_pool_close(got, want)
    assert np.abs(want[0, :, 0, 0]).max() > 0
    np.testing.assert_allclose(got[0, :, 0, 0], want[0, :, 0, 0], rtol=1e-5, atol=1e-6)


def test_a_rig_that_sees_nothing_of_the_grid_pools_zeros(tiny):
    calib = _rig_calibration()
    calib.camera2lidar[:, :3, 3] += (1000.0, 0.0, 0.0)  # the whole rig 1 km away
    plan = _plan(tiny, calib)
    assert plan.num_points == 0 and plan.num_intervals == 0
    weights, feats = _pool_inputs(tiny, np.random.default_rng(10))
    out = kernels.bev_pool(weights, feats, plan, out=np.ones((1, 32, 128, 128), np.float32))
    assert not out.any()


def test_bev_pool_overwrites_a_reused_output(tiny):
    calib = _rig_calibration()
    plan = _plan(tiny, calib)
    weights, feats = _pool_inputs(tiny, np.random.default_rng(4))
    fresh = kernels.bev_pool(weights, feats, plan)
    buffer = np.full_like(fresh, 7.0)
    assert kernels.bev_pool(weights, feats, plan, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, fresh)
    with pytest.raises(InputError) as err:
        kernels.bev_pool(weights, feats, plan, out=buffer[:, :-1])
    assert err.value.field == "out"
    with pytest.raises(InputError) as err:
        kernels.bev_pool(weights[:, :-1], feats, plan)
    assert err.value.field == "depth_weights"


def test_a_plan_that_would_index_out_of_bounds_is_refused(tiny):
    plan = _plan(tiny, _rig_calibration())
    bad_index = plan.indices.copy()
    bad_index[-1] = np.prod(plan.frustum_shape)
    repeated_cell = plan.cells.copy()
    repeated_cell[1] = repeated_cell[0]
    for field, changes in (("indices", {"indices": bad_index}),
                           ("cells", {"cells": repeated_cell}),
                           ("interval_ends", {"interval_ends": plan.interval_ends + 1})):
        with pytest.raises(InputError) as err:
            dataclasses.replace(plan, **changes)
        assert err.value.field == f"plan.{field}"


def test_results_do_not_depend_on_the_thread_count(tiny):
    """Threads split work by interval (bev_pool) and by camera (depth_map), and each output
    element is accumulated by one thread in a fixed order: 1 and 2 threads agree bit for bit."""
    calib = _rig_calibration()
    plan = _plan(tiny, calib)
    weights, feats = _pool_inputs(tiny, np.random.default_rng(8))
    pts = _depth_points(np.random.default_rng(9), tiny, calib)
    l2i, aug = lidar2image(calib), img_aug_matrices(tiny.cameras)
    results = []
    threads = numba.get_num_threads()
    try:
        for count in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(count)
            results.append((kernels.bev_pool(weights, feats, plan),
                            kernels.depth_map(pts, l2i, aug, tiny.cameras.image_size)))
    finally:
        numba.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)


def test_geometry_rejects_singular_intrinsics(tiny):
    calib = _rig_calibration()
    k = calib.intrinsics.copy()
    k[2] = 0.0
    with pytest.raises(InputError) as err:
        kernels.geometry(calib.camera2lidar, k, img_aug_matrices(tiny.cameras), np.eye(4),
                         tiny.cameras.image_size, tiny.feature_size, *(
                             getattr(tiny.model.vtransform, b)
                             for b in ("dbound", "xbound", "ybound", "zbound")))
    assert err.value.field == "intrinsics"


# --------------------------------------------------------------------------------------------
# depth_map
# --------------------------------------------------------------------------------------------

def _depth_points(rng: np.random.Generator, preset: Preset, calib: Calibration) -> np.ndarray:
    """Points all around the car, plus pairs on one camera ray at two depths (a later point
    hitting an earlier one's pixel) interleaved with the rest."""
    r = np.asarray(preset.points.point_cloud_range)
    xyz = rng.uniform(r[:3], r[3:], size=(8000, 3))
    cam2lidar = calib.camera2lidar[0]
    rays = np.linalg.inv(calib.intrinsics[0]) @ np.stack(
        [rng.uniform(300, 1300, 50), rng.uniform(500, 800, 50), np.ones(50)])
    near, far = ((cam2lidar[:3, :3] @ (rays * d) + cam2lidar[:3, 3:4]).T for d in (6.0, 17.0))
    xyz = np.concatenate([xyz[:4000], near, xyz[4000:], far])
    return np.concatenate([xyz, rng.uniform(0, 1, size=(len(xyz), 2))], axis=1).astype(np.float32)


def test_depth_map_matches_reference(tiny):
    """Bit-identical to the reference run on float64 matrices (same maths, same tie rule: the
    later point on a pixel wins); against the float32 reference, ≥ 99.9% of the lit pixels
    are lit in both with depths equal to 1e-6 (float32 rounding may move a point that sits
    within an ulp of a pixel edge)."""
    calib = _rig_calibration()
    pts = _depth_points(np.random.default_rng(5), tiny, calib)
    l2i, aug = lidar2image(calib), img_aug_matrices(tiny.cameras)
    got = kernels.depth_map(pts, l2i, aug, tiny.cameras.image_size)
    vt = build_vtransform(tiny)
    with torch.no_grad():
        ref64 = vt.depth_map([torch.from_numpy(pts)], _t64(l2i)[None], _t64(aug)[None],
                             torch.eye(4, dtype=torch.float64)[None])[0].numpy()
        ref32 = vt.depth_map([torch.from_numpy(pts)], torch.from_numpy(l2i)[None],
                             torch.from_numpy(aug)[None], torch.eye(4)[None])[0].numpy()
    assert got.shape == (6, 1, *tiny.cameras.image_size) and got.dtype == np.float32
    assert np.count_nonzero(got) > 1000
    np.testing.assert_array_equal(got, ref64.astype(np.float32))
    np.testing.assert_array_equal(got, ref32)


def test_depth_map_agrees_with_the_float32_reference_on_points_at_pixel_edges(tiny):
    """Points whose image column lies within 1e-4 px of a pixel edge: a float32 projection puts
    some of them in the neighbouring column (checked here, so the case has teeth), and at an
    object outline that moves a depth by metres — ``compare`` once failed its depth stage on
    such a pixel (37.6 m). The reference projects in float64 whatever its inputs' dtype, as the
    kernel does, so the two agree bit for bit on float32 inputs too."""
    calib = _rig_calibration()
    l2i, aug = lidar2image(calib), img_aug_matrices(tiny.cameras)
    height, width = tiny.cameras.image_size
    rng = np.random.default_rng(11)
    n = 4000
    col = rng.integers(1, width - 1, n) + rng.uniform(-1e-4, 1e-4, n)  # near an edge
    row = rng.uniform(1, height - 1, n)
    depth = rng.uniform(4.0, 45.0, n)
    a = aug[0].astype(np.float64)
    raw = np.linalg.solve(a[:2, :2], np.stack([col, row]) - np.outer(a[:2, 2], depth)
                          - a[:2, 3:4])  # (2, n) raw-image pixels
    homogeneous = np.stack([raw[0] * depth, raw[1] * depth, depth, np.ones(n)])
    xyz = (np.linalg.inv(l2i[0].astype(np.float64)) @ homogeneous)[:3].T
    pts = np.concatenate([xyz, rng.uniform(0, 1, (n, 2))], axis=1).astype(np.float32)

    def columns(dtype: type) -> np.ndarray:
        m, p = l2i[0].astype(dtype), pts[:, :3].astype(dtype).T
        cam = m[:3, :3] @ p + m[:3, 3:]
        z = np.clip(cam[2], 1e-5, 1e5)
        return np.trunc(aug[0, 0, 0].astype(dtype) * (cam[0] / z) + aug[0, 0, 3].astype(dtype))

    assert np.count_nonzero(columns(np.float32) != columns(np.float64)) > 10
    got = kernels.depth_map(pts, l2i, aug, tiny.cameras.image_size)
    with torch.no_grad():
        ref32 = build_vtransform(tiny).depth_map(
            [torch.from_numpy(pts)], torch.from_numpy(l2i)[None], torch.from_numpy(aug)[None],
            torch.eye(4)[None])[0].numpy()
    assert np.count_nonzero(got[0]) > 0.9 * n
    np.testing.assert_array_equal(got, ref32)


def test_depth_map_later_point_wins_a_pixel(tiny):
    calib = _rig_calibration()
    ray = np.linalg.inv(calib.intrinsics[0]) @ np.array([800.3, 650.6, 1.0])
    c2l = calib.camera2lidar[0]
    near, far = (c2l[:3, :3] @ (ray * d) + c2l[:3, 3] for d in (5.0, 20.0))
    l2i, aug = lidar2image(calib), img_aug_matrices(tiny.cameras)
    for order, expected in (((near, far), 20.0), ((far, near), 5.0)):
        pts = np.concatenate([np.stack(order), np.zeros((2, 2))], axis=1).astype(np.float32)
        depth = kernels.depth_map(pts, l2i, aug, tiny.cameras.image_size)[0, 0]
        assert np.count_nonzero(depth) == 1
        assert depth[depth > 0][0] == pytest.approx(expected, rel=1e-5)


def test_depth_map_of_no_points_is_zero(tiny):
    calib = _rig_calibration()
    depth = kernels.depth_map(np.zeros((0, 5), np.float32), lidar2image(calib),
                              img_aug_matrices(tiny.cameras), tiny.cameras.image_size)
    assert depth.shape == (6, 1, *tiny.cameras.image_size) and not depth.any()


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def head_outputs(tiny) -> dict[str, np.ndarray]:
    """A real forward of the tiny TransFusion head (random weights, eval mode) on random BEV
    features, reduced to the deploy graph's outputs (``score`` = sigmoid × heatmap score ×
    one-hot, as ``head.bbox.onnx`` ends)."""
    torch.manual_seed(0)
    head = build_head(tiny).eval()
    x, y = tiny.bev_size
    with torch.no_grad():
        out = head(torch.randn(1, tiny.model.decoder.middle_channels, x, y))
        one_hot = torch.nn.functional.one_hot(out["query_labels"], tiny.num_classes)
        score = out["heatmap"].sigmoid() * out["query_heatmap_score"] * one_hot.permute(0, 2, 1)
    arrays = {"score": score, "reg": out["center"], **{k: out[k] for k in
                                                        ("rot", "dim", "height", "vel")}}
    return {k: v[0].numpy() for k, v in arrays.items()}


@pytest.mark.parametrize("variant", ["preset", "narrow-range-and-threshold"])
def test_decode_matches_reference_box_coder(tiny, head_outputs, variant):
    preset = tiny
    if variant != "preset":
        head = dataclasses.replace(tiny.model.head, score_threshold=0.05,
                                   post_center_range=(-20.0, -30.0, -10.0, 30.0, 25.0, 10.0))
        preset = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, head=head))
    o = head_outputs
    want = TransFusionBBoxCoder(preset).decode(
        *(torch.from_numpy(o[k])[None] for k in ("score", "rot", "dim", "reg", "height", "vel")))[0]
    hc, r = preset.model.head, preset.points.point_cloud_range
    boxes, scores, labels = kernels.decode(
        o["score"], o["rot"], o["dim"], o["reg"], o["height"], o["vel"], hc.out_size_factor,
        preset.voxel.voxel_size[:2], r[:2], hc.post_center_range, hc.score_threshold)
    num_queries = o["score"].shape[1]
    if variant == "preset":
        assert len(want) == num_queries
    else:
        assert 0 < len(want) < num_queries // 2  # the range and the threshold removed boxes
        assert want.scores.min() > 0.05
    np.testing.assert_array_equal(labels, want.labels)
    np.testing.assert_array_equal(scores, want.scores)
    # exp/atan2 of numpy and torch may differ in the last bit
    np.testing.assert_allclose(boxes, want.boxes, rtol=1e-6, atol=1e-5)
    assert boxes.dtype == np.float32 and labels.dtype == np.int64


def test_decode_rejects_mismatched_query_counts(tiny, head_outputs):
    o = head_outputs
    with pytest.raises(InputError) as err:
        kernels.decode(o["score"], o["rot"][:, :-1], o["dim"], o["reg"], o["height"], o["vel"],
                       8, (0.2, 0.2), (-51.2, -51.2), (-60, -60, -10, 60, 60, 10), 0.0)
    assert err.value.field == "rot"


# --------------------------------------------------------------------------------------------
# normalize
# --------------------------------------------------------------------------------------------

def test_normalize_matches_reference_preprocessing(tiny):
    """Bit-identical to ``model.inputs.prepare_images`` (PIL bicubic, bottom-centre crop,
    float32 mean/std) on noise images with a smooth gradient, the hard case for a resize."""
    rng = np.random.default_rng(6)
    h, w = tiny.cameras.raw_size
    ramp = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 50, h)[:, None, None]
    images = np.clip(ramp + rng.normal(0, 20, size=(6, h, w, 3)), 0, 255).astype(np.uint8)
    cams = tiny.cameras
    got = kernels.normalize(images, cams.resize, cams.resized_size, cams.crop_offset,
                            cams.image_size, cams.mean, cams.std)
    assert got.shape == (1, 6, 3, *cams.image_size) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], prepare_images(images, tiny))


def test_normalize_rejects_images_of_another_raw_size_or_dtype(tiny):
    cams = tiny.cameras
    args = (cams.resize, cams.resized_size, cams.crop_offset, cams.image_size, cams.mean,
            cams.std)
    with pytest.raises(InputError, match="raw size") as err:
        kernels.normalize(np.zeros((6, 450, 800, 3), np.uint8), *args)
    assert err.value.field == "images"
    with pytest.raises(InputError, match="uint8"):
        kernels.normalize(np.zeros((6, *cams.raw_size, 3), np.float32), *args)


# --------------------------------------------------------------------------------------------
# torch-free, and the full-size memory bound
# --------------------------------------------------------------------------------------------

def _run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kernels_import_without_torch():
    out = _run_python("""
        import sys
        import bevdeploy.runtime.kernels
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'spconv')
                     or m.startswith(('bevdeploy.model', 'bevdeploy.export'))))
    """)
    assert out.strip() == "[]"


@pytest.mark.slow
def test_bev_pool_full_size_never_materializes_the_frustum(tmp_path):
    """nuScenes-resnet50 shapes: 6×118×32×88 weights × 80 channels. The lifted frustum would
    be 6·118·32·88·80·4 B = 638 MB; the pooling may grow the peak RSS by at most 200 MB (the
    output itself is 80×360×360×4 B = 41 MB). Measured in a fresh process, with the peak
    (VmHWM) reset right before the call."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak RSS")
    preset = get_preset("nuscenes-resnet50")
    calib = _rig_calibration()
    plan = _plan(preset, calib)
    np.savez(tmp_path / "plan.npz", indices=plan.indices, starts=plan.interval_starts,
             ends=plan.interval_ends, cells=plan.cells, bev_size=plan.bev_size,
             frustum_shape=plan.frustum_shape)
    out = _run_python(f"""
        import numpy as np
        from bevdeploy.runtime import kernels

        def status(key):
            for line in open('/proc/self/status'):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

        z = np.load({str(tmp_path / 'plan.npz')!r})
        plan = kernels.BevPoolPlan(z['indices'], z['starts'], z['ends'], z['cells'],
                                   tuple(int(v) for v in z['bev_size']),
                                   tuple(int(v) for v in z['frustum_shape']))
        n, d, h, w = plan.frustum_shape
        rng = np.random.default_rng(0)
        weights = rng.random((n, d, h, w), dtype=np.float32)
        feats = rng.standard_normal((n, h, w, 80), dtype=np.float32)
        kernels.bev_pool(weights, feats, plan)  # compile (or load the cache) and warm up
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        before = status('VmRSS')
        out = kernels.bev_pool(weights, feats, plan)
        print(status('VmHWM') - before, np.count_nonzero(out.any(axis=1)))
    """)
    growth, occupied = (int(v) for v in out.split())
    assert occupied > 10_000
    assert growth < 200e6, f"peak RSS grew by {growth / 1e6:.0f} MB"


@pytest.mark.slow
def test_geometry_and_bev_pool_match_reference_at_full_size():
    preset = get_preset("nuscenes-resnet50")
    calib = _rig_calibration()
    plan = _plan(preset, calib)
    weights, feats = _pool_inputs(preset, np.random.default_rng(7))
    _assert_pool_close(kernels.bev_pool(weights, feats, plan),
                       _reference_pool(preset, calib, weights, feats))
