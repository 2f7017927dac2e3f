"""mmdetection3d ≥ 1.1 info files (``metainfo`` + ``data_list``) → ``SampleRecord``s.

The format is what ``tools/create_data.py nuscenes`` of mmdetection3d 1.x ends with: its legacy
converter's output rewritten by ``tools/dataset_converters/update_infos_to_v2.py``, read by
``mmdet3d/datasets/nuscenes_dataset.py`` (and ``projects/BEVFusion``):

* ``metainfo``: ``categories`` (class name → label; ``-1`` for names outside the classes, whose
  order is mmdet3d's, not mit-han-lab's), ``dataset``, ``version``, ``info_version``;
* ``data_list[i]``: ``token``, ``timestamp`` (seconds), ``ego2global`` (4×4);
  ``lidar_points``: ``lidar_path`` (a bare file name under ``samples/LIDAR_TOP``),
  ``num_pts_feats``, ``lidar2ego``; ``images[CAM]``: ``img_path`` (a bare name under
  ``samples/CAM``), ``cam2img`` (3×3, or 3×4 / 4×4 padded), ``lidar2cam`` (4×4, the key
  LiDAR → camera including the ego motion between the captures), ``cam2ego``,
  ``sample_data_token``, ``timestamp``; ``lidar_sweeps[j]``: ``timestamp``, ``ego2global``,
  ``sample_data_token``, ``lidar_points`` with ``lidar_path`` (as the legacy converter stored
  it), ``lidar2ego`` and ``lidar2sensor`` (key LiDAR → sweep LiDAR); ``instances[k]``:
  ``bbox_3d`` ``[x, y, z, l, w, h, yaw]`` (z the box centre: ``from_mmdet3d_v1`` with
  ``z_is_bottom=False``), ``bbox_label_3d``, ``velocity`` (NaN when unknown),
  ``num_lidar_pts``, ``num_radar_pts``, ``bbox_3d_isvalid``; ``cam_instances`` (2D, unused).

What the rewrite lost, and what the records therefore hold: every matrix went through float32,
so calibration and the sweeps' transforms are exact to float32 precision only; a camera's own
ego pose is gone (its motion is inside ``lidar2cam``, which is what the frame needs), so a
camera record carries the key sweep's; annotation tokens are gone (GT tokens are ``""``).

Files are found under ``dataroot`` by mmdet3d's nuScenes layout (its ``data_prefix``): the key
sweep in ``samples/LIDAR_TOP``, images in ``samples/<CAM>``, a previous sweep in
``sweeps/LIDAR_TOP`` unless its stored path names ``samples`` (a key frame reached by going
back). The file is unpickled by ``data.infos.unpickle_info_file`` (allow-list, expansion bound)
before anything here runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from bevdeploy.data.boxes import from_mmdet3d_v1
from bevdeploy.data.infos import _Fields
from bevdeploy.data.nuscenes import (LIDAR_CHANNEL, Annotations, ListedFrames, Pose,
                                     SampleRecord, SensorRecord)
from bevdeploy.data.readers import NUSCENES_COLUMNS, SweepPolicy
from bevdeploy.errors import DatasetError
from bevdeploy.presets import Preset

# A float32-rounded rotation is orthonormal to ~1e-7; anything further off is not a rotation.
ROTATION_ATOL = 1e-4
IGNORE = "ignore"  # the name of a label outside the classes (``-1``), as GroundTruth uses it


def is_data_list(data: Any) -> bool:
    """Whether an unpickled info file is this format."""
    return isinstance(data, Mapping) and "data_list" in data


def _matrix(f: _Fields, key: str) -> np.ndarray:
    """A 4×4 rigid transform, checked (last row, orthonormal rotation, det +1)."""
    m = f.array(key, (4, 4))
    r = m[:3, :3]
    if (not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6)
            or not np.allclose(r @ r.T, np.eye(3), atol=ROTATION_ATOL)
            or np.linalg.det(r) < 0):
        raise f.fail(key, "not a rigid transform (rotation not orthonormal with det +1, or "
                     "last row not [0, 0, 0, 1])")
    return m


def _pose(f: _Fields, key: str) -> Pose:
    m = _matrix(f, key)
    q = Quaternion(matrix=m[:3, :3], atol=ROTATION_ATOL).normalised
    return Pose(tuple(m[:3, 3].tolist()), tuple(q.elements.tolist()))


def _microseconds(f: _Fields, key: str) -> int:
    """The format's seconds → the records' µs (exact for any float64 nuScenes timestamp)."""
    seconds = float(f.array(key, ()))
    if not 0.0 <= seconds < 1e11:
        raise f.fail(key, f"expected seconds since the epoch, got {seconds}")
    return int(round(seconds * 1e6))


def _intrinsics(f: _Fields) -> np.ndarray:
    k = f.array("cam2img", (-1, -1))
    if k.shape not in ((3, 3), (3, 4), (4, 4)) or np.any(k[:3, 3:] != 0.0):
        raise f.fail("cam2img", f"expected a 3×3 intrinsics matrix (or one padded to 3×4 / "
                     f"4×4 with a zero last column), got shape {k.shape}")
    return k[:3, :3]


def _file(dataroot: Path, folder: str, channel: str, stored: str) -> Path:
    return dataroot / folder / channel / PurePath(stored.replace("\\", "/")).name


class _Labels:
    """``metainfo.categories`` inverted: label → class name."""

    def __init__(self, meta: _Fields | None) -> None:
        self.names: dict[int, str] = {}
        if meta is None or "categories" not in meta.data:
            return  # an error only if an instance has a label
        categories = meta.raw("categories")
        if not isinstance(categories, Mapping):
            raise meta.fail("categories", "expected a mapping of class name → label")
        for name, label in categories.items():
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                raise meta.fail("categories", f"label of {name!r} is not an integer")
            if label >= 0:
                self.names[int(label)] = str(name)

    def name(self, f: _Fields, key: str) -> str:
        label = f.integer(key)
        if label == -1:
            return IGNORE
        if label not in self.names:
            raise f.fail(key, f"label {label} is not in metainfo.categories "
                         f"({sorted(self.names)})")
        return self.names[label]


def _annotations(f: _Fields, labels: _Labels) -> Annotations:
    instances = f.raw("instances")
    if not isinstance(instances, list):
        raise f.fail("instances", f"expected a list, got {type(instances).__name__}")
    boxes, names, lidar_pts, radar_pts = [], [], [], []
    for k, item in enumerate(instances):
        inst = _Fields(item, f.source, f"{f.where}.instances[{k}]")
        box = inst.array("bbox_3d", (-1,))
        if box.shape[0] not in (7, 9):
            raise inst.fail("bbox_3d", f"expected 7 values [x, y, z, l, w, h, yaw] (or 9 with "
                            f"the velocity), got {box.shape[0]}")
        velocity = (inst.array("velocity", (2,), finite=False) if "velocity" in inst.data
                    else box[7:9] if box.shape[0] == 9 else np.full(2, np.nan))
        boxes.append(np.concatenate([box[:7], velocity]))
        names.append(labels.name(inst, "bbox_label_3d" if "bbox_label_3d" in inst.data
                                 else "bbox_label"))
        lidar_pts.append(inst.integer("num_lidar_pts"))
        radar_pts.append(inst.integer("num_radar_pts") if "num_radar_pts" in inst.data else 0)
    k = len(instances)
    return Annotations(
        boxes=from_mmdet3d_v1(np.reshape(boxes, (k, 9)), z_is_bottom=False),
        names=np.array(names, dtype=str).reshape(k), num_lidar_pts=np.array(lidar_pts, np.int64),
        num_radar_pts=np.array(radar_pts, np.int64), tokens=np.full(k, "", dtype=str))


def record_from_data_info(info: Any, *, source: Path, where: str, dataroot: Path,
                          labels: _Labels) -> SampleRecord:
    """One ``data_list`` entry → ``SampleRecord`` (see the module docstring)."""
    f = _Fields(info, source, where)
    lidar = f.sub("lidar_points")
    if "num_pts_feats" in lidar.data and lidar.integer("num_pts_feats") != NUSCENES_COLUMNS:
        raise lidar.fail("num_pts_feats", f"the LiDAR files are read as nuScenes' "
                         f"{NUSCENES_COLUMNS}-column .pcd.bin, got "
                         f"{lidar.integer('num_pts_feats')} features")
    lidar2ego, ego2global = _pose(lidar, "lidar2ego"), _pose(f, "ego2global")
    timestamp = _microseconds(f, "timestamp")
    images = f.sub("images")
    cameras = {}
    for name in images.data:
        cam = images.sub(name)
        cameras[str(name)] = SensorRecord(
            token=cam.text("sample_data_token", default=""),
            path=_file(dataroot, "samples", str(name), cam.text("img_path")),
            timestamp=_microseconds(cam, "timestamp") if "timestamp" in cam.data else timestamp,
            sensor2ego=_pose(cam, "cam2ego"), ego2global=ego2global,
            sensor2lidar=np.linalg.inv(_matrix(cam, "lidar2cam")), intrinsics=_intrinsics(cam))
    sweeps = f.raw("lidar_sweeps") if "lidar_sweeps" in f.data else []
    if not isinstance(sweeps, list):
        raise f.fail("lidar_sweeps", f"expected a list, got {type(sweeps).__name__}")
    records = []
    for j, item in enumerate(sweeps):
        s = _Fields(item, source, f"{where}.lidar_sweeps[{j}]")
        points = s.sub("lidar_points")
        stored = points.text("lidar_path")
        folder = "samples" if "samples" in PurePath(stored.replace("\\", "/")).parts else "sweeps"
        records.append(SensorRecord(
            token=s.text("sample_data_token", default=""),
            path=_file(dataroot, folder, LIDAR_CHANNEL, stored),
            timestamp=_microseconds(s, "timestamp"), sensor2ego=_pose(points, "lidar2ego"),
            ego2global=_pose(s, "ego2global"),
            sensor2lidar=np.linalg.inv(_matrix(points, "lidar2sensor"))))
    return SampleRecord(
        token=f.text("token"), timestamp=timestamp, location="",
        lidar=SensorRecord(token="", path=_file(dataroot, "samples", LIDAR_CHANNEL,
                                                lidar.text("lidar_path")),
                           timestamp=timestamp, sensor2ego=lidar2ego, ego2global=ego2global,
                           sensor2lidar=np.eye(4)),
        cameras=cameras, sweeps=records,
        annotations=_annotations(f, labels) if "instances" in f.data else None,
        source=f"{source} {where}")


class DataListLoader(ListedFrames):
    """Frames from an mmdetection3d ≥ 1.1 info file, with the sweep rules of
    ``NuScenesLoader``, in time order (as ``data.infos.InfoLoader``).

    ``dataroot`` holds ``samples/`` and ``sweeps/`` (default: the info file's directory, where
    mmdet3d's ``create_data.py`` writes it); ``data`` is the file already unpickled by
    ``data.infos.unpickle_info_file`` (``data.info_files.open_info_file``)."""

    def __init__(self, pkl_path: str | Path, preset: Preset | str,
                 dataroot: str | Path | None = None, *, data: Any, sweeps: int | None = None,
                 sweep_policy: SweepPolicy = "nearest", seed: int = 0, with_gt: bool = True,
                 pad_empty_sweeps: bool = True) -> None:
        super().__init__(preset, sweeps=sweeps, sweep_policy=sweep_policy, seed=seed,
                         pad_empty_sweeps=pad_empty_sweeps, with_gt=with_gt)
        self.path = Path(pkl_path)
        self.dataroot = self.path.parent if dataroot is None else Path(dataroot)
        items = data["data_list"]
        if not isinstance(items, list):
            raise DatasetError(f"expected a list, got {type(items).__name__}", path=self.path,
                               field="data_list")
        meta = _Fields(data["metainfo"], self.path, "metainfo") if "metainfo" in data else None
        self.version = meta.text("version", default="") if meta is not None else ""
        labels = _Labels(meta)
        records = [record_from_data_info(item, source=self.path, where=f"data_list[{i}]",
                                         dataroot=self.dataroot, labels=labels)
                   for i, item in enumerate(items)]
        self._keep(records)
