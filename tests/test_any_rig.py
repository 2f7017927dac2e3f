"""Any rig end to end (#17): a 4-camera rig whose cameras are not nuScenes' is rendered by
``synth --preset``, the tiny weights move onto it (``export --preset RIG.yaml --checkpoint``),
and ``eval`` and ``compare`` (FP32) pass on the world; ``synth --rig`` gives the cameras a rig
file's intrinsics and extrinsics, as the devkit reads them back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes.nuscenes import NuScenes
from pyquaternion import Quaternion
from typer.testing import CliRunner

from rig_presets import FOUR_CAMERAS, four_camera_preset

from bevdeploy.cli import app
from bevdeploy.data.calib_yaml import write_calibration
from bevdeploy.data.frame import Calibration
from bevdeploy.data.synthetic import LIDAR
from bevdeploy.data.synthetic.rig import ring_fov_deg, yaw_matrix
from bevdeploy.errors import ConfigError
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")
runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def rig_preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rig") / "four.yaml"
    four_camera_preset().to_yaml(path)
    return path


@pytest.mark.skipif(not TINY.checkpoint_path.is_file(), reason="no shipped tiny weights")
def test_a_four_camera_rig_from_synth_to_eval_and_compare(rig_preset: Path, tmp_path: Path
                                                         ) -> None:
    world, package = tmp_path / "world", tmp_path / "package"
    said = _ok("synth", "--out", world, "--preset", rig_preset, "--scenes", 2, "--samples", 2,
               "--density", 0.1)
    assert f"field of view of {ring_fov_deg(4):.0f}°" in said
    nusc = NuScenes(version="v1.0-mini", dataroot=str(world), verbose=False)
    channels = [s["channel"] for s in nusc.sensor if s["modality"] == "camera"]
    assert channels == list(FOUR_CAMERAS)
    first = nusc.get("sample_data", nusc.sample[0]["data"]["CAM_REAR"])
    assert (first["height"], first["width"]) == (720, 1280)
    _ok("export", "--preset", rig_preset, "--checkpoint", TINY.checkpoint_path, "--out", package)
    _ok("eval", "--data", world, "--package", package, "--out", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 2 and np.isfinite(metrics["mean_ap"])
    said = _ok("compare", "--data", world, "--package", package, "--checkpoint",
               TINY.checkpoint_path, "--frames", 1)
    assert "PASSED" in said


def _tilted_rig() -> Calibration:
    """The four cameras looking forward, left, right and back, pitched 4° down, with distinct
    focal lengths: what a rig file of a real car looks like."""
    pitch = np.deg2rad(4.0)
    down = np.array([[1.0, 0, 0], [0, np.cos(pitch), -np.sin(pitch)],
                     [0, np.sin(pitch), np.cos(pitch)]])  # about the camera x axis
    forward = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c2l, ks = [], []
    for i, yaw in enumerate((0.0, 90.0, -90.0, 180.0)):
        camera2ego = np.eye(4)
        camera2ego[:3, :3] = yaw_matrix(np.deg2rad(yaw)) @ forward @ down
        camera2ego[:3, 3] = (1.0 + np.cos(np.deg2rad(yaw)), np.sin(np.deg2rad(yaw)), 1.6)
        c2l.append(np.linalg.inv(LIDAR.lidar2ego) @ camera2ego)
        ks.append(np.array([[700.0 + 10 * i, 0, 640.0], [0, 705.0 + 10 * i, 350.0], [0, 0, 1]]))
    return Calibration(FOUR_CAMERAS, np.stack(ks), np.stack(c2l), lidar2ego=LIDAR.lidar2ego)


def test_synth_rig_gives_the_cameras_the_rig_files_calibration(rig_preset: Path,
                                                               tmp_path: Path) -> None:
    rig = write_calibration(tmp_path / "rig.yaml", _tilted_rig())
    world = tmp_path / "world"
    said = _ok("synth", "--out", world, "--preset", rig_preset, "--rig", rig, "--scenes", 1,
               "--samples", 2, "--density", 0.05)
    assert str(rig) in said.replace("\n", "")
    nusc = NuScenes(version="v1.0-mini", dataroot=str(world), verbose=False)
    want = _tilted_rig()
    lidar_cs = nusc.get("calibrated_sensor", nusc.get(
        "sample_data", nusc.sample[0]["data"]["LIDAR_TOP"])["calibrated_sensor_token"])
    lidar2ego = np.eye(4)
    lidar2ego[:3, :3] = Quaternion(lidar_cs["rotation"]).rotation_matrix
    lidar2ego[:3, 3] = lidar_cs["translation"]
    for i, name in enumerate(FOUR_CAMERAS):
        sd = nusc.get("sample_data", nusc.sample[0]["data"][name])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        camera2ego = np.eye(4)
        camera2ego[:3, :3] = Quaternion(cs["rotation"]).rotation_matrix
        camera2ego[:3, 3] = cs["translation"]
        np.testing.assert_allclose(np.linalg.inv(lidar2ego) @ camera2ego, want.camera2lidar[i],
                                   atol=1e-9, err_msg=name)
        np.testing.assert_allclose(cs["camera_intrinsic"], want.intrinsics[i], atol=0)
        assert (sd["height"], sd["width"]) == (720, 1280)


def test_synth_rig_needs_a_preset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "w"), "--rig",
                                 str(tmp_path / "rig.yaml")])
    assert result.exit_code == ConfigError.exit_code and "--preset" in result.output
