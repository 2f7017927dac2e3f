"""``infer --pcd --images --calib`` with users' own files: the ring-index column of a nuScenes
``.pcd.bin`` is not a time lag, images are matched to cameras by the names in their file names,
and KITTI-style 0–1 intensities are flagged or scaled.

Detections are compared exactly (same package, same inputs after reading: the runtime is
deterministic on the CPU), through the real CLI on the trained tiny package.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bevdeploy.cli import app
from bevdeploy.data.camera_files import match_camera_files
from bevdeploy.errors import InputError
from bevdeploy.presets import get_preset

CAMERAS = get_preset("tiny").cameras.names


def _infer(package: Path, pcd: Path, images: list[Path], calib: Path, out: Path,
           *extra: str) -> tuple[list[dict], str]:
    result = CliRunner().invoke(app, ["infer", "--package", str(package), "--pcd", str(pcd),
                                      "--calib", str(calib), "--out", str(out), *extra,
                                      "--images", *map(str, images)])
    assert result.exit_code == 0, result.output
    frames = json.loads((out / "detections.json").read_text())["frames"]
    (boxes,) = frames.values()
    return boxes["boxes"], result.output


def _images(frame_files: Path) -> list[Path]:
    return [frame_files / f"{name}.jpg" for name in CAMERAS]


def test_ring_index_column_of_a_pcd_bin_is_time_lag_zero(trained_tiny_package, frame_files,
                                                         tmp_path):
    zeroed = np.fromfile(frame_files / "points.pcd.bin", dtype="<f4").reshape(-1, 5)
    assert np.all(zeroed[:, 4] == 0)
    ring = zeroed.copy()
    ring[:, 4] = np.random.default_rng(0).integers(0, 32, len(ring))
    ring.tofile(tmp_path / "ring.pcd.bin")
    images, calib = _images(frame_files), frame_files / "rig.yaml"
    want, _ = _infer(trained_tiny_package, frame_files / "points.pcd.bin", images, calib,
                     tmp_path / "zeroed")
    got, _ = _infer(trained_tiny_package, tmp_path / "ring.pcd.bin", images, calib,
                    tmp_path / "ring")
    assert len(want) > 0 and got == want
    # the same column read as a lag (an .npy's fifth column is one) changes the detections
    np.save(tmp_path / "ring.npy", ring)
    as_lag, _ = _infer(trained_tiny_package, tmp_path / "ring.npy", images, calib,
                       tmp_path / "lag")
    assert as_lag != want


def test_shuffled_named_images_give_the_same_detections(trained_tiny_package, frame_files,
                                                        tmp_path):
    pcd, calib = frame_files / "points.pcd.bin", frame_files / "rig.yaml"
    want, _ = _infer(trained_tiny_package, pcd, _images(frame_files), calib, tmp_path / "a")
    # nuScenes-style names, in the shell's alphabetical order (CAM_BACK first)
    named = tmp_path / "named"
    named.mkdir()
    for i, name in enumerate(CAMERAS):
        shutil.copy(frame_files / f"{name}.jpg", named / f"n008-2018__{name}__15{i}.jpg")
    shuffled = sorted(named.iterdir())
    assert [p.name.split("__")[1] for p in shuffled] != list(CAMERAS)
    got, _ = _infer(trained_tiny_package, pcd, shuffled, calib, tmp_path / "b")
    assert got == want


def test_names_that_cannot_be_matched_are_errors_naming_the_camera(trained_tiny_package,
                                                                   frame_files, tmp_path):
    images = _images(frame_files)
    without_back = [p for p in images if p.stem != "CAM_BACK"]
    stray = tmp_path / "picture.jpg"
    shutil.copy(frame_files / "CAM_BACK.jpg", stray)
    result = CliRunner().invoke(app, ["infer", "--package", str(trained_tiny_package), "--pcd",
                                      str(frame_files / "points.pcd.bin"), "--calib",
                                      str(frame_files / "rig.yaml"), "--out",
                                      str(tmp_path / "out"), "--images",
                                      *map(str, [*without_back, stray])])
    assert result.exit_code == InputError.exit_code
    assert "CAM_BACK" in result.output and "picture.jpg" in result.output
    with pytest.raises(InputError, match=r"no file for camera\(s\) \['CAM_BACK'\]"):
        match_camera_files(without_back, CAMERAS)
    with pytest.raises(InputError, match="CAM_FRONT is named by 2 files"):
        match_camera_files([*images[:-1], images[0]], CAMERAS)


def test_camera_names_inside_longer_names_and_unnamed_files():
    files = [f"x__{name.lower()}__1.png" for name in reversed(CAMERAS)]
    matched = match_camera_files(files, CAMERAS)
    assert matched.by_name and [p.name for p in matched.paths] == list(reversed(files))
    positional = match_camera_files([f"{i}.png" for i in range(len(CAMERAS))], CAMERAS)
    assert not positional.by_name and positional.paths[0].name == "0.png"
    with pytest.raises(InputError, match="2 cameras"):
        match_camera_files([f"{CAMERAS[0]}_{CAMERAS[1]}.png", *files[1:]], CAMERAS)


def test_unnamed_images_are_positional_and_said_so(trained_tiny_package, frame_files, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    images = []
    for i, name in enumerate(CAMERAS):
        images.append(plain / f"{i}.jpg")
        shutil.copy(frame_files / f"{name}.jpg", images[-1])
    want, _ = _infer(trained_tiny_package, frame_files / "points.pcd.bin", _images(frame_files),
                     frame_files / "rig.yaml", tmp_path / "a")
    got, output = _infer(trained_tiny_package, frame_files / "points.pcd.bin", images,
                         frame_files / "rig.yaml", tmp_path / "b")
    assert got == want and "given order" in output


def test_kitti_intensities_are_flagged_or_scaled(trained_tiny_package, frame_files, tmp_path):
    points = np.fromfile(frame_files / "points.pcd.bin", dtype="<f4").reshape(-1, 5)
    kitti = points[:, :4].copy()
    kitti[:, 3] /= 255.0
    kitti.tofile(tmp_path / "scan.bin")
    images, calib = _images(frame_files), frame_files / "rig.yaml"
    _, output = _infer(trained_tiny_package, tmp_path / "scan.bin", images, calib,
                       tmp_path / "dark")
    assert "--intensity-scale 255" in output
    scaled, output = _infer(trained_tiny_package, tmp_path / "scan.bin", images, calib,
                            tmp_path / "scaled", "--intensity-scale", "255")
    assert "--intensity-scale 255" not in output
    want, _ = _infer(trained_tiny_package, frame_files / "points.pcd.bin", images, calib,
                     tmp_path / "want")
    # 0-255 integers / 255 * 255 come back to within a float32 ulp: the same boxes, to 1e-4
    assert len(scaled) == len(want)
    for a, b in zip(scaled, want):
        assert a["name"] == b["name"]
        np.testing.assert_allclose([a[k] for k in ("x", "y", "z", "l", "w", "h", "score")],
                                   [b[k] for k in ("x", "y", "z", "l", "w", "h", "score")],
                                   atol=1e-4)
