"""Camera messages → what a ``Frame`` holds: ``CompressedImage`` (JPEG, PNG) and ``Image``
(rgb8, bgr8, mono8, rgba8, bgra8) → ``(H, W, 3)`` uint8 RGB; ``CameraInfo`` → K.

Distortion policy: **refuse, never guess.** The network's view transform projects with a
pinhole K, so an image with lens distortion would place every camera feature at the wrong BEV
cell, giving plausible wrong boxes. A ``CameraInfo`` whose distortion coefficients are not all
zero is refused with a line saying to record the rectified topic (``image_rect``, whose
CameraInfo has zero D); undistorting here would need the rectified K the user's pipeline would
also have to agree on.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bevdeploy.errors import InputError

RAW_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


def decode_compressed(msg: Any, *, topic: str) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` → RGB. ``format`` is ``jpeg``/``png`` or
    image_transport's ``"<encoding>; jpeg compressed <encoding>"``."""
    where = f"{topic} (sensor_msgs/CompressedImage)"
    fmt = str(msg.format).lower()
    if not any(name in fmt for name in COMPRESSED_FORMATS):
        raise InputError(f"unknown image format {msg.format!r} (known: jpeg, png)",
                         path=where, field="format")
    try:
        with Image.open(io.BytesIO(bytes(msg.data))) as img:
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise InputError(f"not a readable {msg.format} image ({exc})", path=where,
                         field="data") from None


def decode_raw(msg: Any, *, topic: str) -> np.ndarray:
    """A ``sensor_msgs/Image`` → RGB, honouring ``step`` (row padding)."""
    where = f"{topic} (sensor_msgs/Image)"
    enc = str(msg.encoding)
    channels = _CHANNELS.get(enc)
    if channels is None:
        raise InputError(f"unknown encoding {enc!r} (known: {', '.join(RAW_ENCODINGS)})",
                         path=where, field="encoding")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = bytes(msg.data)
    if step < w * channels or len(data) < h * step:
        raise InputError(f"{len(data)} bytes for {h}×{w} {enc} with step {step}", path=where,
                         field="data")
    pixels = np.frombuffer(data, np.uint8, count=h * step).reshape(h, step)[:, :w * channels]
    pixels = pixels.reshape(h, w, channels)
    if enc == "mono8":
        return np.repeat(pixels, 3, axis=2)
    rgb = pixels[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1] if enc.startswith("bgr") else rgb)


def intrinsics(msg: Any, *, topic: str) -> np.ndarray:
    """K (3×3) of a ``sensor_msgs/CameraInfo``; distorted cameras are refused (module doc)."""
    where = f"{topic} (sensor_msgs/CameraInfo)"
    d = np.asarray(msg.d, np.float64)
    if d.size and np.any(d != 0):
        raise InputError(f"distortion model {msg.distortion_model!r} with non-zero "
                         f"coefficients {np.round(d, 4).tolist()}: bevdeploy needs rectified "
                         "images (record the image_rect topic and its CameraInfo, D = 0)",
                         path=where, field="d")
    k = np.asarray(msg.k, np.float64).reshape(3, 3)
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise InputError(f"K is not a pinhole matrix with positive focal lengths: "
                         f"{k.tolist()}", path=where, field="k")
    return k
