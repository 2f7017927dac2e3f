"""One point file as the key sweep of a frame (``infer --pcd``): what each column means in each
format, and the intensity policy.

The network's points are ``x, y, z, intensity, time lag`` (docs/reference.md#lidar-points):
metres in the key sweep's LiDAR frame, the nuScenes intensity scale 0–255, and seconds before
the key sweep (0 for the key sweep itself). Per format:

==============  ========================================================================  =======
suffix          columns in the file                                                       lag
==============  ========================================================================  =======
``.pcd.bin``    nuScenes ``LIDAR_TOP``: x, y, z, intensity (0–255), **ring index** (0–31)  0
``.bin``        KITTI: x, y, z, reflectance (**0–1**)                                     0
``.pcd``        fields x, y, z, intensity and, when present, ``time_lag`` or ``time`` (s)  the field
``.npy``        (P, 4) x, y, z, intensity, or (P, 5) with the lag in seconds              column 5
==============  ========================================================================  =======

A ``.pcd.bin`` is one sweep, so its fifth column (the ring index, not a time) becomes 0, as the
dataset path does for the key sweep (``readers.read_multisweep``). Intensities are multiplied by
``intensity_scale`` when given (255 maps KITTI's 0–1 onto the nuScenes scale); without it, a file
whose intensities all lie in [0, 1] gets a warning, because the presets were trained on 0–255
and the model then sees an almost dark cloud.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bevdeploy.data.readers import NonFinitePolicy, read_points
from bevdeploy.errors import InputError

# The intensity scale of every preset (nuScenes LIDAR_TOP and the synthetic world's LiDAR).
PRESET_INTENSITY_MAX = 255.0
INTENSITY_COLUMN = 3
TIME_LAG_COLUMN = 4


def is_single_sweep_nuscenes(path: Path) -> bool:
    """A nuScenes sweep file, whose fifth column is the ring index."""
    return path.name.lower().endswith(".pcd.bin")


def read_key_sweep(path: str | Path, num_features: int, *, intensity_scale: float | None = None,
                   nonfinite: NonFinitePolicy = "drop") -> tuple[np.ndarray, list[str]]:
    """``(P, num_features)`` float32 points of one point file read as the key sweep, and the
    notes a user should see (the intensity warning). See the module docstring for the columns
    of each format."""
    p = Path(path)
    if intensity_scale is not None and not (np.isfinite(intensity_scale) and intensity_scale > 0):
        raise InputError(f"must be a positive number, got {intensity_scale}", path=p,
                         field="--intensity-scale")
    points = read_points(p, num_features, nonfinite=nonfinite)
    if num_features > TIME_LAG_COLUMN and is_single_sweep_nuscenes(p):
        points[:, TIME_LAG_COLUMN] = 0.0  # the ring index, not a time: one sweep has no lag
    notes: list[str] = []
    if intensity_scale is not None:
        points[:, INTENSITY_COLUMN] *= np.float32(intensity_scale)
    elif len(points) and float(np.abs(points[:, INTENSITY_COLUMN]).max()) <= 1.0:
        notes.append(f"{p}: every intensity lies in [0, 1] (KITTI-style reflectance) but the "
                     f"preset expects 0-{PRESET_INTENSITY_MAX:g}; pass --intensity-scale "
                     f"{PRESET_INTENSITY_MAX:g} if the sensor reports 0-1")
    return points, notes
