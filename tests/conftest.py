"""Shared fixtures: a small synthetic nuScenes-format world (built once per session), one of
its frames as files, the trained tiny package, and a Frame comparison with stated
tolerances."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from PIL import Image

from bevdeploy.data.calib_yaml import write_calibration
from bevdeploy.data.frame import Frame
from bevdeploy.data.nuscenes import NuScenesLoader

WORLD_SCENES = 2
WORLD_SAMPLES = 3
WORLD_SEED = 0
WORLD_DENSITY = 0.15


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 scenes × 3 key frames, written once: the real devkit loading path runs on it."""
    from bevdeploy.data.synthetic import write_world

    return write_world(tmp_path_factory.mktemp("world") / "nuscenes", scenes=WORLD_SCENES,
                       samples=WORLD_SAMPLES, seed=WORLD_SEED, density=WORLD_DENSITY)


def _assert_frames_equal(a: Frame, b: Frame, *, float32_calibration: bool = False) -> None:
    """Same sample, same sensor data. Images and points are read from the same files through
    the same transforms, so they must match exactly (points to 1e-5 m); calibration to 1e-9, or
    with ``float32_calibration`` (a file that stores its matrices as float32: mmdet3d >= 1.1
    info files) to float32 precision, 1e-6 absolute plus 1e-6 relative; GT boxes to float32
    precision (1e-4 m / rad), since an info file stores them in another dialect and they are
    converted back."""
    calib_tol = dict(atol=1e-6, rtol=1e-6) if float32_calibration else dict(atol=1e-9, rtol=0)
    assert a.token == b.token and a.timestamp == b.timestamp
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_allclose(a.points, b.points, atol=1e-5, rtol=0)
    assert a.calib.camera_names == b.calib.camera_names
    for name in ("intrinsics", "camera2lidar", "lidar2ego", "ego2global"):
        np.testing.assert_allclose(getattr(a.calib, name), getattr(b.calib, name),
                                   err_msg=name, **calib_tol)
    assert (a.gt is None) == (b.gt is None)
    if a.gt is None or b.gt is None:
        return
    ba, bb = a.gt.boxes, b.gt.boxes
    assert ba.shape == bb.shape
    np.testing.assert_allclose(ba[:, [0, 1, 2, 3, 4, 5, 7, 8]], bb[:, [0, 1, 2, 3, 4, 5, 7, 8]],
                               atol=1e-4, rtol=0)
    dyaw = ba[:, 6].astype(np.float64) - bb[:, 6]
    np.testing.assert_allclose(np.arctan2(np.sin(dyaw), np.cos(dyaw)), 0.0, atol=1e-4)
    assert list(a.gt.names) == list(b.gt.names)
    np.testing.assert_array_equal(a.gt.num_lidar_pts, b.gt.num_lidar_pts)
    assert list(a.gt.tokens) == list(b.gt.tokens)


@pytest.fixture()
def assert_frames_equal() -> Callable[..., None]:
    return _assert_frames_equal


@pytest.fixture(scope="session")
def fresh_val_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-density world the shipped weights never saw (seed 123, not the training seed):
    2 scenes × 8 key frames, so mini_val holds 8 samples."""
    from bevdeploy.data.synthetic import write_world

    return write_world(tmp_path_factory.mktemp("fresh") / "nuscenes", scenes=2, samples=8,
                       seed=123)


@pytest.fixture(scope="session")
def trained_tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset exported with its shipped trained weights, once per session: its boxes
    are real detections, so comparisons of detections mean something."""
    from bevdeploy.export.writer import export_package
    from bevdeploy.presets import get_preset

    preset = get_preset("tiny")
    return export_package(preset, preset.checkpoint_path,
                          tmp_path_factory.mktemp("trained-tiny") / "package")


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
