"""The stages on the CUDA kernel set: ``kernels_for`` picks one set per device, and a stage
built on a torch device (here ``"cpu"``: the Triton kernels in the interpreter) computes what
the host stage computes, checks its inputs the same way and keeps its own geometry cache."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bevdeploy.data.preprocess import lidar2image
from bevdeploy.errors import InputError
from bevdeploy.package import load_package
from bevdeploy.runtime import kernels
from bevdeploy.runtime.kernels import kernels_for
from bevdeploy.runtime.stages import (
    BevPoolParams, BevPoolStage, DecodeParams, DecodeStage, DepthParams, DepthStage,
    GeometryParams, GeometryStage, NormalizeParams, NormalizeStage, VoxelizeParams, VoxelizeStage,
)

pytest.importorskip("triton", reason="triton is not installed (the gpu extra)")
from bevdeploy.runtime.kernels import cuda  # noqa: E402  (needs triton)

DEVICE = "cpu"  # a torch device: the CUDA kernel set, interpreted


@pytest.fixture(scope="module")
def pkg(trained_tiny_package):
    return load_package(trained_tiny_package)


def test_kernels_for_picks_the_set_of_the_device():
    assert kernels_for(None) is kernels.cpu
    assert kernels_for(DEVICE) is cuda and kernels_for("cuda:0") is cuda


def test_camera_input_stages_on_the_device_equal_the_host_stages(pkg, world_frame):
    normalize = NormalizeParams.from_package(pkg)
    host_img = NormalizeStage(normalize).run(world_frame.images)
    device_img = NormalizeStage(normalize, device=DEVICE).run(torch.from_numpy(world_frame.images))
    np.testing.assert_array_equal(device_img.numpy(), host_img)

    voxelize = VoxelizeStage(VoxelizeParams.from_package(pkg))
    points = voxelize.select(world_frame.points)
    depth = DepthParams.from_package(pkg)
    l2i = lidar2image(world_frame.calib)
    host_depth = DepthStage(depth).run(points, l2i)
    device_depth = DepthStage(depth, device=DEVICE).run(torch.from_numpy(points), l2i)
    np.testing.assert_array_equal(device_depth.numpy(), host_depth)


def test_voxelize_on_the_device_cuts_its_rows_to_the_voxel_count(pkg, world_frame):
    params = VoxelizeParams.from_package(pkg)
    host = VoxelizeStage(params)
    points = host.select(world_frame.points)
    want = host.run(points)
    got = VoxelizeStage(params, device=DEVICE).run(torch.from_numpy(points))
    assert len(got) == len(want) > 0
    for name in ("feats", "coords", "counts"):
        np.testing.assert_array_equal(getattr(got, name).numpy(), getattr(want, name), name)


def test_the_device_geometry_stage_caches_and_counts_its_own_plans(pkg, world_frame):
    params = GeometryParams.from_package(pkg)
    host, device = GeometryStage(params), GeometryStage(params, device=DEVICE)
    plan = device.run(world_frame.calib)
    assert isinstance(plan, cuda.DeviceBevPoolPlan) and device.computations == 1
    assert device.run(replace(world_frame.calib)) is plan and device.computations == 1
    want = host.run(world_frame.calib).__dict__
    got = plan.to_host().__dict__
    for name in ("indices", "interval_starts", "interval_ends", "cells"):
        np.testing.assert_array_equal(got[name], want[name], name)
    moved = world_frame.calib.camera2lidar.copy()
    moved[:, 0, 3] += 0.5
    device.run(replace(world_frame.calib, camera2lidar=moved))
    assert device.computations == 2 and host.computations == 1  # each stage its own count


def test_bevpool_on_the_device_pools_like_the_host_and_checks_its_inputs(pkg, world_frame):
    params = BevPoolParams.from_package(pkg)
    geometry = GeometryParams.from_package(pkg)
    n, (h, w), d, c = params.num_cameras, params.feature_size, params.depth_bins, params.channels
    rng = np.random.default_rng(5)
    weights = rng.random((n, d, h, w), dtype=np.float32)
    feats = rng.standard_normal((n, h, w, c), dtype=np.float32)
    want = BevPoolStage(params).run(weights, feats, GeometryStage(geometry).run(world_frame.calib))
    stage = BevPoolStage(params, device=DEVICE)
    plan = GeometryStage(geometry, device=DEVICE).run(world_frame.calib)
    out = torch.empty(want.shape, dtype=torch.float32)
    got = stage.run(torch.from_numpy(weights), torch.from_numpy(feats), plan, out=out)
    assert got.data_ptr() == out.data_ptr()  # pooled into the caller's buffer
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError) as err:
        stage.run(torch.from_numpy(weights), torch.from_numpy(feats[..., :-1]), plan)
    assert err.value.field == "bevpool.feats"


def test_decode_on_the_device_returns_host_detections_like_the_host_stage(pkg):
    params = DecodeParams.from_package(pkg)
    rng = np.random.default_rng(11)
    queries, classes = 40, len(params.class_names)
    outputs = {"score": rng.random((1, classes, queries), dtype=np.float32),
               "rot": rng.standard_normal((1, 2, queries), dtype=np.float32),
               "dim": rng.standard_normal((1, 3, queries), dtype=np.float32),
               "reg": rng.random((1, 2, queries), dtype=np.float32) * 20,
               "height": rng.standard_normal((1, 1, queries), dtype=np.float32),
               "vel": rng.standard_normal((1, 2, queries), dtype=np.float32)}
    want = DecodeStage(params).run(outputs)
    # a float16 head's outputs: the device stage decodes them in float32
    half = {k: torch.from_numpy(v).half() for k, v in outputs.items()}
    exact = DecodeStage(params).run({k: v.float().numpy() for k, v in half.items()})
    got = DecodeStage(params, device=DEVICE).run(half)
    assert isinstance(got.boxes, np.ndarray) and len(want) > 0
    np.testing.assert_array_equal(got.labels, exact.labels)
    np.testing.assert_allclose(got.boxes, exact.boxes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.scores, exact.scores, rtol=1e-6)
