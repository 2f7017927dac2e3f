"""What a frame must be for a package, and how messages name it: shared by the pipeline and
its schedules (the frame pipeline checks and names frames on its worker thread)."""

from __future__ import annotations

from bevdeploy.data.frame import Frame
from bevdeploy.errors import InputError
from bevdeploy.presets import Preset


def check_frame(frame: Frame, preset: Preset) -> None:
    """Refuse a frame that does not fit the package's rig: camera names, count and order, raw
    image size, point features; then the frame's own consistency (``Frame.validate``)."""
    source = frame_label(frame)
    names = tuple(frame.calib.camera_names)
    if names != preset.cameras.names:
        raise InputError(f"the frame has cameras {list(names)} but the package expects "
                         f"{preset.cameras.num_cameras} in the order "
                         f"{list(preset.cameras.names)}", path=source, field="calib.camera_names")
    frame.validate(num_features=preset.points.num_features)
    raw = tuple(frame.images.shape[1:3])
    if raw != tuple(preset.cameras.raw_size):
        raise InputError(f"images are {raw[0]}×{raw[1]} (H×W) but the package expects "
                         f"{preset.cameras.raw_size[0]}×{preset.cameras.raw_size[1]}: its resize "
                         f"and crop assume that raw size", path=source, field="images")


def frame_label(frame: Frame) -> str:
    """How messages name a frame: its source file, else its sample token."""
    return frame.source or frame.token or "<frame>"


def name_failure(error: BaseException, index: int, label: str) -> BaseException:
    """Add which frame of a stream failed to ``error``'s notes (its class, and so the CLI's
    exit code, stay as they were)."""
    if isinstance(error, Exception):
        error.add_note(f"while processing frame {index} of the stream ({label})")
    return error
