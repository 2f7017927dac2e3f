"""``bevdeploy rig``: a rig written from a dataset sample, with that sample's files, gives the
detections ``infer --data`` gives for the sample; ``rig from-info`` writes the same rig from an
info file; ``rig check`` validates a rig against a package and names what is wrong.

The dataset side runs without previous sweeps (a frame given as files is one sweep), through a
package whose preset asks for none: the same trained tiny weights, exported with
``points.sweeps = 0``. Detections are compared exactly (same package, same inputs).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.data.calib_yaml import read_calibration
from bevdeploy.data.infos import write_infos
from bevdeploy.data.nuscenes import NuScenesLoader
from bevdeploy.errors import InputError
from bevdeploy.export.writer import export_package
from bevdeploy.presets import get_preset

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def single_sweep_package(tmp_path_factory):
    preset = dataclasses.replace(TINY, points=dataclasses.replace(TINY.points, sweeps=0))
    return export_package(preset, TINY.checkpoint_path,
                          tmp_path_factory.mktemp("one-sweep") / "package")


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_rig_from_nuscenes_and_the_samples_files_equal_infer_data(single_sweep_package,
                                                                  synthetic_world, tmp_path):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                            preset=TINY, sweeps=0)
    token = loader.sample_tokens[0]
    record = loader.record(0)
    _run(["rig", "from-nuscenes", "--data", str(synthetic_world), "--sample", token,
          "--out", str(tmp_path / "rig.yaml")])
    # the sample's own files, as a user has them: its LiDAR file and camera files
    images = [str(record.cameras[name].path) for name in reversed(TINY.cameras.names)]
    _run(["infer", "--package", str(single_sweep_package), "--pcd", str(record.lidar.path),
          "--calib", str(tmp_path / "rig.yaml"), "--out", str(tmp_path / "files"),
          "--images", *images])
    _run(["infer", "--package", str(single_sweep_package), "--data", str(synthetic_world),
          "--limit", "1", "--out", str(tmp_path / "data")])
    (files,) = json.loads((tmp_path / "files/detections.json").read_text())["frames"].values()
    data = json.loads((tmp_path / "data/detections.json").read_text())["frames"][token]
    assert len(data["boxes"]) > 0 and files["boxes"] == data["boxes"]

    out = _run(["rig", "check", str(tmp_path / "rig.yaml"), "--package",
                str(single_sweep_package)])
    assert "OK" in out and all(name in out for name in TINY.cameras.names)


def test_rig_from_info_equals_rig_from_nuscenes(synthetic_world, tmp_path):
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                            preset=TINY, sweeps=0)
    write_infos(tmp_path / "infos.pkl", loader)
    _run(["rig", "from-info", str(tmp_path / "infos.pkl"), "--index", "1", "--out",
          str(tmp_path / "info.yaml")])
    _run(["rig", "from-nuscenes", "--data", str(synthetic_world), "--sample",
          loader.sample_tokens[1], "--out", str(tmp_path / "nusc.yaml")])
    a = read_calibration(tmp_path / "info.yaml", TINY.cameras.names)
    b = read_calibration(tmp_path / "nusc.yaml", TINY.cameras.names)
    for name in ("intrinsics", "camera2lidar", "lidar2ego", "ego2global"):
        assert (abs(getattr(a, name) - getattr(b, name)) <= 1e-9).all(), name


def test_rig_check_names_a_missing_camera(trained_tiny_package, frame_files, tmp_path):
    text = (frame_files / "rig.yaml").read_text().replace("CAM_BACK_LEFT:", "CAM_SIDE:")
    (tmp_path / "rig.yaml").write_text(text)
    result = CliRunner().invoke(app, ["rig", "check", str(tmp_path / "rig.yaml"), "--package",
                                      str(trained_tiny_package)])
    assert result.exit_code == InputError.exit_code
    assert "CAM_BACK_LEFT" in result.output and "rig.yaml" in result.output
    result = CliRunner().invoke(app, ["rig", "from-nuscenes", "--data", str(tmp_path),
                                      "--sample", "x", "--out", str(tmp_path / "r.yaml")])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_the_readme_rig_example_is_a_complete_rig(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("### Rig files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "rig.yaml").write_text(block)
    calib = read_calibration(tmp_path / "rig.yaml", TINY.cameras.names)
    assert calib.camera_names == TINY.cameras.names
