"""A synthetic world written as a ROS 2 bag (MCAP), beside the nuScenes-format dataset that
holds its ground truth, so the bag path is tested end to end against the same annotations.

The bag is what a recording of the synthetic car would be: ``PointCloud2`` at 20 Hz (the
dataset's sweeps, every one of them, x/y/z/intensity float32 + ring uint16), ``CompressedImage``
at 12 Hz per camera, each camera phase-locked to its trigger offset (``writer.
camera_trigger_offset_us``: the key-frame images are the dataset's JPEG files byte for byte, the
ones between are rendered from the same simulation), a ``CameraInfo`` with every image,
``/tf_static`` (base_link → sensors, from the dataset's calibration) and ``/tf`` (map →
base_link, the ego pose, at 50 Hz). Header stamps are the dataset's timestamps (µs × 1000) and
log times equal them, so ``eval --bag`` finds each sample's sweep by its stamp.

The dataset (``write_world``'s output) is the ground-truth side file: its samples are keyed by
the LiDAR timestamps the bag carries. Scenes follow each other in one bag, an hour apart.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mcap_ros2.writer import Writer
from PIL import Image

from bevdeploy.data.bags import msgdefs
from bevdeploy.data.bags.msgdefs import header
from bevdeploy.data.bags.pointcloud2 import encode_pointcloud2
from bevdeploy.data.bags.tf import matrix_quaternion
from bevdeploy.data.synthetic.camera import render
from bevdeploy.data.synthetic.preset_rig import marker_cameras
from bevdeploy.data.synthetic.rig import CameraSpec
from bevdeploy.data.synthetic.world import SceneSim, build_world
from bevdeploy.data.synthetic.writer import (JPEG_QUALITY, MARKER, VERSION,
                                             camera_trigger_offset_us)
from bevdeploy.errors import DatasetError, OutputError
from bevdeploy.io import atomic_file

CAMERA_HZ = 12
TF_PERIOD_US = 20_000  # /tf at 50 Hz
GLOBAL_FRAME, BASE_FRAME = "map", "base_link"


def topic_of(channel: str) -> str:
    """The topic prefix of a dataset channel: ``CAM_FRONT`` → ``/cam_front``."""
    return "/" + channel.lower()


def write_bag(dataset: str | Path, out: str | Path, *, scenes: Sequence[str] | None = None,
              overwrite: bool = False) -> Path:
    """Write the synthetic world at ``dataset`` (written by ``write_world``) as the ROS 2 bag
    ``out``, atomically: all its scenes, or those named in ``scenes``. Returns ``out``."""
    root, out = Path(dataset), Path(out)
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        raise DatasetError(f"not a synthetic world (no readable {MARKER})", path=root,
                           field="dataset") from None
    if out.exists() and not overwrite:
        raise OutputError("already exists; pass overwrite to replace it", path=out,
                          field="--bag")
    tables = {name: json.loads((root / VERSION / f"{name}.json").read_text())
              for name in ("sample_data", "calibrated_sensor", "sensor", "ego_pose", "sample",
                           "scene")}
    world = build_world(marker["seed"], marker["scenes"], marker["samples"])
    cameras = marker_cameras(marker, root / MARKER)
    with atomic_file(out) as handle:
        writer = Writer(handle)
        schemas = {name: writer.register_msgdef(name, msgdefs.msgdef(name)) for name in (
            msgdefs.POINTCLOUD2, msgdefs.COMPRESSED_IMAGE, msgdefs.CAMERA_INFO,
            msgdefs.TF_MESSAGE)}
        rows = _scenes(tables)
        unknown = sorted(set(scenes or ()) - set(rows))
        if unknown:
            raise DatasetError(f"no scene(s) {unknown} in the world (it has {sorted(rows)})",
                               path=root, field="scenes")
        first = True
        for sim in world:
            if scenes is not None and sim.name not in scenes:
                continue
            events = _SceneEvents(root, sim, rows[sim.name], tables, cameras).events()
            if first:
                t0 = events[0][0]
                writer.write_message("/tf_static", schemas[msgdefs.TF_MESSAGE],
                                     _static_tf(tables, t0), log_time=t0)
                first = False
            for ns, topic, schema, make in events:
                writer.write_message(topic, schemas[schema], make(), log_time=ns,
                                     publish_time=ns)
        writer.finish()
    return out


def _scenes(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Scene name → its sample_data rows (with their channel), by timestamp."""
    channel = {cs["token"]: next(s["channel"] for s in tables["sensor"]
                                 if s["token"] == cs["sensor_token"])
               for cs in tables["calibrated_sensor"]}
    scene_of_sample = {s["token"]: s["scene_token"] for s in tables["sample"]}
    name = {s["token"]: s["name"] for s in tables["scene"]}
    out: dict[str, list[dict[str, Any]]] = {}
    for sd in tables["sample_data"]:
        rows = out.setdefault(name[scene_of_sample[sd["sample_token"]]], [])
        rows.append({**sd, "channel": channel[sd["calibrated_sensor_token"]]})
    return {k: sorted(v, key=lambda r: r["timestamp"]) for k, v in out.items()}


def _transform(parent: str, child: str, m: np.ndarray, ns: int) -> dict[str, Any]:
    x, y, z, w = matrix_quaternion(m[:3, :3])
    return {"header": header(ns, parent), "child_frame_id": child, "transform": {
        "translation": dict(zip("xyz", map(float, m[:3, 3]))),
        "rotation": {"x": x, "y": y, "z": z, "w": w}}}


def _static_tf(tables: dict[str, list[dict[str, Any]]], ns: int) -> dict[str, Any]:
    """base_link → every sensor, from the calibration table (one rig per world)."""
    from pyquaternion import Quaternion

    seen, transforms = set(), []
    for cs in tables["calibrated_sensor"]:
        channel = next(s["channel"] for s in tables["sensor"] if s["token"] == cs["sensor_token"])
        if channel in seen:
            continue
        seen.add(channel)
        m = np.eye(4)
        m[:3, :3] = Quaternion(cs["rotation"]).rotation_matrix
        m[:3, 3] = cs["translation"]
        transforms.append(_transform(BASE_FRAME, channel.lower(), m, ns))
    return {"transforms": transforms}


class _SceneEvents:
    """Every message of one scene as (ns, topic, schema, build), sorted by time."""

    def __init__(self, root: Path, sim: SceneSim, rows: list[dict[str, Any]],
                 tables: dict[str, list[dict[str, Any]]], cameras: dict[str, CameraSpec]
                 ) -> None:
        self.root, self.sim, self.rows, self.cameras = root, sim, rows, cameras
        self.intrinsics = {cs["token"]: cs["camera_intrinsic"]
                           for cs in tables["calibrated_sensor"]}
        keys = sorted({r["timestamp"] for r in rows if r["channel"] == "LIDAR_TOP"
                       and r["is_key_frame"]})
        self.base_us = keys[0]  # t = 0 of the simulation: the first key frame

    def events(self) -> list[tuple[int, str, str, Callable[[], Any]]]:
        lidar = [r for r in self.rows if r["channel"] == "LIDAR_TOP"]
        out: list[tuple[int, str, str, Callable[[], Any]]] = []
        for r in lidar:
            out.append((r["timestamp"] * 1000, "/lidar_top/points", msgdefs.POINTCLOUD2,
                        lambda r=r: self._cloud(r)))
        start, end = lidar[0]["timestamp"], lidar[-1]["timestamp"]
        for us in range(start - TF_PERIOD_US, end + 2 * TF_PERIOD_US, TF_PERIOD_US):
            out.append((us * 1000, "/tf", msgdefs.TF_MESSAGE, lambda us=us: self._ego(us)))
        cameras = sorted({r["channel"] for r in self.rows} - {"LIDAR_TOP"})
        for name in cameras:
            out += self._camera(name, start, end)
        return sorted(out, key=lambda e: (e[0], e[1]))

    def _cloud(self, row: dict[str, Any]) -> dict[str, Any]:
        pts = np.fromfile(self.root / row["filename"], dtype="<f4").reshape(-1, 5)
        return encode_pointcloud2({"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2],
                                   "intensity": pts[:, 3], "ring": pts[:, 4].astype(np.uint16)},
                                  stamp_ns=row["timestamp"] * 1000, frame_id="lidar_top")

    def _ego(self, us: int) -> dict[str, Any]:
        pose = self.sim.ego.pose((us - self.base_us) * 1e-6)
        return {"transforms": [_transform(GLOBAL_FRAME, BASE_FRAME, pose, us * 1000)]}

    def _camera(self, name: str, start: int, end: int
                ) -> list[tuple[int, str, str, Callable[[], Any]]]:
        """12 Hz images phase-locked to the key frames' trigger times (module doc)."""
        spec = self.cameras[name]
        offset = camera_trigger_offset_us(spec)
        files = {r["timestamp"]: r for r in self.rows if r["channel"] == name}
        period = 1e6 / CAMERA_HZ
        first = int(np.ceil((start - self.base_us - offset) / period)) - 1  # one before
        last = int(np.floor((end - self.base_us - offset) / period))
        out: list[tuple[int, str, str, Callable[[], Any]]] = []
        for n in range(first, last + 1):
            us = self.base_us + offset + int(round(n * period))
            row = files.get(us)
            k = self.intrinsics[row["calibrated_sensor_token"]] if row else spec.intrinsics
            out.append((us * 1000, f"{topic_of(name)}/image_raw/compressed",
                        msgdefs.COMPRESSED_IMAGE, lambda us=us, row=row: self._image(
                            name, us, row)))
            out.append((us * 1000, f"{topic_of(name)}/camera_info", msgdefs.CAMERA_INFO,
                        lambda us=us, k=k: self._info(name, us, np.asarray(k))))
        return out

    def _image(self, name: str, us: int, row: dict[str, Any] | None) -> dict[str, Any]:
        if row is not None:
            data = (self.root / row["filename"]).read_bytes()
        else:
            spec, t = self.cameras[name], (us - self.base_us) * 1e-6
            view = render(spec, self.sim.ego.pose(t) @ spec.camera2ego,
                          self.sim.actors.bodies(t), self.sim.actors.colour, self.sim.sun)
            buffer = io.BytesIO()
            Image.fromarray(view.image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            data = buffer.getvalue()
        return {"header": header(us * 1000, name.lower()), "format": "jpeg", "data": data}

    def _info(self, name: str, us: int, k: np.ndarray) -> dict[str, Any]:
        spec = self.cameras[name]
        p = np.zeros((3, 4))
        p[:, :3] = k
        return {"header": header(us * 1000, name.lower()), "height": spec.height,
                "width": spec.width, "distortion_model": "plumb_bob", "d": [0.0] * 5,
                "k": [float(v) for v in k.reshape(-1)],
                "r": [float(v) for v in np.eye(3).reshape(-1)],
                "p": [float(v) for v in p.reshape(-1)], "binning_x": 0, "binning_y": 0,
                "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0,
                        "do_rectify": False}}
