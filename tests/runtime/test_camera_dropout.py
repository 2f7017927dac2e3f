"""Camera dropout: a camera without data gets zero depth weights before BEV pooling, so it adds
exact zeros to every cell's sum. The tiny 6-camera package with two cameras dropped therefore
pools bit for bit what a 4-camera package of the same weights pools (CPU kernels, the CUDA
kernels in Triton's interpreter and the reference's ``bev_pool``), and detects the same boxes
end to end; missing images are refused by default and listed in the run record with ``zero``."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rig_presets import tiny_variant

from bevdeploy.cli import app
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import ConfigError, InputError
from bevdeploy.model.camera.depth_lss import absent_zeroed
from bevdeploy.model.checkpoint import RigChangeWarning
from bevdeploy.model.factory import create_model
from bevdeploy.package import load_package
from bevdeploy.presets import NUSCENES_CAMERAS, get_preset
from bevdeploy.runtime import Pipeline
from bevdeploy.runtime.stages import BevPoolParams, BevPoolStage, GeometryParams, GeometryStage
from bevdeploy.runtime.timing import StageTimer

TINY = get_preset("tiny")
KEPT = NUSCENES_CAMERAS[:4]  # CAM_FRONT, CAM_FRONT_RIGHT, CAM_FRONT_LEFT, CAM_BACK
DROPPED = NUSCENES_CAMERAS[4:]  # CAM_BACK_LEFT, CAM_BACK_RIGHT
PRESENT = np.array([c in KEPT for c in NUSCENES_CAMERAS])
# End to end, FP32: the two packages' backbones run batches of 6 and 4 views, so kernels may
# sum in another order; boxes agree to float32 rounding.
BOX_ATOL, SCORE_ATOL = 1e-4, 1e-5
runner = CliRunner()
pytestmark = pytest.mark.skipif(not TINY.checkpoint_path.is_file(),
                                reason="no shipped tiny weights")


@pytest.fixture(scope="module")
def four_camera_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny's weights exported for the nuScenes rig without its two back-side cameras."""
    from bevdeploy.export.writer import export_package

    preset = tiny_variant("tiny-4of6", cameras={"names": list(KEPT)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RigChangeWarning)  # the camera list changed, on purpose
        return export_package(preset, TINY.checkpoint_path,
                              tmp_path_factory.mktemp("four-of-six") / "package")


@pytest.fixture(scope="module")
def world_without_two_cameras(synthetic_world: Path, tmp_path_factory: pytest.TempPathFactory
                              ) -> Path:
    """A copy of the shared world with every image of the dropped cameras deleted."""
    root = tmp_path_factory.mktemp("dropped") / "world"
    shutil.copytree(synthetic_world, root)
    for name in DROPPED:
        shutil.rmtree(root / "samples" / name)
    return root


def _backbone(package: Path, world: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """The 6-camera package's depth weights, features and frame of the first mini_val sample."""
    frame = NuScenesLoader(world, version="v1.0-mini", split="mini_val", preset=TINY)[0]
    with Pipeline(package) as pipe:
        timer = StageTimer()
        inputs = pipe.camera_inputs(frame, pipe.select_points(frame, timer), timer)
        out = pipe.runners["camera.backbone"].run({"img": inputs.img, "depth": inputs.depth})
    return out["camera_depth_weights"], out["camera_feature"], frame


@pytest.mark.parametrize("device", [None, "cpu"], ids=["cpu-kernels", "cuda-kernels-interpreted"])
def test_dropped_cameras_pool_bit_identical_to_a_package_without_them(
        trained_tiny_package, four_camera_package, synthetic_world, device):
    if device is not None:
        pytest.importorskip("triton", reason="triton is not installed (the gpu extra)")
    weights, feats, frame = _backbone(trained_tiny_package, synthetic_world)
    assert np.abs(weights[~PRESENT]).max() > 0 and np.abs(feats).max() > 0  # real inputs
    six, four = load_package(trained_tiny_package), load_package(four_camera_package)
    calib4 = type(frame.calib)(KEPT, frame.calib.intrinsics[PRESENT],
                               frame.calib.camera2lidar[PRESENT])
    plan6 = GeometryStage(GeometryParams.from_package(six), device=device).run(frame.calib)
    plan4 = GeometryStage(GeometryParams.from_package(four), device=device).run(calib4)
    on = (lambda a: a) if device is None else torch.from_numpy
    got = BevPoolStage(BevPoolParams.from_package(six), device=device).run(
        on(weights), on(feats), plan6, present=PRESENT)
    want = BevPoolStage(BevPoolParams.from_package(four), device=device).run(
        on(np.ascontiguousarray(weights[PRESENT])), on(np.ascontiguousarray(feats[PRESENT])),
        plan4)
    got, want = np.asarray(got), np.asarray(want)
    assert np.abs(want).max() > 0
    np.testing.assert_array_equal(got, want)
    untouched = BevPoolStage(BevPoolParams.from_package(six), device=device).run(
        on(weights), on(feats), plan6)
    assert not np.array_equal(np.asarray(untouched), want)  # the dropped cameras did see


def test_the_reference_pools_dropped_cameras_as_absent_ones(synthetic_world):
    model, _ = create_model(TINY, TINY.checkpoint_path)
    vt = model.encoders["camera"]["vtransform"]
    frame = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                           preset=TINY)[0]
    from bevdeploy.model.inputs import collate

    batch = collate([frame], TINY)
    geom = vt.get_geometry(batch.camera2lidar, batch.camera_intrinsics, batch.img_aug_matrix,
                           batch.lidar_aug_matrix)
    n, (h, w) = len(NUSCENES_CAMERAS), TINY.feature_size
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(1, n, vt.depth_bins, h, w, generator=generator)
    feats = torch.randn(1, n, vt.out_channels, h, w, generator=generator)
    keep = torch.from_numpy(PRESENT)
    got = vt.bev_pool(geom, absent_zeroed(weights, keep[None]), feats)
    want = vt.bev_pool(geom[:, keep], weights[:, keep], feats[:, keep])
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _infer(package: Path, world: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["infer", "--package", str(package), "--data", str(world),
                                 "--out", str(out), "--keep-all", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "detections.json").read_text())


def _boxes(doc: dict) -> dict[str, np.ndarray]:
    """Token → (K, 10) boxes and scores, best first."""
    out = {}
    for token, frame in doc["frames"].items():
        rows = [[b[k] for k in (*frame["fields"], "score")] for b in frame["boxes"]]
        out[token] = np.array(sorted(rows, key=lambda r: -r[-1])).reshape(-1, 10)
    return out


def test_six_cameras_with_two_missing_detect_as_the_four_camera_package(
        trained_tiny_package, four_camera_package, world_without_two_cameras, tmp_path):
    dropped = _infer(trained_tiny_package, world_without_two_cameras, tmp_path / "six",
                     "--on-missing-camera", "zero")
    four = _infer(four_camera_package, world_without_two_cameras, tmp_path / "four")
    got, want = _boxes(dropped), _boxes(four)
    assert got.keys() == want.keys() and sum(len(b) for b in want.values()) > 0
    for token in want:
        assert got[token].shape == want[token].shape, token
        np.testing.assert_allclose(got[token][:, :-1], want[token][:, :-1], atol=BOX_ATOL, rtol=0)
        np.testing.assert_allclose(got[token][:, -1], want[token][:, -1], atol=SCORE_ATOL, rtol=0)
    listed = dropped["run"]["camera_dropouts"]
    assert {d["camera"] for d in listed} == set(DROPPED)
    assert len(listed) == 2 * len(want) and all("not found" in d["reason"] for d in listed)


def test_a_missing_image_is_an_error_by_default(trained_tiny_package, world_without_two_cameras,
                                               tmp_path):
    result = runner.invoke(app, ["infer", "--package", str(trained_tiny_package), "--data",
                                 str(world_without_two_cameras), "--out", str(tmp_path / "o")])
    assert result.exit_code == InputError.exit_code, result.output
    assert DROPPED[0] in result.output and "not found" in result.output


def test_a_camera_without_calibration_is_zero_or_an_error(synthetic_world):
    sample_less = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                                 preset=TINY, dropout=_zero())
    sample = sample_less.nusc.get("sample", sample_less.sample_tokens[0])
    del sample["data"][DROPPED[0]]  # as if the dataset had no record of this camera
    frame = sample_less[0]
    assert "no calibration" in frame.dropped[DROPPED[0]]
    assert not frame.images[NUSCENES_CAMERAS.index(DROPPED[0])].any()
    assert frame.present.tolist() == [c != DROPPED[0] for c in NUSCENES_CAMERAS]
    strict = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                            preset=TINY)
    del strict.nusc.get("sample", strict.sample_tokens[0])["data"][DROPPED[0]]
    with pytest.raises(Exception, match=DROPPED[0]):
        strict[0]


def _zero():
    from bevdeploy.data.camera_dropout import CameraDropout

    return CameraDropout("zero")


def test_drop_camera_names_must_be_the_presets(trained_tiny_package, synthetic_world, tmp_path):
    result = runner.invoke(app, ["eval", "--package", str(trained_tiny_package), "--data",
                                 str(synthetic_world), "--out", str(tmp_path / "o"),
                                 "--drop-camera", "CAM_REAR"])
    assert result.exit_code == ConfigError.exit_code, result.output
    assert "--drop-camera" in result.output and "CAM_REAR" in result.output
