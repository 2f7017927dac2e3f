"""Runtime stages and the ONNX Runtime backend on the ``tiny`` package.

Every stage is held to the PyTorch reference (``bevdeploy.model``) on a synthetic frame, with
the weights the package was exported from (``export_package`` without a checkpoint seeds the
initialisation with ``RANDOM_INIT_SEED``, so ``create_model`` under the same seed is the
package's model). The stages are thin, so these tests mostly prove the wiring: parameters read from the
manifest, shapes and layouts handed between kernels and graphs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bevdeploy.data.frame import Calibration
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.data.preprocess import img_aug_matrices, lidar2image
from bevdeploy.errors import ConfigError, InputError, PackageError
from bevdeploy.export.writer import export_package
from bevdeploy.model.bbox_coder import TransFusionBBoxCoder
from bevdeploy.model.factory import create_model
from bevdeploy.model.inputs import filter_points, intrinsics_4x4, prepare_images
from bevdeploy.model.lidar.voxelize import voxelize_points
from bevdeploy.package import TensorSpec, load_package
from bevdeploy.presets import get_preset
from bevdeploy.runtime.backends import RunnerOptions, check_feeds, create_runner
from bevdeploy.runtime.backends.onnxruntime import OnnxRuntimeRunner, session_options
from bevdeploy.runtime.stages import (
    BevPoolParams, BevPoolStage, DecodeParams, DecodeStage, DepthParams, DepthStage,
    GeometryParams, GeometryStage, NormalizeParams, NormalizeStage, ScnParams, ScnStage,
    VoxelizeParams, VoxelizeStage,
)
from bevdeploy.vocabulary import RANDOM_INIT_SEED

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return load_package(export_package(get_preset("tiny"), None,
                                       tmp_path_factory.mktemp("stages") / "package"))


@pytest.fixture(scope="module")
def model(package):
    return create_model(package.preset, seed=RANDOM_INIT_SEED)[0]


@pytest.fixture(scope="module")
def frame(synthetic_world):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val", preset="tiny")
    return loader[0]


@pytest.fixture(scope="module")
def points(package, frame):
    """The frame's points after the reference's range filter (what both branches see)."""
    return filter_points(frame.points.astype(np.float32), package.preset.points.point_cloud_range)


def _torch_matrices(frame, preset):
    """The reference's (1, N, 4, 4) float32 calibration tensors for ``frame``."""
    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32))[None]
    return {"camera2lidar": t(frame.calib.camera2lidar),
            "intrinsics": t(intrinsics_4x4(frame.calib.intrinsics)),
            "img_aug": t(img_aug_matrices(preset.cameras)),
            "lidar_aug": torch.eye(4)[None],
            "lidar2image": t(lidar2image(frame.calib))}


# ------------------------------------------------------------------------------ camera stages


def test_normalize_stage_equals_reference_preprocessing(package, frame):
    """Same PIL bicubic resize, crop and mean/std: equal to float rounding (1e-5)."""
    out = NormalizeStage(NormalizeParams.from_package(package)).run(frame.images)
    expected = prepare_images(frame.images, package.preset)[None]
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_depth_stage_equals_reference_depth_map(package, model, frame, points):
    """Projection with the manifest's per-camera img_aug and the frame's lidar2image; the
    reference fixes the tie rule (latest point wins), so the maps agree pixel for pixel
    (depths to 1e-4 m)."""
    out = DepthStage(DepthParams.from_package(package)).run(points, lidar2image(frame.calib))
    m = _torch_matrices(frame, package.preset)
    with torch.no_grad():
        expected = model.encoders["camera"]["vtransform"].depth_map(
            [torch.from_numpy(points)], m["lidar2image"], m["img_aug"], m["lidar_aug"]).numpy()
    assert out.shape == expected.shape == (1, 6, 1, *package.preset.cameras.image_size)
    assert (expected > 0).sum() > 1000  # the frame really projects into the images
    np.testing.assert_array_equal(out > 0, expected > 0)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def _moved(calib: Calibration, camera: int, dx: float) -> Calibration:
    c2l = calib.camera2lidar.copy()
    c2l[camera, 0, 3] += dx
    return replace(calib, camera2lidar=c2l)


def test_geometry_stage_is_cached_per_calibration(package, model, frame):
    stage = GeometryStage(GeometryParams.from_package(package))
    plan = stage.run(frame.calib)
    assert stage.computations == 1
    assert stage.run(replace(frame.calib)) is plan and stage.computations == 1  # equal values

    moved = stage.run(_moved(frame.calib, camera=0, dx=0.5))
    assert stage.computations == 2
    assert not np.array_equal(moved.cells, plan.cells)

    again = stage.run(frame.calib)
    assert stage.computations == 3
    np.testing.assert_array_equal(again.indices, plan.indices)

    # The plan puts as many frustum points in each BEV cell as the reference geometry does
    # (float64 vs float32 maths may move a point sitting on a cell edge: allow 1e-4 of them).
    m = _torch_matrices(frame, package.preset)
    vt = model.encoders["camera"]["vtransform"]
    with torch.no_grad():
        geom = vt.get_geometry(m["camera2lidar"], m["intrinsics"], m["img_aug"], m["lidar_aug"])
        idx = ((geom - (vt.bx - vt.dx / 2.0)) / vt.dx).long().reshape(-1, 3).numpy()
    nx, ny, nz = package.preset.model.vtransform.bev_size
    kept = np.all((idx >= 0) & (idx < (nx, ny, nz)), axis=1)
    ref_cells = (idx[kept, 2] * nx + idx[kept, 0]) * ny + idx[kept, 1]
    ref_counts = np.bincount(ref_cells, minlength=nx * ny * nz)
    counts = np.zeros(nx * ny * nz, dtype=np.int64)
    counts[plan.cells] = plan.interval_ends - plan.interval_starts
    assert plan.num_points == counts.sum() > 0
    assert np.abs(counts - ref_counts).sum() <= 1e-4 * kept.sum()


def test_bevpool_stage_equals_reference_pooling(package, model, frame):
    params = BevPoolParams.from_package(package)
    n, d, (h, w), c = params.num_cameras, params.depth_bins, params.feature_size, params.channels
    rng = np.random.default_rng(0)
    weights = rng.random((n, d, h, w), dtype=np.float32)
    weights /= weights.sum(axis=1, keepdims=True)
    feats = rng.standard_normal((n, h, w, c), dtype=np.float32)
    plan = GeometryStage(GeometryParams.from_package(package)).run(frame.calib)
    out = BevPoolStage(params).run(weights, feats, plan)

    m = _torch_matrices(frame, package.preset)
    vt = model.encoders["camera"]["vtransform"]
    with torch.no_grad():
        geom = vt.get_geometry(m["camera2lidar"], m["intrinsics"], m["img_aug"], m["lidar_aug"])
        expected = vt.bev_pool(geom, torch.from_numpy(weights)[None],
                               torch.from_numpy(feats).permute(0, 3, 1, 2)[None]).numpy()
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=2e-4, rtol=1e-4)

    with pytest.raises(InputError) as err:
        BevPoolStage(params).run(weights, feats[..., :-1], plan)
    assert err.value.field == "bevpool.feats"


# ------------------------------------------------------------------------------- LiDAR stages


def test_voxelize_stage_filters_strictly_and_equals_reference(package, frame):
    stage = VoxelizeStage(VoxelizeParams.from_package(package))
    r = package.preset.points.point_cloud_range
    on_faces = np.array([[r[0], 0, 0, 1, 0], [0, r[4], 0, 1, 0], [0, 0, r[2], 1, 0],
                         [r[3] - 1e-3, 0, 0, 1, 0]], dtype=np.float32)
    raw = np.concatenate([frame.points.astype(np.float32), on_faces])
    selected = stage.select(raw)
    np.testing.assert_array_equal(selected, filter_points(raw, r))
    assert selected[-1, 0] == np.float32(r[3] - 1e-3)  # inside: kept; the three on faces: not

    voxels = stage.run(selected)
    p = package.preset
    feats, coords, counts = voxelize_points(
        torch.from_numpy(selected), torch.tensor(p.voxel.voxel_size, dtype=torch.float32),
        torch.tensor(r[:3], dtype=torch.float32), p.grid_size, p.voxel.max_points,
        p.voxel.max_voxels)
    assert len(voxels) == coords.shape[0] > 1000
    np.testing.assert_array_equal(voxels.coords, coords.numpy())
    np.testing.assert_array_equal(voxels.counts, counts.numpy())
    np.testing.assert_allclose(voxels.feats, feats.numpy(), atol=1e-5, rtol=1e-6)


def test_voxelize_stage_refuses_more_points_than_the_package_bound(package):
    params = replace(VoxelizeParams.from_package(package), max_points=10)
    pts = np.zeros((11, 5), dtype=np.float32)
    with pytest.raises(InputError) as err:
        VoxelizeStage(params).select(pts, source="sweep.pcd")
    assert err.value.field == "points" and err.value.path == "sweep.pcd"
    assert "max_points" in str(err.value)


def test_scn_stage_equals_reference_sparse_encoder(package, model, points):
    voxels = VoxelizeStage(VoxelizeParams.from_package(package)).run(points)
    stage = ScnStage(ScnParams.from_package(package))
    out = stage.run(voxels.feats, voxels.coords)
    coords = np.concatenate([np.zeros((len(voxels), 1), np.int32), voxels.coords], axis=1)
    with torch.no_grad():
        expected = model.encoders["lidar"]["backbone"](
            torch.from_numpy(voxels.feats), torch.from_numpy(coords), 1).numpy()
    assert out.shape == expected.shape == stage.params.output_shape
    assert np.count_nonzero(expected) > 1000
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-3)


# ------------------------------------------------------------------------------------ decode


def test_decode_stage_equals_reference_box_coder(package):
    """Random head outputs (one class scoring per query, as the head produces) decoded by the
    stage and by the reference coder: same boxes, scores and labels."""
    preset = package.preset
    k, q = preset.num_classes, preset.model.head.num_proposals
    rng = np.random.default_rng(1)
    labels = rng.integers(0, k, q)
    score = np.zeros((1, k, q), np.float32)
    score[0, labels, np.arange(q)] = rng.random(q, dtype=np.float32)
    angle = rng.uniform(-np.pi, np.pi, q)
    outputs = {
        "score": score,
        "rot": np.stack([np.sin(angle), np.cos(angle)])[None].astype(np.float32),
        "dim": rng.normal(0.5, 0.5, (1, 3, q)).astype(np.float32),
        "reg": rng.uniform(-10, 80, (1, 2, q)).astype(np.float32),  # some beyond the range
        "height": rng.normal(0, 1, (1, 1, q)).astype(np.float32),
        "vel": rng.normal(0, 3, (1, 2, q)).astype(np.float32),
    }
    dets = DecodeStage(DecodeParams.from_package(package)).run(outputs)
    t = {key: torch.from_numpy(v) for key, v in outputs.items()}
    (expected,) = TransFusionBBoxCoder(preset).decode(t["score"], t["rot"], t["dim"], t["reg"],
                                                      t["height"], t["vel"])
    assert 0 < len(expected) < q  # the post-centre range dropped some queries
    assert dets.class_names == expected.class_names
    np.testing.assert_array_equal(dets.labels, expected.labels)
    np.testing.assert_allclose(dets.scores, expected.scores, rtol=0, atol=1e-7)
    np.testing.assert_allclose(dets.boxes, expected.boxes, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- ONNX Runtime backend


def test_ort_runner_equals_the_torch_module_under_any_options(package, model):
    entry = package.module("camera.vtransform")
    x = np.random.default_rng(2).standard_normal(entry.inputs[0].shape).astype(np.float32)
    with torch.no_grad():
        expected = model.encoders["camera"]["vtransform"].downsample(torch.from_numpy(x)).numpy()
    for options in (RunnerOptions(), RunnerOptions(threads=1, optimization="disable")):
        runner = create_runner("onnxruntime", package.path(entry.name), entry, options)
        out = runner.run({"feat_in": x})
        assert list(out) == ["feat_out"] and runner.last_time_s > 0
        np.testing.assert_allclose(out["feat_out"], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("feeds, message", [
    ({"feat_in": np.zeros((1, 32, 128, 127), np.float32)}, "expected shape"),
    ({"feat_in": np.zeros((1, 32, 128, 128), np.float64)}, "expected dtype float32"),
    ({}, "missing input"),
    ({"feat_in": np.zeros((1, 32, 128, 128), np.float32), "extra": np.zeros(1)}, "unexpected"),
])
def test_ort_runner_rejects_bad_inputs_naming_module_and_input(package, feeds, message):
    path = package.path("camera.vtransform")
    runner = OnnxRuntimeRunner.load(path, package.module("camera.vtransform"), RunnerOptions())
    with pytest.raises(InputError) as err:
        runner.run(feeds)
    assert message in str(err.value)
    assert err.value.path == str(path)
    assert err.value.field.startswith("camera.vtransform.")


def test_ort_runner_refuses_a_graph_that_disagrees_with_its_manifest(package):
    entry = package.module("camera.vtransform")
    wrong = replace(entry, inputs=(replace(entry.inputs[0], shape=(1, 32, 64, 64)),))
    with pytest.raises(PackageError) as err:
        OnnxRuntimeRunner.load(package.path(entry.name), wrong, RunnerOptions())
    assert err.value.field == "modules.camera.vtransform.inputs"
    renamed = replace(entry, outputs=(replace(entry.outputs[0], name="out"),))
    with pytest.raises(PackageError, match="outputs"):
        OnnxRuntimeRunner.load(package.path(entry.name), renamed, RunnerOptions())
    with pytest.raises(PackageError, match="cannot load"):  # not an ONNX file at all
        OnnxRuntimeRunner.load(package.root / "manifest.json", entry, RunnerOptions())


def test_session_options_are_applied_and_checked():
    so = session_options(RunnerOptions(threads=3, optimization="basic"))
    assert so.intra_op_num_threads == 3
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert session_options(RunnerOptions()).intra_op_num_threads == 0  # ORT: all cores
    with pytest.raises(ConfigError):
        session_options(RunnerOptions(threads=0))
    with pytest.raises(ConfigError):
        session_options(RunnerOptions(optimization="max"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown backend"):
        create_runner("tensorflow", None, None, RunnerOptions())  # type: ignore[arg-type]


def test_check_feeds_ties_symbolic_dimensions_across_inputs():
    specs = (TensorSpec("voxel_features", ("voxels", 5), "float32"),
             TensorSpec("voxel_coords", ("voxels", 4), "int32"))
    feats = np.zeros((12, 10), np.float32)[:, ::2]  # a non-contiguous view
    coords = np.zeros((12, 4), np.int32)
    checked = check_feeds("lidar.backbone", specs, {"voxel_features": feats,
                                                    "voxel_coords": coords}, source="scn.onnx")
    assert list(checked) == ["voxel_features", "voxel_coords"]
    assert checked["voxel_features"].flags.c_contiguous
    with pytest.raises(InputError) as err:
        check_feeds("lidar.backbone", specs, {"voxel_features": feats,
                                              "voxel_coords": coords[:11]}, source="scn.onnx")
    assert err.value.field == "lidar.backbone.voxel_coords" and "'voxels'" in str(err.value)
