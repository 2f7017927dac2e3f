"""Cameras a frame has no data for: refused (the default) or run as zero features.

A fleet frame with one camera's image lost, or a rig whose calibration lacks a camera, should
not cost the other cameras' and the LiDAR's detections when the user says so
(``--on-missing-camera zero``); and ``eval --drop-camera NAME`` measures what one camera is
worth. Either way the camera stays in the frame, in the preset's order, with a zero image and a
valid placeholder calibration, and is named in ``Frame.dropped`` with the reason: every
detector zeroes its depth weights before BEV pooling, so it adds exact zeros to the sums and the
camera BEV equals that of a package without the camera (docs/architecture.md#data-contracts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from enum import Enum
from typing import Literal

import numpy as np

from bevdeploy.errors import ConfigError, InputError

MissingCameraPolicy = Literal["error", "zero"]


class OnMissingCamera(str, Enum):
    """``--on-missing-camera``: the ``CameraDropout.on_missing`` values (equal to the strings)."""

    error = "error"
    zero = "zero"


MISSING_CAMERA_POLICIES: tuple[str, ...] = tuple(m.value for m in OnMissingCamera)
DROPPED_ON_PURPOSE = "dropped on purpose (--drop-camera)"


@dataclass(frozen=True)
class CameraDropout:
    """What a source does about cameras: ``on_missing`` ``"error"`` (a missing or unreadable
    image, or an absent calibration, fails the frame) or ``"zero"`` (that camera gets zero
    features and the reason in ``Frame.dropped``); ``drop`` names cameras never read at all."""

    on_missing: MissingCameraPolicy = "error"
    drop: tuple[str, ...] = ()

    def checked(self, cameras: Sequence[str]) -> "CameraDropout":
        """Itself, after refusing an unknown policy, a camera not in ``cameras`` and dropping
        every camera (nothing would be left to see with)."""
        if self.on_missing not in MISSING_CAMERA_POLICIES:
            raise ConfigError(f"must be one of {list(MISSING_CAMERA_POLICIES)}, got "
                              f"{self.on_missing!r}", field="--on-missing-camera")
        unknown = [c for c in self.drop if c not in cameras]
        if unknown:
            raise ConfigError(f"camera(s) {unknown} are not among the preset's "
                              f"{list(cameras)}", field="--drop-camera")
        if cameras and set(cameras) <= set(self.drop):
            raise ConfigError("every camera would be dropped", field="--drop-camera")
        return self

    @property
    def tolerant(self) -> bool:
        """Whether an absent camera record is allowed (``zero``)."""
        return self.on_missing == "zero"


def placeholder_calibration(raw_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(K, camera2lidar) for a camera without calibration: a valid pinhole at the LiDAR's
    origin (principal point at the centre, focal length the image width), so the geometry stage
    has a plan; its points carry zero weight, so where they land does not matter."""
    height, width = raw_size
    k = np.array([[width, 0.0, width / 2.0], [0.0, width, height / 2.0], [0.0, 0.0, 1.0]])
    return k, np.eye(4)


def load_camera_images(paths: Mapping[str, Path], cameras: Sequence[str],
                       raw_size: tuple[int, int], dropout: CameraDropout,
                       absent: Mapping[str, str] | None = None
                       ) -> tuple[np.ndarray, dict[str, str]]:
    """(N, H, W, 3) uint8 images of ``cameras`` (in that order) and the dropped ones (name →
    reason). ``paths`` holds the image of each camera that has one; ``absent`` the reason for
    each that has none. Under ``"error"`` any camera without a readable image raises the
    reader's ``InputError``, as ``read_images`` of all of them would."""
    from bevdeploy.data.readers import read_images  # PIL and pypcd4 only when frames load

    absent = dict(absent or {})
    dropped = {c: DROPPED_ON_PURPOSE for c in dropout.drop}
    if not dropout.tolerant and not dropout.drop and all(c in paths for c in cameras):
        return read_images([paths[c] for c in cameras], cameras, raw_size), dropped
    images = np.zeros((len(cameras), *raw_size, 3), dtype=np.uint8)
    for i, name in enumerate(cameras):
        if name in dropped:
            continue
        if name not in paths:
            if not dropout.tolerant:
                raise InputError(absent.get(name, "no image"), field=name)
            dropped[name] = absent.get(name, "no image")
            continue
        try:
            images[i] = read_images([paths[name]], [name], raw_size)[0]
        except InputError as exc:
            if not dropout.tolerant:
                raise
            dropped[name] = f"image not readable: {exc}"
    return images, dropped
