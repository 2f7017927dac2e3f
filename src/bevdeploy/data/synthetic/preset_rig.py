"""The synthetic cameras of any rig: a preset's cameras, placed by a rig file or by default.

``synth --preset P [--rig RIG.yaml]`` writes a world seen by P's cameras (their number, names in
P's order and raw size). With a rig file the cameras get its intrinsics and its extrinsics
(``camera2lidar`` relative to the synthetic roof LiDAR, so the camera ↔ LiDAR geometry the
model sees is the rig's); without one, ``rig.preset_cameras`` decides (nuScenes' own cameras,
or a ring around the roof). The chosen cameras are stored in the world's marker file
(``cameras_to_json``), so that the bag writer renders the same rig from the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bevdeploy.data.frame import Calibration
from bevdeploy.data.synthetic.rig import (CAMERAS, LIDAR, CameraSpec, preset_cameras,
                                          ring_fov_deg)
from bevdeploy.errors import DatasetError
from bevdeploy.presets import Preset

_SPEC_FIELDS = ("name", "focal", "principal", "translation", "yaw_deg", "width", "height",
                "focal_y", "mount")


@dataclass(frozen=True)
class SynthRig:
    """The cameras a world is rendered with, and one line saying where they came from."""

    cameras: tuple[CameraSpec, ...]
    description: str

    @property
    def is_default(self) -> bool:
        """nuScenes' six cameras in nuScenes order: the world ``write_world`` writes by default."""
        return self.cameras == CAMERAS


def rig_file_cameras(calib: Calibration, raw_size: tuple[int, int]) -> tuple[CameraSpec, ...]:
    """Cameras with a rig file's intrinsics and ``camera2lidar`` extrinsics, mounted relative to
    the synthetic LiDAR (``camera2ego = lidar2ego_synthetic · camera2lidar``), with ``raw_size``
    (H, W) images. Their yaw (the optical axis' heading) times the camera's trigger."""
    height, width = raw_size
    specs = []
    for name, k, c2l in zip(calib.camera_names, calib.intrinsics, calib.camera2lidar):
        camera2ego = LIDAR.lidar2ego @ np.asarray(c2l, dtype=np.float64)
        rotation = camera2ego[:3, :3]
        axis = rotation[:, 2]  # the optical axis in the ego frame
        specs.append(CameraSpec(
            name=name, focal=float(k[0, 0]), principal=(float(k[0, 2]), float(k[1, 2])),
            translation=tuple(float(v) for v in camera2ego[:3, 3]),
            yaw_deg=float(np.rad2deg(np.arctan2(axis[1], axis[0]))), width=int(width),
            height=int(height), focal_y=float(k[1, 1]),
            mount=tuple(tuple(float(v) for v in row) for row in rotation)))
    return tuple(specs)


def synth_rig(preset: Preset | None = None, rig: str | Path | None = None) -> SynthRig:
    """The cameras ``synth`` renders: nuScenes' rig when no preset is given; else the preset's
    cameras with the rig file's calibration (``rig``), or, without one, nuScenes' geometry for
    nuScenes' cameras and a ring of outward-facing cameras for any other set."""
    if preset is None:
        return SynthRig(CAMERAS, "nuScenes' six cameras (1600×900)")
    names, raw_size = preset.cameras.names, tuple(preset.cameras.raw_size)
    size = f"{raw_size[1]}×{raw_size[0]}"
    if rig is not None:
        from bevdeploy.data.calib_yaml import read_calibration

        cameras = rig_file_cameras(read_calibration(rig, names), raw_size)
        return SynthRig(cameras, f"{len(names)} cameras of preset {preset.name} ({size}) with "
                                 f"the intrinsics and extrinsics of {rig}")
    cameras = preset_cameras(names, raw_size)
    if all(c.level and c in CAMERAS for c in cameras):
        return SynthRig(cameras, f"{len(names)} cameras of preset {preset.name} with "
                                 "nuScenes' geometry (1600×900)")
    return SynthRig(cameras, f"{len(names)} cameras of preset {preset.name} ({size}) evenly "
                             f"around the roof facing outwards, the first forward, each with a "
                             f"default horizontal field of view of {ring_fov_deg(len(names)):.0f}°")


def cameras_to_json(cameras: Sequence[CameraSpec]) -> list[dict[str, Any]]:
    """The cameras as JSON-ready dicts (floats written exactly, by ``repr``)."""
    out = []
    for cam in cameras:
        record = {f: getattr(cam, f) for f in _SPEC_FIELDS}
        record["principal"], record["translation"] = (list(cam.principal),
                                                      list(cam.translation))
        record["mount"] = None if cam.mount is None else [list(r) for r in cam.mount]
        out.append(record)
    return out


def cameras_from_json(records: Any, source: str | Path) -> tuple[CameraSpec, ...]:
    """``cameras_to_json``'s output back into cameras; a damaged record is a ``DatasetError``
    naming the marker file."""
    try:
        specs = []
        for r in records:
            if not isinstance(r, Mapping):
                raise TypeError(f"expected a mapping, got {type(r).__name__}")
            mount = r["mount"]
            specs.append(CameraSpec(
                name=str(r["name"]), focal=float(r["focal"]),
                principal=(float(r["principal"][0]), float(r["principal"][1])),
                translation=tuple(float(v) for v in r["translation"]),  # type: ignore[arg-type]
                yaw_deg=float(r["yaw_deg"]), width=int(r["width"]), height=int(r["height"]),
                focal_y=None if r["focal_y"] is None else float(r["focal_y"]),
                mount=None if mount is None else tuple(tuple(float(v) for v in row)
                                                       for row in mount)))  # type: ignore[misc]
        return tuple(specs)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DatasetError(f"damaged camera record: {exc!r}", path=source,
                           field="cameras") from None


def marker_cameras(marker: Mapping[str, Any], source: str | Path) -> dict[str, CameraSpec]:
    """Camera name → camera of a world, from its marker file's content: the recorded rig, or
    nuScenes' when none is recorded (the default world)."""
    cameras = (CAMERAS if "cameras" not in marker
               else cameras_from_json(marker["cameras"], source))
    return {c.name: c for c in cameras}
