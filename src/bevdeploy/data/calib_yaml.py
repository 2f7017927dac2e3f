"""The calibration file of ``bevdeploy infer --calib FILE``: a rig described in YAML.

Format (every matrix a list of rows; metres and pixels of the raw image)::

    # bevdeploy calibration
    cameras:
      CAM_FRONT:
        intrinsics: [[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]]  # 3×3 K
        camera2lidar: [[...], [...], [...], [0, 0, 0, 1]]  # 4×4 T_lidar←cam: p_lidar = R·p_cam + t
      CAM_FRONT_RIGHT: {...}
    lidar2ego: [[...4×4...]]   # optional, identity when absent (needed only for global outputs)
    ego2global: [[...4×4...]]  # optional, identity when absent

``camera2lidar`` is the transform the network uses (docs/reference.md#calibration-matrices). For a
moving rig whose cameras and LiDAR fire at different times it should include the ego motion between
the two captures, as nuScenes' ``sensor2lidar`` does; for a static calibration it is the mounting
extrinsic. Cameras are read in the order the preset names them; cameras in the file that the preset
does not use are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bevdeploy.data.frame import Calibration
from bevdeploy.io import atomic_write
from bevdeploy.errors import InputError, excerpt
from bevdeploy.safe_yaml import load_yaml_file

_TOP_LEVEL = {"cameras", "lidar2ego", "ego2global"}
_CAMERA_KEYS = {"intrinsics", "camera2lidar"}
_HEADER = ("# bevdeploy calibration: per camera the 3x3 intrinsics (raw-image pixels) and the\n"
           "# 4x4 camera2lidar (p_lidar = R p_cam + t); lidar2ego / ego2global for global outputs.\n")


def _matrix(value: Any, shape: tuple[int, int], path: Path, field: str) -> np.ndarray:
    """A ``shape`` list of rows of numbers. The nesting is checked before numpy sees it, so a
    YAML alias bomb (a few lines expanding to billions of elements) is refused, not expanded."""
    rows, cols = shape
    if not (isinstance(value, list) and len(value) == rows
            and all(isinstance(r, list) and len(r) == cols for r in value)):
        got = f"{len(value)} rows" if isinstance(value, list) else type(value).__name__
        raise InputError(f"expected a {rows}x{cols} matrix (a list of {rows} rows of {cols}), "
                         f"got {got}", path=path, field=field)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for r in value for x in r):
        raise InputError(f"expected a {rows}x{cols} matrix of numbers, got {excerpt(value)}",
                         path=path, field=field)
    try:
        m = np.asarray(value, dtype=np.float64)
    except OverflowError:  # a YAML integer beyond float64
        m = np.full(shape, np.inf)
    if not np.isfinite(m).all():
        raise InputError("contains NaN or Inf", path=path, field=field)
    return m


def read_calibration(path: str | Path, camera_names: tuple[str, ...] | list[str]) -> Calibration:
    """Read and validate a calibration YAML for the given cameras (in that order).

    A missing camera, a wrong shape, a non-finite value, singular intrinsics or a non-rigid
    transform raises ``InputError`` naming the file and the field (``cameras.CAM_X`` for a
    missing camera, ``CAM_X.intrinsics`` / ``CAM_X.camera2lidar`` / ``lidar2ego`` for a matrix,
    the names ``Calibration.validate`` uses).
    """
    p = Path(path)
    if not camera_names:
        raise ValueError("camera_names must name at least one camera")
    doc = load_yaml_file(p, InputError, field="file")
    if not isinstance(doc, dict):
        raise InputError("expected a mapping with a 'cameras' section", path=p, field="<root>")
    unknown = sorted(set(doc) - _TOP_LEVEL)
    if unknown:
        raise InputError(f"unknown key(s) {excerpt(unknown)}; known: {sorted(_TOP_LEVEL)}",
                         path=p, field="<root>")
    cameras = doc.get("cameras")
    if not isinstance(cameras, dict):
        raise InputError("expected a mapping of camera name → {intrinsics, camera2lidar}",
                         path=p, field="cameras")
    intrinsics, camera2lidar = [], []
    for name in camera_names:
        cam = cameras.get(name)
        if not isinstance(cam, dict):
            have = excerpt(sorted(map(str, cameras)))
            raise InputError(f"camera {name} is missing (the file has {have})",
                             path=p, field=f"cameras.{name}")
        missing = sorted(_CAMERA_KEYS - set(cam))
        if missing:
            raise InputError(f"missing {missing}", path=p, field=f"cameras.{name}")
        k = _matrix(cam["intrinsics"], (3, 3), p, f"{name}.intrinsics")
        if not np.allclose(k[2], (0.0, 0.0, 1.0)):
            raise InputError(f"the last row of a pinhole K must be (0, 0, 1), got {k[2].tolist()}",
                             path=p, field=f"{name}.intrinsics")
        intrinsics.append(k)
        camera2lidar.append(_matrix(cam["camera2lidar"], (4, 4), p, f"{name}.camera2lidar"))
    poses = {key: _matrix(doc[key], (4, 4), p, key) if key in doc else np.eye(4)
             for key in ("lidar2ego", "ego2global")}
    calib = Calibration(camera_names=tuple(camera_names), intrinsics=np.stack(intrinsics),
                        camera2lidar=np.stack(camera2lidar), **poses)
    return calib.validate(str(p))


def write_calibration(path: str | Path, calib: Calibration) -> Path:
    """Write ``calib`` in the format above (validated first), atomically."""
    p = Path(path)
    calib.validate(str(p))
    doc = {
        "cameras": {name: {"intrinsics": np.asarray(k, np.float64).tolist(),
                           "camera2lidar": np.asarray(m, np.float64).tolist()}
                    for name, k, m in zip(calib.camera_names, calib.intrinsics,
                                          calib.camera2lidar)},
        "lidar2ego": np.asarray(calib.lidar2ego, np.float64).tolist(),
        "ego2global": np.asarray(calib.ego2global, np.float64).tolist(),
    }
    text = _HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    return atomic_write(p, text.encode())
