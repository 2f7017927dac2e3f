"""CUDA kernels (Triton) against the CPU kernels, on random and synthetic-world inputs.

Each case runs twice (see ``WHERE``): under Triton's interpreter on CPU tensors at ``tiny``
shapes wherever triton imports and no GPU is usable, and compiled on a GPU (``gpu`` marker) at
``nuscenes-resnet50`` shapes. Tolerances:

- ``normalize``, ``depth_map``, ``geometry`` and ``voxelize``: bit-equal. They reproduce the
  CPU kernels' arithmetic operation by operation (IEEE division, no FMA contraction, float64
  where the CPU uses it, PIL's fixed point), so there is nothing to tolerate; ``voxelize``
  rows ``[0, num_voxels)`` equal the CPU's in its order and the padding rows are zero.
- ``bev_pool``: float32 max-abs ≤ 1e-5 × max|CPU| and cosine ≥ 1 − 1e-6 (the GPU may fuse
  multiply-adds); float16 inputs with float32 accumulation 2e-3 × max and 0.99999; float16
  accumulation 1e-2 × max and 0.9999 (runs of hundreds of points per cell near the cameras).
- ``decode``: labels and scores equal, boxes to 1e-5 (exp and atan2 differ in the last bit).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bevdeploy.data.preprocess import img_aug_matrices, lidar2image
from bevdeploy.errors import InputError
from bevdeploy.presets import Preset, get_preset
from bevdeploy.runtime import kernels

pytest.importorskip("triton", reason="triton is not installed (the gpu extra)")
from bevdeploy.runtime.kernels import cuda  # noqa: E402  (needs triton)

WHERE = [
    pytest.param("cpu", id="interpreter",
                 marks=pytest.mark.skipif(torch.cuda.is_available(),
                                          reason="a GPU is usable: the compiled kernels are "
                                                 "tested instead (the cuda cases); older "
                                                 "Triton releases patch triton.language for "
                                                 "the interpreter in place")),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


def _preset(where: str) -> Preset:
    return get_preset("nuscenes-resnet50" if where == "cuda" else "tiny")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def _on(array: np.ndarray, where: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(where)


# --------------------------------------------------------------------------------------------
# voxelize
# --------------------------------------------------------------------------------------------

def _cloud(rng: np.random.Generator, preset: Preset, num_uniform: int) -> np.ndarray:
    """Uniform points over a box 10% larger than the range (some dropped), non-finite points
    and 40 tight clusters of 25 points (voxels over ``max_points``), shuffled together."""
    r = np.asarray(preset.points.point_cloud_range)
    span = r[3:] - r[:3]
    uniform = rng.uniform(r[:3] - 0.05 * span, r[3:] + 0.05 * span, size=(num_uniform, 3))
    centres = rng.uniform(r[:3] + 1, r[3:] - 1, size=(40, 3))
    clusters = np.repeat(centres, 25, axis=0) + rng.uniform(-0.02, 0.02, size=(1000, 3))
    xyz = np.concatenate([uniform, clusters])
    extra = rng.uniform(0, 255, size=(len(xyz), 2))
    cloud = np.concatenate([xyz, extra], axis=1).astype(np.float32)[rng.permutation(len(xyz))]
    cloud[::997, 0] = np.nan
    cloud[5::1009, 3] = np.inf
    return cloud


def _assert_same_voxels(points: np.ndarray, preset: Preset, max_voxels: int, where: str
                        ) -> np.ndarray:
    """The CUDA voxels equal the CPU's bit for bit; returns the CPU counts."""
    args = (preset.voxel.voxel_size, preset.points.point_cloud_range[:3], preset.grid_size,
            preset.voxel.max_points, max_voxels)
    want_f, want_c, want_n = kernels.voxelize(points, *args)
    feats, coords, counts, num_voxels = cuda.voxelize(_on(points, where), *args)
    assert num_voxels.device.type == where and num_voxels.shape == ()
    m = int(num_voxels)
    capacity = min(len(points), max_voxels)
    assert feats.shape == (capacity, points.shape[1]) and coords.shape == (capacity, 3)
    assert coords.dtype == counts.dtype == torch.int32 and feats.dtype == torch.float32
    assert m == len(want_c)
    np.testing.assert_array_equal(coords[:m].cpu().numpy(), want_c)
    np.testing.assert_array_equal(counts[:m].cpu().numpy(), want_n)
    np.testing.assert_array_equal(feats[:m].cpu().numpy(), want_f)
    assert not feats[m:].any() and not coords[m:].any() and not counts[m:].any()
    return want_n


@pytest.mark.parametrize("where", WHERE)
def test_voxelize_equals_cpu_in_order_with_both_caps(where):
    preset = _preset(where)
    cloud = _cloud(np.random.default_rng(0), preset, 300_000 if where == "cuda" else 3000)
    counts = _assert_same_voxels(cloud, preset, preset.voxel.max_voxels, where)
    assert (counts == preset.voxel.max_points).sum() >= 40  # the per-voxel cap was exercised
    assert len(_assert_same_voxels(cloud, preset, 50, where)) == 50  # the voxel cap too


@pytest.mark.parametrize("where", WHERE)
def test_voxelize_equals_cpu_on_a_world_frame(where, world_frame):
    assert len(_assert_same_voxels(world_frame.points, get_preset("tiny"), 60000, where)) > 1000


@pytest.mark.parametrize("where", WHERE)
def test_voxelize_edges_equal_cpu(where):
    """Points on the lower corner (kept) and on the upper face (dropped); an empty cloud and
    one entirely out of range give no voxels."""
    tiny = get_preset("tiny")
    r = np.asarray(tiny.points.point_cloud_range, dtype=np.float32)
    v = np.asarray(tiny.voxel.voxel_size, dtype=np.float32)
    faces = np.array([[*r[:3], 1.0, 0.0], [r[3], 0.0, 0.0, 2.0, 0.0], [0.0, 0.0, r[5], 3.0, 0.0],
                      [r[0] - v[0] / 2, 0.0, 0.0, 4.0, 0.0], [*(r[3:] - v / 2), 5.0, 0.0]],
                     dtype=np.float32)
    assert len(_assert_same_voxels(faces, tiny, 100, where)) == 2
    for cloud in (np.zeros((0, 5), np.float32), np.full((3, 5), 1e4, np.float32)):
        assert len(_assert_same_voxels(cloud, tiny, 100, where)) == 0


@pytest.mark.parametrize("where", WHERE)
def test_in_range_equals_cpu(where):
    """Strict bounds (points exactly on a face are out), NaN out, order kept."""
    preset = _preset(where)
    r = np.asarray(preset.points.point_cloud_range, dtype=np.float32)
    cloud = _cloud(np.random.default_rng(3), preset, 5000)
    cloud[1, :3] = r[:3]  # on the lower corner: out
    cloud[2, 2] = r[5]  # on the upper face: out
    want = kernels.in_range(cloud, r[:3], r[3:])
    got = cuda.in_range(_on(cloud, where), r[:3], r[3:])
    assert 0 < len(want) < len(cloud) - 100
    np.testing.assert_array_equal(got.cpu().numpy(), want)


# --------------------------------------------------------------------------------------------
# geometry + bev_pool
# --------------------------------------------------------------------------------------------

def _plan_args(preset: Preset, frame, augmented: bool) -> tuple:
    """Calibration of the world frame, at the preset's shapes; ``augmented``: per-camera
    crops that differ and a rotated, shifted LiDAR frame."""
    img_aug = img_aug_matrices(preset.cameras)
    lidar_aug = np.eye(4, dtype=np.float32)
    if augmented:
        img_aug[:, 0, 3] -= 3.0 * np.arange(len(img_aug))
        a = np.deg2rad(20.0)
        lidar_aug[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        lidar_aug[:3, 3] = (1.5, -2.0, 0.3)
    vt = preset.model.vtransform
    return (frame.calib.camera2lidar.astype(np.float32), frame.calib.intrinsics.astype(np.float32),
            img_aug, lidar_aug, preset.cameras.image_size, preset.feature_size, vt.dbound,
            vt.xbound, vt.ybound, vt.zbound)


@pytest.mark.parametrize("augmented", [False, True], ids=["test-time", "augmented"])
@pytest.mark.parametrize("where", WHERE)
def test_geometry_plan_equals_cpu(where, augmented, world_frame):
    args = _plan_args(_preset(where), world_frame, augmented)
    want = kernels.geometry(*args)
    plan = cuda.geometry(*args, device=where)
    assert plan.device.type == where and plan.num_points.device.type == where
    got = plan.to_host()
    assert want.num_points > 10_000
    assert got.bev_size == want.bev_size and got.frustum_shape == want.frustum_shape
    for field in ("indices", "interval_starts", "interval_ends", "cells"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


def _pool_inputs(preset: Preset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Softmaxed depth weights (N, D, h, w) and NHWC features (N, h, w, C), float32."""
    n, (h, w) = preset.cameras.num_cameras, preset.feature_size
    logits = rng.normal(size=(n, preset.model.vtransform.depth_bins, h, w))
    weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    feats = rng.normal(size=(n, h, w, preset.model.vtransform.out_channels))
    return weights.astype(np.float32), feats.astype(np.float32)


def _coarse_depth(preset: Preset) -> Preset:
    """The preset with 4× fewer depth bins: a quarter of the frustum, for the interpreter."""
    vt = dataclasses.replace(preset.model.vtransform, dbound=(1.0, 49.0, 8.0))
    return dataclasses.replace(preset, model=dataclasses.replace(preset.model, vtransform=vt))


@pytest.fixture(scope="module")
def pool_case(request, world_frame):
    """``case(full)`` → (where, CPU result, device plan, weights, feats); ``full`` False gives
    the coarse-depth frustum under the interpreter, whose time is the frustum's size."""
    where = request.param
    cases = {}

    def case(full: bool) -> tuple:
        full = full or where == "cuda"
        if full not in cases:
            preset = _preset(where) if full else _coarse_depth(_preset(where))
            args = _plan_args(preset, world_frame, augmented=False)
            weights, feats = _pool_inputs(preset, np.random.default_rng(1))
            want = kernels.bev_pool(weights, feats, kernels.geometry(*args))
            cases[full] = where, want, cuda.geometry(*args, device=where), weights, feats
        return cases[full]
    return case


# (input dtype, accumulate, max-abs / max|CPU|, cosine)
POOL_TOLERANCES = [(torch.float32, torch.float32, 1e-5, 1 - 1e-6),
                   (torch.float16, torch.float32, 2e-3, 0.99999),
                   (torch.float16, torch.float16, 1e-2, 0.9999)]


@pytest.mark.parametrize("dtype, accumulate, max_abs, min_cosine", POOL_TOLERANCES,
                         ids=["fp32", "fp16-fp32acc", "fp16-fp16acc"])
@pytest.mark.parametrize("pool_case", WHERE, indirect=True)
def test_bev_pool_matches_cpu(pool_case, dtype, accumulate, max_abs, min_cosine):
    """float32 at the preset's shapes; the float16 variants at a coarser depth under the
    interpreter (a frustum four times smaller), at the preset's on a GPU."""
    where, want, plan, weights, feats = pool_case(full=dtype == torch.float32)
    out = torch.full(want.shape, float("nan"), dtype=dtype, device=where)  # all overwritten
    got = cuda.bev_pool(_on(weights, where).to(dtype), _on(feats, where).to(dtype), plan,
                        out=out, accumulate=accumulate)
    assert got is out and got.dtype == dtype
    got32 = got.float().cpu().numpy()
    scale = np.abs(want).max()
    assert scale > 0 and np.count_nonzero(want) > 10_000
    assert np.abs(got32 - want).max() <= max_abs * scale
    assert _cosine(got32, want) >= min_cosine
    assert not got32[want == 0].any()  # empty cells stay empty (nothing leaks across)


# --------------------------------------------------------------------------------------------
# depth_map
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", WHERE)
def test_depth_map_equals_cpu(where, world_frame):
    """The world frame's points plus uniform ones over the range (many pixels hit twice) and
    non-finite ones."""
    preset = _preset(where)
    rng = np.random.default_rng(5)
    r = np.asarray(preset.points.point_cloud_range)
    extra = np.concatenate([rng.uniform(r[:3], r[3:], size=(300_000 if where == "cuda" else
                                                             20_000, 3)),
                            rng.uniform(0, 1, size=(300_000 if where == "cuda" else 20_000, 2))],
                           axis=1)
    points = np.concatenate([world_frame.points, extra]).astype(np.float32)
    points[::500, 1] = np.nan
    args = (lidar2image(world_frame.calib), img_aug_matrices(preset.cameras),
            preset.cameras.image_size)
    want = kernels.depth_map(points, *args)
    got = cuda.depth_map(_on(points, where), *args)
    assert got.device.type == where and got.dtype == torch.float32
    assert np.count_nonzero(want) > 10_000
    np.testing.assert_array_equal(got.cpu().numpy(), want)


@pytest.mark.parametrize("where", WHERE)
def test_depth_map_later_point_wins_a_pixel(where, world_frame):
    tiny = get_preset("tiny")
    calib = world_frame.calib
    ray = np.linalg.inv(calib.intrinsics[0]) @ np.array([800.3, 650.6, 1.0])
    c2l = calib.camera2lidar[0]
    near, far = (c2l[:3, :3] @ (ray * d) + c2l[:3, 3] for d in (5.0, 20.0))
    args = (lidar2image(calib), img_aug_matrices(tiny.cameras), tiny.cameras.image_size)
    for order, expected in (((near, far), 20.0), ((far, near), 5.0)):
        points = np.concatenate([np.stack(order), np.zeros((2, 2))], axis=1).astype(np.float32)
        depth = cuda.depth_map(_on(points, where), *args)[0, 0].cpu().numpy()
        assert np.count_nonzero(depth) == 1
        assert depth[depth > 0][0] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------------
# normalize
# --------------------------------------------------------------------------------------------

def _normalize_both(images: np.ndarray, where: str, *args) -> tuple[np.ndarray, np.ndarray]:
    got = cuda.normalize(_on(images, where), *args)
    assert got.device.type == where and got.dtype == torch.float32
    return got.cpu().numpy(), kernels.normalize(images, *args)


@pytest.mark.parametrize("where", WHERE)
def test_normalize_equals_cpu_on_world_images(where, world_frame):
    """The world's 1600×900 camera images through the preset's resize and crop; one camera
    under the interpreter (its cost is the input's size)."""
    images = world_frame.images if where == "cuda" else world_frame.images[:1]
    cams = _preset(where).cameras
    got, want = _normalize_both(images, where, cams.resize, cams.resized_size,
                                cams.crop_offset, cams.image_size, cams.mean, cams.std)
    assert np.unique(want).size > 100
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("resize, raw_size, crop_offset, image_size",
                         [(0.48, (180, 320), (10, 6), (64, 140)),  # nuScenes' scale
                          (1.7, (50, 60), (3, 5), (60, 90))],  # an upscale
                         ids=["downscale", "upscale"])
@pytest.mark.parametrize("where", WHERE)
def test_normalize_equals_cpu_at_other_scales(where, resize, raw_size, crop_offset,
                                              image_size):
    """Noise with saturated bands (clamping in both passes) at scales the presets lack."""
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, size=(2, *raw_size, 3), dtype=np.uint8)
    images[0, : raw_size[0] // 3] = 255
    images[1, :, : raw_size[1] // 4] = 0
    resized = (int(raw_size[0] * resize), int(raw_size[1] * resize))
    cams = get_preset("tiny").cameras
    got, want = _normalize_both(images, where, resize, resized, crop_offset, image_size,
                                cams.mean, cams.std)
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["preset", "narrow-range-and-threshold"])
@pytest.mark.parametrize("where", WHERE)
def test_decode_matches_cpu(where, variant):
    tiny = get_preset("tiny")
    head = tiny.model.head
    threshold, centre_range = head.score_threshold, head.post_center_range
    if variant != "preset":
        threshold, centre_range = 0.05, (-20.0, -30.0, -10.0, 30.0, 25.0, 10.0)
    rng = np.random.default_rng(7)
    k, p = tiny.num_classes, head.num_proposals
    score = rng.random((k, p), dtype=np.float32) * np.eye(k, dtype=np.float32)[
        rng.integers(0, k, p)].T  # one class per query, as the head's output
    outputs = {"rot": rng.normal(size=(2, p)), "dim": rng.normal(0, 0.5, size=(3, p)),
               "reg": rng.uniform(0, tiny.bev_size[0], size=(2, p)),
               "height": rng.normal(size=(1, p)), "vel": rng.normal(size=(2, p))}
    arrays = [score] + [outputs[name].astype(np.float32)
                        for name in ("rot", "dim", "reg", "height", "vel")]
    rest = (head.out_size_factor, tiny.voxel.voxel_size[:2], tiny.points.point_cloud_range[:2],
            centre_range, threshold)
    want_boxes, want_scores, want_labels = kernels.decode(*arrays, *rest)
    boxes, scores, labels = cuda.decode(*(_on(a, where) for a in arrays), *rest)
    if variant == "preset":
        assert len(want_boxes) > p // 2
    else:
        assert 0 < len(want_boxes) < p // 2
    assert boxes.device.type == where and labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.cpu().numpy(), want_labels)
    np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)
    np.testing.assert_allclose(boxes.cpu().numpy(), want_boxes, rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------------
# the contract: device tensors in, no host round trip, clear errors
# --------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_kernels_up_to_the_head_never_synchronise_with_the_host(world_frame):
    """With CUDA's sync debug mode set to error, any operation that waits for the GPU (a
    count copied back, a blocking copy) raises: the kernels queue a whole frame."""
    preset = get_preset("nuscenes-resnet50")
    cams, vt = preset.cameras, preset.model.vtransform
    points = _on(world_frame.points, "cuda")
    images = _on(world_frame.images, "cuda")
    weights, feats = (_on(a, "cuda") for a in _pool_inputs(preset, np.random.default_rng(2)))
    args = _plan_args(preset, world_frame, augmented=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cuda.normalize(images, cams.resize, cams.resized_size, cams.crop_offset,
                       cams.image_size, cams.mean, cams.std)
        cuda.depth_map(points, lidar2image(world_frame.calib), img_aug_matrices(cams),
                       cams.image_size)
        cuda.bev_pool(weights, feats, cuda.geometry(*args, device="cuda"))
        voxels = cuda.voxelize(points, preset.voxel.voxel_size,
                               preset.points.point_cloud_range[:3], preset.grid_size,
                               preset.voxel.max_points, preset.voxel.max_voxels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(voxels[3]) > 1000 and vt.out_channels == feats.shape[3]


def test_kernels_refuse_host_arrays_and_wrong_types_naming_the_argument():
    """Checked before anything launches, so these run without a GPU."""
    tiny = get_preset("tiny")
    vox = (tiny.voxel.voxel_size, (0.0,) * 3, tiny.grid_size, 10, 100)
    with pytest.raises(InputError) as err:
        cuda.voxelize(np.zeros((4, 5), np.float32), *vox)
    assert err.value.field == "points" and "voxelize" in err.value.path
    with pytest.raises(InputError, match="float32") as err:
        cuda.voxelize(torch.zeros((4, 5), dtype=torch.float64), *vox)
    assert err.value.field == "points"
    with pytest.raises(InputError, match="uint8") as err:
        cuda.normalize(torch.zeros((1, 8, 8, 3)), 1.0, (8, 8), (0, 0), (8, 8), (0,) * 3,
                       (1,) * 3)
    assert err.value.field == "images"


def test_bev_pool_refuses_mismatched_inputs_naming_the_argument(world_frame):
    """Wrong dtype pairing, a misshaped ``out`` and an unsupported accumulation type are
    refused before the kernel launches."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = cuda.geometry(*_plan_args(get_preset("tiny"), world_frame, augmented=False),
                         device=device)
    n, d, h, w = plan.frustum_shape
    weights = torch.rand(n, d, h, w, device=device)
    feats = torch.rand(n, h, w, 8, device=device)
    with pytest.raises(InputError) as err:
        cuda.bev_pool(weights, feats.half(), plan)
    assert err.value.field == "feats"
    with pytest.raises(InputError) as err:
        cuda.bev_pool(weights, feats, plan, out=torch.empty(1, 8, 3, 3, device=device))
    assert err.value.field == "out"
    with pytest.raises(InputError) as err:
        cuda.bev_pool(weights, feats, plan, accumulate=torch.float16)
    assert err.value.field == "accumulate"
