"""Rig YAML files (``data.calib_yaml``'s format) written from what a user already has, and
checked against a package: the tools behind ``bevdeploy rig``.

A rig file is the calibration of one frame: per camera the intrinsics and ``camera2lidar`` (the
key LiDAR frame ← camera, including the ego motion between the two captures, as nuScenes'
``sensor2lidar``), plus ``lidar2ego`` and ``ego2global``. Writing it from a nuScenes-format
dataset goes through the same records as ``infer --data``, so a frame given as files with the
written rig is the dataset's frame (``tests/data/test_rig_files.py`` shows equal detections).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bevdeploy.data.calib_yaml import read_calibration, write_calibration
from bevdeploy.data.frame import Calibration
from bevdeploy.data.nuscenes import NuScenesLoader, SampleRecord
from bevdeploy.errors import ConfigError
from bevdeploy.presets import Preset


def calibration_of(record: SampleRecord, cameras: tuple[str, ...]) -> Calibration:
    """The calibration of a sample record for ``cameras``, exactly as ``RecordFrames.frame``
    builds a frame's."""
    cams = [record.cameras[c] for c in cameras]
    return Calibration(camera_names=cameras,
                       intrinsics=np.stack([c.intrinsics for c in cams]).astype(np.float64),
                       camera2lidar=np.stack([c.sensor2lidar for c in cams]).astype(np.float64),
                       lidar2ego=record.lidar.sensor2ego.matrix(),
                       ego2global=record.lidar.ego2global.matrix())


def rig_from_nuscenes(root: str | Path, sample_token: str, out: str | Path, preset: Preset, *,
                      version: str = "v1.0-mini") -> Path:
    """Write the rig of one sample of a nuScenes-format dataset (the preset's cameras)."""
    loader = NuScenesLoader(root, version=version, split="all", preset=preset, sweeps=0)
    tokens = loader.sample_tokens
    if sample_token not in tokens:
        raise ConfigError(f"no sample {sample_token!r} in {Path(root) / version} (it has "
                          f"{len(tokens)} samples, e.g. {list(tokens[:3])})", field="--sample")
    record = loader.record(tokens.index(sample_token))
    return write_calibration(out, calibration_of(record, preset.cameras.names))


def rig_from_info(info_path: str | Path, out: str | Path, preset: Preset, *,
                  index: int = 0) -> Path:
    """Write the rig of sample ``index`` (in time order) of an info ``.pkl`` of either format
    (``data.info_files``: legacy ``infos`` or mmdet3d >= 1.1 ``data_list``, whose matrices are
    float32)."""
    from bevdeploy.data.info_files import open_info_file

    loader = open_info_file(info_path, preset, sweeps=0)
    if not 0 <= index < len(loader):
        raise ConfigError(f"the info file has {len(loader)} samples; index {index} is outside "
                          f"[0, {len(loader)})", field="--index")
    record = loader.record(index)
    return write_calibration(out, calibration_of(record, preset.cameras.names))


@dataclass(frozen=True)
class CameraSummary:
    """What ``rig check`` shows of one camera: focal lengths and principal point (pixels), its
    position in the LiDAR frame (m) and the heading of its optical axis (degrees from +x toward
    +y)."""

    name: str
    focal: tuple[float, float]
    principal_point: tuple[float, float]
    position: tuple[float, float, float]
    heading_deg: float


def check_rig(path: str | Path, preset: Preset) -> list[CameraSummary]:
    """Read and validate a rig file for ``preset``'s cameras (``InputError`` naming the file and
    field otherwise) and summarise each camera."""
    calib = read_calibration(path, preset.cameras.names)
    summaries = []
    for name, k, m in zip(calib.camera_names, calib.intrinsics, calib.camera2lidar):
        axis = m[:3, :3] @ np.array([0.0, 0.0, 1.0])  # the camera's +z in the LiDAR frame
        summaries.append(CameraSummary(
            name=name, focal=(float(k[0, 0]), float(k[1, 1])),
            principal_point=(float(k[0, 2]), float(k[1, 2])),
            position=tuple(float(v) for v in m[:3, 3]),  # type: ignore[arg-type]
            heading_deg=float(np.degrees(np.arctan2(axis[1], axis[0])))))
    return summaries
