"""Sensor ablations: the same frame with one modality blanked, to show what each branch adds.

Blanking the LiDAR removes every point, so the camera branch also loses its sparse depth
input (DepthLSS feeds the projected points to its depth net); blanking the cameras replaces
every image with black pixels. Calibration, token and ground truth are kept, so the blanked
frames evaluate against the same annotations.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from bevdeploy.data.frame import Frame
from bevdeploy.errors import ConfigError

Sensor = Literal["camera", "lidar"]


def blank_sensor(frame: Frame, sensor: Sensor) -> Frame:
    """A copy of ``frame`` with the camera images zeroed or the point cloud emptied."""
    if sensor == "camera":
        return replace(frame, images=np.zeros_like(frame.images))
    if sensor == "lidar":
        return replace(frame, points=frame.points[:0].copy())
    raise ConfigError(f"must be 'camera' or 'lidar', got {sensor!r}", field="sensor")
