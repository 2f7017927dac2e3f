"""Fixtures of the hardening tests: one exported ``tiny`` package (the shipped trained weights)
and one good single-frame input set (point file, six camera JPEGs, calibration YAML) that the
bad-input cases copy and damage. Tests never damage these shared fixtures in place."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bevdeploy.data.calib_yaml import write_calibration
from bevdeploy.data.nuscenes import NuScenesLoader


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` preset exported with its shipped checkpoint (mAP 0.625 on mini_val)."""
    from bevdeploy.export.writer import export_package
    from bevdeploy.presets import get_preset

    preset = get_preset("tiny")
    return export_package(preset, preset.checkpoint_path,
                          tmp_path_factory.mktemp("hardening") / "tiny")


@pytest.fixture(scope="session")
def frame_files(synthetic_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``points.pcd.bin``, ``CAM_*.jpg`` (preset camera order) and ``rig.yaml`` of the first
    mini_val frame of the synthetic world: a valid ``infer --pcd/--images/--calib`` input."""
    loader = NuScenesLoader(synthetic_world, version="v1.0-mini", split="mini_val",
                            preset="tiny", sweeps=0)
    frame = loader[0]
    root = tmp_path_factory.mktemp("frame")
    np.ascontiguousarray(frame.points[:, :5], dtype="<f4").tofile(root / "points.pcd.bin")
    for name, image in zip(frame.calib.camera_names, frame.images):
        Image.fromarray(image).save(root / f"{name}.jpg", quality=90)
    write_calibration(root / "rig.yaml", frame.calib)
    return root


@pytest.fixture
def world_copy(synthetic_world: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic world, free to damage."""
    return Path(shutil.copytree(synthetic_world, tmp_path / "world"))
