"""Camera messages → what a ``Frame`` holds: ``CompressedImage`` (JPEG, PNG) and ``Image``
(rgb8, bgr8, mono8, rgba8, bgra8) → ``(H, W, 3)`` uint8 RGB; ``CameraInfo`` → K.

Speed: decoding six 1600×900 JPEGs is most of a bag frame's reading time. JPEGs are decoded by
``simplejpeg`` (libjpeg-turbo, the library Pillow wraps, with the same default settings: accurate
integer DCT, fancy upsampling) straight into the frame's own array (``decode_into``), which is
about four times faster than PIL plus the copy out of PIL's 4-byte pixels, and gives the same
pixels as the dataset path's PIL (tests/data/test_bag_messages.py compares them). A JPEG that
libjpeg only decodes with a warning (truncated data, stray bytes) or that is not YCbCr, grey or
RGB (CMYK, YCCK) goes to PIL instead, so such a file is decoded — or refused — exactly as the
dataset path would. Every image's size is read from its header and checked before any pixel is
decoded.

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
import simplejpeg
from PIL import Image, UnidentifiedImageError

from bevdeploy.errors import InputError

RAW_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8", "bgra8")
_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
_JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG colour spaces libjpeg converts to RGB itself; CMYK/YCCK (simplejpeg converts those in
# its own code, 1 off PIL's conversion in most pixels) take PIL's path
_TURBO_COLORSPACES = ("YCbCr", "Gray", "RGB")


def decode_into(msg: Any, *, compressed: bool, out: np.ndarray, topic: str, field: str) -> None:
    """Decode a ``CompressedImage`` or ``Image`` into ``out`` (``(H, W, 3)`` uint8, one camera's
    slot of the frame's array). An image of another size is refused from its header, before
    decoding, naming ``field`` (the camera)."""
    if compressed:
        _decode_compressed(msg, topic, out, field)
    else:
        _check_size(int(msg.height), int(msg.width), out, f"{topic} (sensor_msgs/Image)", field)
        out[...] = decode_raw(msg, topic=topic)


def decode_compressed(msg: Any, *, topic: str) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` → RGB. ``format`` is ``jpeg``/``png`` or
    image_transport's ``"<encoding>; jpeg compressed <encoding>"``."""
    return _decode_compressed(msg, topic, None, "data")


def _check_size(h: int, w: int, out: np.ndarray | None, where: str, field: str) -> None:
    if out is not None and (h, w) != out.shape[:2]:
        raise InputError(f"image is {h}×{w} (H×W) but the preset expects {out.shape[0]}×"
                         f"{out.shape[1]}", path=where, field=field)


def _decode_compressed(msg: Any, topic: str, out: np.ndarray | None, field: str) -> np.ndarray:
    where = f"{topic} (sensor_msgs/CompressedImage)"
    fmt = str(msg.format).lower()
    if not any(name in fmt for name in COMPRESSED_FORMATS):
        raise InputError(f"unknown image format {msg.format!r} (known: jpeg, png)",
                         path=where, field="format")
    data = msg.data if isinstance(msg.data, bytes) else bytes(msg.data)
    if data.startswith(_JPEG_MAGIC):
        rgb = _turbo(data, out, where, field)
        if rgb is not None:
            return rgb
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size(img.height, img.width, out, where, field)
            rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise InputError(f"not a readable {msg.format} image ({exc})", path=where,
                         field="data") from None
    if out is None:
        return rgb
    out[...] = rgb
    return out


def _turbo(data: bytes, out: np.ndarray | None, where: str, field: str) -> np.ndarray | None:
    """The JPEG decoded by libjpeg-turbo into ``out``, or None where PIL must decide (module
    doc). ``strict`` turns libjpeg's warnings into errors, so nothing half-decoded returns."""
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    _check_size(h, w, out, where, field)
    if colorspace not in _TURBO_COLORSPACES:
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, strict=True)
    except ValueError:
        return None


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
